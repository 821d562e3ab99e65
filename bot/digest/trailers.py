"""What a reply's own words say: review trailers, "applied", b4 change-ids.

These are read once, when a message is indexed (`notes()`), from the text
its author wrote: lines quoted with `>` are someone else's words, and an
Outlook-style `-----Original Message-----` starts a quote that runs to the
end. The index keeps the facts per message; which series they count for is
decided when a digest is built, so mail arriving in any order gives the same
result (see bot/digest/versions.py and build.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from bot.parse import mime

TRAILER_KINDS = ("Reviewed-by", "Acked-by", "Tested-by")
_TRAILER = re.compile(r"^(reviewed|acked|tested)-by:[ \t]*(\S.*)$", re.IGNORECASE)
_CHANGE_ID = re.compile(r"^[ \t]*change-id:[ \t]*(\S+)[ \t]*$", re.IGNORECASE | re.MULTILINE)
# Most mail says none of this: plain substring scans of the lower-cased
# text (much faster than a case-insensitive regex) decide whether its lines
# need reading at all.
_REPLY_WORDS = ("reviewed-by:", "acked-by:", "tested-by:", "applied", "queued", "pushed")
_OUTLOOK_QUOTE = re.compile(r"^-{3,}\s*original message\s*-{3,}\s*$", re.IGNORECASE)
_ATTRIBUTION = re.compile(r"\bwrote:\s*$")

# "Applied to kvm-arm64/next, thanks!", "Queued, thanks.", "Pushed to kvm/queue",
# "Thanks, applied.", "I've queued patches 1-3 for 5.12", "Patch 2 applied".
# The verb opens the sentence (after an optional "thanks" and a subject such
# as "I've" or "patches 1-3"); an object may follow ("this", "the series"),
# then a destination or the end: "to kvm/next", "for 5.12", ", thanks".
# "I applied your fix and it boots" or "I pushed out a branch" say something
# else, and so does any question.
_NUMBERS = r"#?\d+(?:\s*(?:-|to|and|,)\s*#?\d+)*"
_WHAT = (
    r"(?:(?:the\s+)?(?:whole\s+|first\s+|full\s+|entire\s+)?"
    r"(?:series|set|fix|patch(?:es|set)?|backports?|both(?:\s+patches)?|all(?:\s+patches)?|"
    r"these|them|it|this(?:\s+(?:one|series|patch|set|version))?)"
    r"(?:\s+(?:" + _NUMBERS + r"|only))?(?:\s+of\s+(?:this|the)\s+series)?"
    r"|" + _NUMBERS + r")"
)
_APPLIED = re.compile(
    r"^(?:(?:thanks|thank\s+you|ok|okay|done|anyway|fwiw|so)[,.!:]*\s+)?"
    r"(?:(?:i(?:'ve|\s+have)?|we(?:'ve|\s+have)?)\s+)?"
    r"(?:(?:now|also|just|finally|provisionally)\s+)?"
    r"(?:" + _WHAT + r"\s+(?:(?:has|have)\s+)?(?:(?:been|now|also)\s+)*)?"
    r"(?:applied|queued|pushed)(?:\s+(?:out|up))?"
    r"(?:\s+" + _WHAT + r")?(?:\s+(?:manually|already|again))?"
    r"(?P<rest>\s*(?:$|[,.!;:(]|(?:to|into|for|in|with|and|as|now|already|thanks|up|"
    r"apart|minus|except|but|here|on\s+top)\b).*)$",
    re.IGNORECASE,
)
# Words after the verb that show someone applying patches to try them
# ("applied it locally", "cleanly", "on v5.10-rc2", "and I see a crash").
_NOT_TAKEN = re.compile(
    r"\blocally\b|\bcleanly\b|\bon\s+(?:v?\d|-?rc\d|linux|mainline|my)\b|"
    r"\band\s+(?:i\b|it\b|tested|test|ran|run|boot|the\s+(?:guest|host|test|warning|issue|"
    r"problem|bug))",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class Notes:
    """The facts one message contributes (empty for most messages)."""

    trailers: list[tuple[str, str, str]] = field(default_factory=list)
    """(kind, name, key) per trailer line; the key is the lower-cased address."""
    applied: bool = False
    change_id: str = ""


def own_lines(text: str) -> list[str]:
    """The lines of a message its author wrote, without quotes or signature."""
    out = []
    for line in text.splitlines():
        if line == "-- " or _OUTLOOK_QUOTE.match(line.strip()):
            break
        if line.lstrip().startswith(">"):
            continue
        out.append(line)
    return out


def trailers(lines: list[str]) -> list[tuple[str, str, str]]:
    """`Reviewed-by:`/`Acked-by:`/`Tested-by:` lines, each (kind, name, key).

    Only at the very start of a line: an indented one is part of something
    pasted (a commit log), not the author's own tag.
    """
    out = []
    for line in lines:
        m = _TRAILER.match(line.rstrip())
        if not m:
            continue
        kind = m.group(1).capitalize() + "-by"
        name, addr = mime.parse_address(m.group(2).strip())
        key = addr.lower() if addr else " ".join(m.group(2).split()).casefold()
        if not key:
            continue
        out.append((kind, name or addr or m.group(2).strip(), key))
    return out


def _sentences(lines: list[str]) -> list[str]:
    """Own text as sentences: paragraphs joined, split after . ! ?"""
    out: list[str] = []
    para: list[str] = []
    for line in [*lines, ""]:
        if line.strip() and not _ATTRIBUTION.search(line):
            para.append(line.strip())
            continue
        if para:
            out.extend(s for s in _SENTENCE_END.split(" ".join(para)) if s)
        para = []
    return out


def says_applied(lines: list[str]) -> bool:
    """True when the author's own text says the patches were taken.

    A sentence opening with applied/queued/pushed counts; a question ("Was
    this applied?", "Has this been queued yet") does not, nor a report of
    applying them to test ("Applied on top of rc3, it crashes").
    """
    for sentence in _sentences(lines):
        s = sentence.strip()
        if s.endswith("?"):
            continue
        m = _APPLIED.match(s)
        if not m:
            continue
        if _NOT_TAKEN.search(m.group("rest")):
            continue
        return True
    return False


def change_id(text: str) -> str:
    """b4's `change-id:` (it names one piece of work across its versions)."""
    if "change-id:" not in text.lower():
        return ""
    m = _CHANGE_ID.search(text)
    return m.group(1) if m else ""


def notes(kind: str, texts: list[str]) -> Notes:
    """The facts of one message, from its decoded text parts.

    Replies give trailers and "applied"; patches and cover letters give the
    b4 change-id (after the `---`, so not in the stored commit message).
    """
    if kind == "reply":
        text = "\n".join(texts)
        low = text.lower()
        if not any(word in low for word in _REPLY_WORDS):
            return Notes()
        lines = own_lines(text)
        return Notes(trailers=trailers(lines), applied=says_applied(lines))
    if kind in ("patch", "cover"):
        return Notes(change_id=change_id("\n".join(texts)))
    return Notes()
