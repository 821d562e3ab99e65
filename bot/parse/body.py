"""The text of a patch mail: in-body headers, the commit message, the diff.

`git send-email` writes a patch as: optional in-body `From:`/`Date:`/
`Subject:` lines and usually a blank line (when the sender is not the
author), the commit message, a `---` line, an optional changelog, the
diffstat ending with ` N files changed, ...`, then the diff. A cover letter
has the same shape without the diff, but may quote or embed one (a sketch of
a fix, a range-diff), so it runs to its signature instead. A pull request
ends with a diffstat too. Mailing lists append footers and people append
signatures: neither belongs in a digest.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

_INBODY = re.compile(r"^(From|Date|Subject):[ \t]*(.*)$", re.I)
_CONTINUATION = re.compile(r"^[ \t]+\S")
# git writes the summary with one leading space; some tools and hand edits drop it.
_DIFFSTAT_SUMMARY = re.compile(
    r"^[ \t]*\d+ files? changed(, \d+ insertions?\(\+\))?(, \d+ deletions?\(-\))?\s*$"
)
_DIFF_START = re.compile(r"^(diff --git |diff -[a-zA-Z]|Index: \S|diff --cc )")
_OLD_FILE = re.compile(r"^--- \S")
_NEW_FILE = re.compile(r"^\+\+\+ \S")
# _DIFF_START, or _OLD_FILE followed by _NEW_FILE, at the start of any line.
_ANY_DIFF = re.compile(
    r"^(?:diff --git |diff -[a-zA-Z]|Index: \S|diff --cc |--- \S.*\n\+\+\+ \S)", re.M
)
_SIGNATURE = "-- "
# Mailman 2 appends "____...\n<list> mailing list\n<address>\n<url>": a row
# of 20+ underscores, a line naming the mailing list, and a few short lines.
_FOOTER_RULE = re.compile(r"_{20,}")
_FOOTER_TAIL_LINES = 8
# git request-pull's fixed wording (older gits write "git" in lower case).
# Each is searched only after a plain substring test: most mail has neither.
_PULL_AT = re.compile(r"are available in the git repository at", re.I)
_PULL_SINCE = re.compile(r"^The following changes since commit [0-9a-f]{7,}", re.M)
# A mail header line ("Sent:", "To:", German Outlook's "Gesendet:"): after a
# `From:` it means a quoted header block, not git's in-body From. (A commit
# message may well start with "KVM: x86: ...", so only header names count.)
_HEADERISH = re.compile(
    r"^(?:Sent|To|Cc|Bcc|Reply-To|Date|Subject|Importance|Organization|Message-ID"
    r"|In-Reply-To|References|Received|Return-Path|Delivered-To|Envelope-To|Sender"
    r"|MIME-Version|Content-[\w-]+|User-Agent|X-[\w-]+|Gesendet|An|Betreff|Datum"
    r"|Envoy[ée]|[ÀA]|Objet|Enviado el|Para|Asunto):[ \t]",
    re.I,
)
_HAS_ADDRESS = re.compile(r"<[^<>@\s]+@[^<>\s]+>|^[^\s<>@]+@[^\s<>@]+\.[^\s<>@]+$")
# Automated notes about a patch, by the first words of their body: the stable
# team's "added the patch titled" and "does not apply" mails, tip-bot's
# "has been merged into", mm-commits' "The patch titled", linux-media's
# "the following patch were queued".
_NOTICE = re.compile(
    r"^(?:This is a note to let you know that I've just added the patch titled"
    r"|The patch below does not apply to the \S+ tree"
    r"|The following commit has been merged into the \S+ branch of"
    r"|The patch titled\s*\n\s*Subject:"
    r"|This is an automatic generated email to let you know that the following patch"
    r")",
    re.I | re.M,
)
_NOTICE_WINDOW = 600
"""Characters at the top of a body where a notice's opening sentence sits."""
# The shortlog of a cover letter or pull request: "Ann Author (3):".
_SHORTLOG = re.compile(r"^\S[^\n]* \(\d+\):$", re.M)
_INTERDIFF = re.compile(r"^(Range-diff|Interdiff)\b[^\n]*:$", re.M)
# Lines that may follow the start of a diff and still belong to it.
_DIFF_LINE = re.compile(
    r"^(?:[ +\-@\\]|$|diff |index |new file|deleted file|similarity|dissimilarity|"
    r"rename |copy |old mode|new mode|Binary files|GIT binary patch|literal |delta |"
    r"Index: |={20,}|RCS file|retrieving revision)"
)
_ASCII_SPACE = bytes(c for c in range(128) if chr(c).isspace())
COVER_MAX_LINES = 400
"""A cover letter longer than this is cut, with a line saying how much was left."""


@dataclass(frozen=True)
class Body:
    """A message body split into what the digest needs."""

    inbody: dict[str, str]
    """In-body pseudo-headers (`from`, `date`, `subject`), when present."""
    commit_message: str
    """The text through the diffstat summary, or up to the diff."""
    has_diff: bool
    mentions_pull: bool
    is_notice: bool = False
    """Opens like an automated note about a patch (a stable-tree notice)."""
    embeds_diff: bool = False
    """The diff sits inside a letter (text or a shortlog around it), not after it."""
    text_hash: str = ""
    """See text_hash()."""


def mentions_pull(text: str) -> bool:
    """True when the text carries git request-pull's wording."""
    if "repository at" in text and _PULL_AT.search(text):
        return True
    return "following changes since commit" in text and bool(_PULL_SINCE.search(text))


def text_hash(texts: list[str]) -> str:
    """A hash of what a message says, for telling a resend from a repost.

    FORMAT.md: an entry is a duplicate when its subject, sender and body text
    (decoded, white space ignored) equal an earlier one's. The texts come
    decoded and without their list footer, so a quoted-printable copy equals
    an 8-bit one, and dropping all white space makes re-wrapped copies equal.
    """
    h = hashlib.sha256()
    for text in texts:
        if text.isascii():
            # The same bytes as below, without a string per word: for ASCII
            # text, str.split() splits at exactly these characters.
            h.update(text.encode("ascii").translate(None, _ASCII_SPACE))
        else:
            h.update("".join(text.split()).encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()


def strip_footer(text: str) -> str:
    """Remove a mailing-list footer from the end of a text part.

    Only the last few lines are looked at (a regex over the whole text
    backtracks without end on mail made of footer-like lines).
    """
    pieces = text.rstrip("\n").rsplit("\n", _FOOTER_TAIL_LINES)
    if len(pieces) > _FOOTER_TAIL_LINES:
        head, lines = pieces[0] + "\n", pieces[1:]
    else:
        head, lines = "", pieces
    for i, line in enumerate(lines[:-1]):
        if _FOOTER_RULE.fullmatch(line) and "mailing list" in lines[i + 1].lower():
            return head + "\n".join(lines[:i]) + "\n"
    return text


def split_inbody_headers(lines: list[str]) -> tuple[dict[str, str], list[str]]:
    """Take `From:`/`Date:`/`Subject:` lines off the top of a body.

    They count only when they start the body (after blank lines), as git
    send-email writes them, followed by a blank line; or, as `git am` also
    reads them, directly by the commit message when the block has a `From:`
    with an address. A reply that begins with "From:" in prose, or with a
    quoted header block ("From: ..." then "Sent: ..."), is left alone.
    """
    start = 0
    while start < len(lines) and not lines[start].strip():
        start += 1
    found: dict[str, str] = {}
    i = start
    while i < len(lines):
        m = _INBODY.match(lines[i])
        if not m:
            break
        key, parts = m.group(1).lower(), [m.group(2)]
        i += 1
        while i < len(lines) and _CONTINUATION.match(lines[i]):
            parts.append(lines[i].strip())  # joined once: += is quadratic
            i += 1
        value = " ".join(parts)
        found.setdefault(key, value.strip())
    if not found:
        return {}, lines
    if i >= len(lines) or not lines[i].strip():
        return found, lines[i + 1 :]
    # No blank line: the block ends where the commit message begins.
    if "from" in found and _HAS_ADDRESS.search(found["from"]) and not _HEADERISH.match(lines[i]):
        return found, lines[i:]
    return {}, lines


def _diff_start(lines: list[str], i: int) -> bool:
    line = lines[i]
    if _DIFF_START.match(line):
        return True
    return bool(_OLD_FILE.match(line) and i + 1 < len(lines) and _NEW_FILE.match(lines[i + 1]))


def cut_commit_message(lines: list[str]) -> list[str]:
    """The lines through the diffstat summary, else up to the diff or signature.

    Trailing blank lines and leading blank lines are dropped.
    """
    end = len(lines)
    for i, line in enumerate(lines):
        if _DIFFSTAT_SUMMARY.match(line):
            end = i + 1
            break
        if _signature_at(lines, i) or _diff_start(lines, i):
            end = i
            break
    kept = lines[:end]
    while kept and not kept[-1].strip():
        kept.pop()
    first = 0
    while first < len(kept) and not kept[first].strip():
        first += 1
    return [line.rstrip("\r") for line in kept[first:]]


def _signature_at(lines: list[str], i: int) -> bool:
    """True when line i starts a signature: `-- `, or a bare `--` near the end."""
    if not lines[i].startswith("--"):
        return False  # the cheap test settles almost every line
    if lines[i] == _SIGNATURE:
        return True
    if lines[i].rstrip() != "--":
        return False
    return sum(1 for line in lines[i + 1 :] if line.strip()) <= 4


def cut_cover_letter(lines: list[str], limit: int = COVER_MAX_LINES) -> list[str]:
    """A cover letter's lines up to its signature, whatever diff it quotes.

    Its shortlog, diffstat, sketches and range-diffs are all the author's
    letter; only the signature (and the list footer, already gone) is not.
    A very long letter keeps its first `limit` lines and says how many more.
    """
    end = len(lines)
    for i in range(len(lines)):
        if _signature_at(lines, i):
            end = i
            break
    kept = [line.rstrip("\r") for line in lines[:end]]
    while kept and not kept[-1].strip():
        kept.pop()
    first = 0
    while first < len(kept) and not kept[first].strip():
        first += 1
    kept = kept[first:]
    if len(kept) > limit:
        rest = len(kept) - limit
        kept = kept[:limit]
        while kept and not kept[-1].strip():
            kept.pop()
        kept += ["", f"[... {rest} more lines]"]
    return kept


def embeds_diff(lines: list[str]) -> bool:
    """True when a diff in the text is part of a letter rather than the message.

    A patch ends with its diff; a cover letter that quotes a sketch of a fix
    goes on after it (a shortlog, a diffstat, a sign-off), or carries the
    series shortlog or a range-diff/interdiff heading.
    """
    text = "\n".join(lines)
    if _SHORTLOG.search(text) or _INTERDIFF.search(text):
        return True
    start = next((i for i in range(len(lines)) if _diff_start(lines, i)), None)
    if start is None:
        return False
    for i in range(start, len(lines)):
        if _signature_at(lines, i):
            return False
        if lines[i].startswith("GIT binary patch"):
            return False  # base85 data follows: it is diff to the end
        if not _DIFF_LINE.match(lines[i]):
            return True
    return False


def contains_diff(text: str) -> bool:
    """True when the text holds a unified or git diff: a line where
    _diff_start() is true, found in one pass over the text."""
    return _ANY_DIFF.search(text) is not None


def split_body(texts: list[str], is_reply: bool = False, numbered_cover: bool = False) -> Body:
    """Split the text parts of a message into in-body headers and commit message.

    The first part carries the message; later parts (an attached patch, a
    footer) only matter for diff detection. A reply is a reply whatever it
    holds and counts for its sender (message.author), so its body is not
    read here at all: half of a list's mail, 3% of parsing. A `0/n` message
    (`numbered_cover`) is cut as a cover letter unless its diff is the
    message itself, as in a patch.
    """
    if is_reply:
        # Nothing of it is shown or compared: only entries are, and a reply never is one.
        return Body(inbody={}, commit_message="", has_diff=False, mentions_pull=False)
    cleaned = [strip_footer(t) for t in texts]
    first = cleaned[0] if cleaned else ""
    lines = first.split("\n")
    inbody, rest = split_inbody_headers(lines)
    has_diff = any(contains_diff(t) for t in cleaned)
    embedded = numbered_cover and has_diff and embeds_diff(rest)
    if numbered_cover and (embedded or not has_diff):
        message = "\n".join(cut_cover_letter(rest))
    else:
        cut = cut_commit_message(rest)
        if not cut and len(cleaned) > 1:
            # A patch sent as an attachment: the message is inside the file.
            attached = cleaned[1].split("\n")
            _, attached_rest = split_inbody_headers(_skip_mbox_header(attached))
            cut = cut_commit_message(attached_rest)
        message = "\n".join(cut)
    return Body(
        inbody=inbody,
        commit_message=message,
        has_diff=has_diff,
        mentions_pull=mentions_pull(first),
        is_notice=bool(_NOTICE.search(first.lstrip()[:_NOTICE_WINDOW])),
        embeds_diff=embedded,
        text_hash=text_hash(cleaned),
    )


def _skip_mbox_header(lines: list[str]) -> list[str]:
    """Drop a `git format-patch` file's "From <sha>" line and mail headers."""
    if lines and lines[0].startswith("From "):
        for i, line in enumerate(lines):
            if not line.strip():
                return lines[i + 1 :]
    return lines
