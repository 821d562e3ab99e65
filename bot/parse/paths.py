"""The file paths a patch touches, read from its diff headers.

Topic queries (`dfn:arch/arm64/kvm/`) ask which files a series changes. The
diff is the only reliable source: subjects are free text, and the diffstat
abbreviates long paths (`.../kvm/hyp/switch.c`). Both sides of a rename or
copy count as touched, as `git log -- PATH` would say for either name.

Only header lines count. Hunk bodies are skipped by their line counts, so a
removed line that reads `-- foo` (shown as `--- foo`) is not taken for a
file header.
"""

from __future__ import annotations

import re

_GIT = re.compile(r"^diff --git (.+)$")
# Counts are bounded: int() of thousands of digits raises, and no hunk is that long.
_HUNK = re.compile(r"^@@ -\d+(?:,(\d{1,9}))? \+\d+(?:,(\d{1,9}))? @@")
_OLD = re.compile(r"^--- (.+)$")
_NEW = re.compile(r"^\+\+\+ (.+)$")
_RENAME = re.compile(r"^(?:rename|copy) (?:from|to) (.+)$")
_ESCAPES = {"a": "\a", "b": "\b", "t": "\t", "n": "\n", "v": "\v", "f": "\f", "r": "\r"}
_MAX_PATH = 4096
_SPACE = re.compile(" ")
_HEADS = frozenset("@drc-")
"""First characters of the lines _scan reads: hunks, diff --git, renames and copies, ---."""
_NOT_BODY = re.compile(r"[^-+ \\]")
_FIRST_SLICE = 8
"""Lines of a hunk's body counted at first; each next slice is twice as long."""
_HEADERS = ("diff --git ", "--- ", "rename from ", "rename to ", "copy from ", "copy to ")
# Not `^(?:...)` with re.M: that tries the alternatives at every character
# of the text; after a literal newline, the regex engine skips to each one.
# Five times faster over kvmarm's bodies, most of which hold no diff.
_MAYBE = re.compile("\n(?:" + "|".join(map(re.escape, _HEADERS)) + ")")


def unquote(text: str) -> str:
    """A path as git prints it: C-quoted ("a/f\\303\\251") when it has to be."""
    if not (len(text) >= 2 and text[0] == '"' and text[-1] == '"'):
        return text
    out = bytearray()
    body = text[1:-1]
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt in "01234567" and re.match(r"[0-7]{3}", body[i + 1 : i + 4]):
                out.append(int(body[i + 1 : i + 4], 8) & 0xFF)
                i += 4
                continue
            out += _ESCAPES.get(nxt, nxt).encode("utf-8", "replace")
            i += 2
            continue
        out += ch.encode("utf-8", "replace")
        i += 1
    return out.decode("utf-8", "replace")


def _strip_prefix(path: str) -> str | None:
    """`a/arch/x86/kvm/x86.c` -> `arch/x86/kvm/x86.c`, as `patch -p1` reads it.

    git writes a/ and b/ (or i/, w/ ... with mnemonic prefixes); quilt and
    hand-made diffs write `linux.orig/...`: the first component goes either way.
    """
    path = unquote(path.split("\t", 1)[0].strip())
    if not path or path == "/dev/null":
        return None
    _, slash, rest = path.partition("/")
    path = rest if slash else path
    return path if path and len(path) <= _MAX_PATH else None


def _git_pair(text: str) -> list[str]:
    """The two names of a `diff --git` line.

    Quoted names are unambiguous. Unquoted names may hold spaces; git then
    prints the same name twice, so the split that gives equal halves wins.
    """
    if text.startswith('"'):
        m = re.match(r'("(?:[^"\\]|\\.)*")\s+(.+)$', text)
        return [m.group(1), m.group(2)] if m else []
    if text.endswith('"'):
        m = re.match(r'(\S+)\s+("(?:[^"\\]|\\.)*")$', text)
        return [m.group(1), m.group(2)] if m else []
    candidates = [m.start() for m in _SPACE.finditer(text)]
    for pos in candidates:
        old, new = text[:pos], text[pos + 1 :]
        if old.partition("/")[2] == new.partition("/")[2]:
            return [old, new]
    # A rename with spaces: the rename lines will name both sides.
    return text.split(" ", 1) if len(candidates) == 1 else []


def touched(texts: list[str]) -> list[str]:
    """Every file path the diffs in these text parts touch, sorted, unique.

    Never raises: mail is hostile input, and a path we cannot read is
    better lost than the message.
    """
    found: set[str] = set()
    for text in texts:
        # The cheap test settles cover letters and prose.
        if text.startswith(_HEADERS) or _MAYBE.search(text):
            _scan(text.replace("\r\n", "\n").split("\n"), found)
    # Lone surrogates (undecodable bytes) cannot go into SQLite as text.
    return sorted({p.encode("utf-8", "replace").decode("utf-8") for p in found})


def _scan(lines: list[str], found: set[str]) -> None:
    i = 0
    end = len(lines)
    while i < end:
        line = lines[i]
        # One character settles most lines (prose, the diffstat), before any regex.
        first = line[:1]
        if first not in _HEADS:
            i += 1
            continue
        if first == "@" and (m := _HUNK.match(line)):
            # Skip the hunk body: old and new line counts (default 1).
            old = int(m.group(1)) if m.group(1) is not None else 1
            new = int(m.group(2)) if m.group(2) is not None else 1
            i = _past_hunk(lines, i + 1, old, new)
            continue
        if first == "d" and (m := _GIT.match(line)):
            for name in _git_pair(m.group(1)):
                if path := _strip_prefix(name):
                    found.add(path)
        elif first in "rc" and (m := _RENAME.match(line)):
            path = unquote(m.group(1).strip())
            if path and len(path) <= _MAX_PATH:
                found.add(path)
        elif (
            first == "-"
            and (m := _OLD.match(line))
            and i + 1 < end
            and (n := _NEW.match(lines[i + 1]))
        ):
            for name in (m.group(1), n.group(1)):
                if path := _strip_prefix(name):
                    found.add(path)
            i += 1
        i += 1


def _past_hunk(lines: list[str], i: int, old: int, new: int) -> int:
    """The index of the first line after a hunk body of `old` and `new` lines.

    A body line takes at most one from each count, so none of the next
    max(old, new) lines can end the hunk: they are counted a slice at a
    time (a line's first character: "-", "+", " " or none, and "\\" for
    "No newline at end of file"), not a line at a time. Any other first
    character is a mangled hunk: headers are read again from that line.
    Slices start small and double, so a hunk that claims more lines than
    it has (hostile counts go to 999,999,999) costs the lines it has.
    """
    end = len(lines)
    step = _FIRST_SLICE
    while i < end and (old > 0 or new > 0):
        take = min(max(old, new), step)
        step *= 2
        tags = "".join([line[:1] or " " for line in lines[i : i + take]])
        if bad := _NOT_BODY.search(tags):
            tags = tags[: bad.start()]
        context = tags.count(" ")
        old -= tags.count("-") + context
        new -= tags.count("+") + context
        i += len(tags)
        if bad:
            break
    return i
