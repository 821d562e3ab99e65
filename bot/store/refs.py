"""The archive's head commit, read from git's ref files without libgit2.

Why: a reader (`kvm-digest digest`) only needs to know whether the index has
caught up with the archive, and loading pygit2 costs more than the whole rest
of a one-day digest. Git stores a branch either as a loose file
(refs/heads/master) or as a line in packed-refs; anything else (a reftable,
a symbolic ref, an unreadable file) answers "cannot tell", and the caller
opens the archive with libgit2 as before. So this can make a reader skip
work only when the answer is certain, never make it read a wrong head.
"""

from __future__ import annotations

import re
from pathlib import Path

BRANCH = "refs/heads/master"
_OID = re.compile(rb"[0-9a-f]{40}([0-9a-f]{24})?")


def quick_head(path: Path) -> str | None:
    """The commit id refs/heads/master points at, or None when unsure."""
    if (path / "reftable").exists():
        return None
    try:
        loose = (path / BRANCH).read_bytes().strip()
    except FileNotFoundError:
        loose = None
    except OSError:
        return None
    if loose is not None:
        return loose.decode() if _OID.fullmatch(loose) else None
    try:
        packed = (path / "packed-refs").read_bytes()
    except OSError:
        return None
    for line in packed.splitlines():
        oid, _, name = line.partition(b" ")
        if name == BRANCH.encode():
            return oid.decode() if _OID.fullmatch(oid) else None
    return None
