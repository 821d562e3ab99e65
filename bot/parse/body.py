"""The text of a patch mail: in-body headers, the commit message, the diff.

`git send-email` writes a patch as: optional in-body `From:`/`Date:`/
`Subject:` lines and a blank line (when the sender is not the author), the
commit message, a `---` line, an optional changelog, the diffstat ending with
` N files changed, ...`, then the diff. A cover letter has the same shape
without the diff; a pull request ends with a diffstat too. Mailing lists
append footers and people append signatures: neither belongs in a digest.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_INBODY = re.compile(r"^(From|Date|Subject):[ \t]*(.*)$", re.I)
_CONTINUATION = re.compile(r"^[ \t]+\S")
_DIFFSTAT_SUMMARY = re.compile(
    r"^ \d+ files? changed(, \d+ insertions?\(\+\))?(, \d+ deletions?\(-\))?\s*$"
)
_DIFF_START = re.compile(r"^(diff --git |diff -[a-zA-Z]|Index: \S|diff --cc )")
_OLD_FILE = re.compile(r"^--- \S")
_NEW_FILE = re.compile(r"^\+\+\+ \S")
_MAYBE_DIFF = re.compile(r"^(diff |Index: |--- )", re.M)
_SIGNATURE = "-- "
# Mailman 2 appends "____...\n<list> mailing list\n<address>\n<url>": a row
# of 20+ underscores, a line naming the mailing list, and a few short lines.
_FOOTER_RULE = re.compile(r"_{20,}")
_FOOTER_TAIL_LINES = 8
_PULL = re.compile(r"are available in the git repository at", re.I)


@dataclass(frozen=True)
class Body:
    """A message body split into what the digest needs."""

    inbody: dict[str, str]
    """In-body pseudo-headers (`from`, `date`, `subject`), when present."""
    commit_message: str
    """The text through the diffstat summary, or up to the diff."""
    has_diff: bool
    mentions_pull: bool


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

    They count only when they start the body (after blank lines) and are
    followed by a blank line, as git send-email writes them; a reply that
    happens to begin with "From:" in prose is left alone.
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
        found.setdefault(key, " ".join(parts).strip())
    if not found:
        return {}, lines
    if i < len(lines) and lines[i].strip():
        return {}, lines
    return found, lines[i + 1 :]


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
        if line == _SIGNATURE or _diff_start(lines, i):
            end = i
            break
    kept = lines[:end]
    while kept and not kept[-1].strip():
        kept.pop()
    first = 0
    while first < len(kept) and not kept[first].strip():
        first += 1
    return [line.rstrip("\r") for line in kept[first:]]


def contains_diff(text: str) -> bool:
    """True when the text holds a unified or git diff."""
    if not _MAYBE_DIFF.search(text):
        return False  # the cheap test settles most replies and questions
    lines = text.split("\n")
    return any(_diff_start(lines, i) for i in range(len(lines)))


def split_body(texts: list[str], is_reply: bool = False) -> Body:
    """Split the text parts of a message into in-body headers and commit message.

    The first part carries the message; later parts (an attached patch, a
    footer) only matter for diff detection. A reply is a reply whatever it
    holds, so for replies only the in-body headers are read.
    """
    cleaned = [strip_footer(t) for t in texts]
    first = cleaned[0] if cleaned else ""
    lines = first.split("\n")
    inbody, rest = split_inbody_headers(lines)
    has_diff = not is_reply and any(contains_diff(t) for t in cleaned)
    message = ""
    if not is_reply:
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
        mentions_pull=not is_reply and bool(_PULL.search(first)),
    )


def _skip_mbox_header(lines: list[str]) -> list[str]:
    """Drop a `git format-patch` file's "From <sha>" line and mail headers."""
    if lines and lines[0].startswith("From "):
        for i, line in enumerate(lines):
            if not line.strip():
                return lines[i + 1 :]
    return lines
