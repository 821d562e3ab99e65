"""Reading a command mail as Mailman reads it: what the person wrote, and its commands.

People write to the bot as they write to anyone: a greeting first, a
command, "Thanks", a signature, and often the whole mail they answer below
(top-posted, as Gmail and Outlook do) or above (bottom-posted, as mutt and
Thunderbird users do). The text is the plain-text part, or the HTML part
made text when there is no plain one (webmail); then:

- leading lines that are not commands (a greeting, a sentence, quoted
  text, an attribution such as "On ... wrote:") are skipped, up to
  MAX_LEADING of them;
- commands are read one per line until the first line that is not one;
- a signature (`-- `), quoted text after a command, and the unquoted copy of
  the original that Outlook appends (`-----Original Message-----`, a rule of
  underscores, a `From:`/`Sent:` block) end the reading: nothing quoted is
  ever run.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import re
from collections.abc import Callable
from html.parser import HTMLParser

from bot.parse import mime

MAX_LEADING = 8
"""Non-command lines read past before the first command (Mailman: a few)."""
MAX_LINES = 200
"""Lines of a command mail's text that are read at all."""

_QUOTE = re.compile(r"^\s*>")
_SIGNATURE = re.compile(r"^(--|__)\s*$")
# The copy of the original that Outlook and forwards put below, unquoted.
_ORIGINAL = re.compile(
    r"^\s*(-{2,}\s*(original message|forwarded message|message d'origine|"
    r"ursprüngliche nachricht|mensaje original)\s*-{2,}|_{8,}|begin forwarded message:)\s*$",
    re.IGNORECASE,
)
_HEADER_LINE = re.compile(r"^\s*\**(from|von|de|da)\s*:\**\s", re.IGNORECASE)
_SENT_LINE = re.compile(r"^\s*\**(sent|date|gesendet|envoyé|enviado|to)\s*:", re.IGNORECASE)
# "On Mon, 1 Jan 2024 at 10:00, Bot <bot@x> wrote:", in a few languages,
# possibly wrapped (only its last line then ends with "wrote:").
_ATTRIBUTION = re.compile(
    r"(wrote|writes|écrit|schrieb|escribió|scritto|schreef|escreveu|skrev|napisał|kirjoitti)"
    r"\s*:\s*$|^\s*\*\s.*\]:\s*$",
    re.IGNORECASE,
)
_TRAILING = re.compile(r"[.!?]+$")
_POLITE = re.compile(
    r"^(please|pls|hi|hello)\b[,:]?\s+|[,;]?\s*\b(please|pls|thanks|thank you|thx|cheers)$",
    re.IGNORECASE,
)
_REPLY_PREFIX = re.compile(
    r"^\s*(((re|aw|sv|vs|antw|odp|ynt|rif|ref|res|fwd?|wg|tr)\s*(\[\d+\])?\s*:|\[[^\]]{0,40}\])\s*)+",
    re.IGNORECASE,
)
"""Reply and forward prefixes in several languages, and a gateway's `[EXTERNAL]` tags."""


def command_text(raw: bytes, headers: mime.Headers, body: bytes) -> str:
    """The text a person wrote: the plain-text part, else the HTML part as text."""
    ctype = (mime.first(headers, "content-type") or "text/plain").lower().lstrip()
    if ctype.startswith("text/html"):
        msg = email.message_from_bytes(raw, policy=email.policy.compat32)
        return html_text(_decoded(msg))
    if ctype.startswith("multipart/"):
        try:
            msg = email.message_from_bytes(raw, policy=email.policy.compat32)
            plain = html = None
            for part in msg.walk():
                kind = part.get_content_type()
                if kind == "text/plain" and plain is None and not _attachment(part):
                    plain = _decoded(part)
                elif kind == "text/html" and html is None and not _attachment(part):
                    html = _decoded(part)
            if plain is not None:
                return plain
            if html is not None:
                return html_text(html)
        except RecursionError:
            pass  # absurdly deep MIME: read it as the index does
    texts = mime.body_texts(raw, headers, body)
    return texts[0] if texts else ""


def _attachment(part: email.message.Message) -> bool:
    return (part.get("content-disposition") or "").strip().lower().startswith("attachment")


def _decoded(part: email.message.Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        payload = str(part.get_payload()).encode("utf-8", "surrogateescape")
    text = mime.decode_text(payload, part.get_content_charset())
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")


class _Text(HTMLParser):
    """HTML to the lines a reader sees: blocks and <br> end lines, quotes get `> `."""

    BLOCKS = frozenset(
        {"p", "div", "br", "li", "tr", "pre", "table", "ul", "ol", "dl", "dt", "dd", "hr"}
        | {"h1", "h2", "h3", "h4", "h5", "h6", "section", "article"}
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = [""]
        self.depth = 0  # of <blockquote>
        self.skip = 0  # inside <style>, <script>, <head>

    def _break(self) -> None:
        if self.lines[-1].strip(" >"):
            self.lines.append("")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("style", "script", "head", "title"):
            self.skip += 1
        elif tag == "blockquote":
            self._break()
            self.depth += 1
        elif tag in self.BLOCKS:
            if tag == "br" and not self.lines[-1].strip(" >"):
                self.lines.append("")
            self._break()

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "script", "head", "title"):
            self.skip = max(0, self.skip - 1)
        elif tag == "blockquote":
            self._break()
            self.depth = max(0, self.depth - 1)
        elif tag in self.BLOCKS:
            self._break()

    def handle_data(self, data: str) -> None:
        if self.skip:
            return
        text = " ".join(data.split())
        if not text:
            return
        if not self.lines[-1]:
            self.lines[-1] = "> " * self.depth
        elif not self.lines[-1].endswith(" "):
            text = " " + text
        self.lines[-1] += text


def html_text(html: str) -> str:
    """The text of an HTML mail part, one line per block, <blockquote> as `> `."""
    parser = _Text()
    parser.feed(html[:1_000_000])
    parser.close()
    return "\n".join(line.rstrip() for line in parser.lines)


def is_quote(line: str) -> bool:
    """A quoted line (`> ...`) or an attribution (`On ... wrote:`)."""
    return bool(_QUOTE.match(line) or _ATTRIBUTION.search(line))


def original_starts(lines: list[str], i: int) -> bool:
    """True when line `i` starts an unquoted copy of the original (Outlook, forwards)."""
    if _ORIGINAL.match(lines[i]):
        return True
    if _HEADER_LINE.match(lines[i]):
        following = [line for line in lines[i + 1 : i + 4] if line.strip()]
        return bool(following) and bool(_SENT_LINE.match(following[0]))
    return False


def bare_subject(subject: str) -> str:
    """The subject without `Re:`/`AW:`/`Fwd:` prefixes and leading `[tags]`."""
    return _REPLY_PREFIX.sub("", subject).strip()


Plausible = Callable[[str, list[str]], bool]
"""Whether a command name and these words read as a command, not a sentence."""


def command_words(line: str, known: set[str], plausible: Plausible | None = None) -> str | None:
    """The command a line gives (`subscribe weekly`), or None when it gives none.

    A polite word around it (`Please subscribe weekly, thanks!`) is no
    argument; a line whose words `plausible` rejects (`Status of this
    series?`, `Digest looks great, but...`) is a sentence, not a command.
    """
    text = _TRAILING.sub("", " ".join(line.split()))
    for _ in range(3):
        text = _TRAILING.sub("", _POLITE.sub("", text)).strip()
    words = text.split()
    if len(words) > 1 and words[1].lower() == "me":  # "unsubscribe me", "subscribe me weekly"
        del words[1]
    if not words or words[0].lower() not in known:
        return None
    if plausible is not None and not plausible(words[0].lower(), words[1:]):
        return None
    return " ".join(words)


def find_commands(
    subject: str, lines: list[str], known: set[str], plausible: Plausible | None = None
) -> tuple[list[str], str | None, bool]:
    """(commands, the first line that was not one, whether the body had any).

    The subject counts when it is a command with arguments, or a bare
    command name (`Subject: topic`) and the body has none.
    """
    found: list[str] = []
    stray = None
    leading = 0
    lines = lines[:MAX_LINES]
    for i, line in enumerate(lines):
        if _SIGNATURE.match(line.rstrip("\n")) or original_starts(lines, i):
            break
        if not line.strip():
            continue
        if is_quote(line):
            if found:
                break
            continue  # bottom-posting: the answer comes below the quote
        command = command_words(line, known, plausible)
        if command is None:
            if found:
                break
            stray = stray or line.strip()
            leading += 1
            if leading > MAX_LEADING:
                break
            continue
        if command.lower() not in (f.lower() for f in found):
            found.append(command)
    in_body = bool(found)
    head = command_words(bare_subject(subject), known, plausible)
    counts = head is not None and (len(head.split()) > 1 or not in_body)
    # "Re: confirm X" and "confirm X" in the body are one command.
    if counts and head and head.lower() not in (f.lower() for f in found):
        found.insert(0, head)
    return found, (None if found else stray or subject or None), in_body
