"""List text made safe for a reader's terminal: no control characters.

A digest is read in terminals and mail clients that obey escape sequences:
an ESC sequence in a commit message can clear the screen, rewrite what was
printed above it, or write the reader's clipboard (OSC 52); BEL and BS
hide and alter text. Everything the digest or a reply shows of list mail
(subjects, names, addresses, cover letters, commit messages) goes through
`visible()` once, where the index stores it.
"""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
"""C0 controls but TAB and LF, DEL, and the C1 controls (U+0080-U+009F)."""


def _shown(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if code == 0x0D:
        return ""  # a CR left over from a CRLF line end: nothing to see
    if code < 0x20:
        return "^" + chr(code + 0x40)  # ESC is ^[, BEL ^G, BS ^H, as `cat -v` shows them
    if code == 0x7F:
        return "^?"
    return ""  # C1: no printable spelling a reader would recognise


def visible(text: str) -> str:
    """`text` with every control character but TAB and LF shown as `^X` or removed."""
    if not _CONTROL.search(text):
        return text
    return _CONTROL.sub(_shown, text.replace("\r\n", "\n"))
