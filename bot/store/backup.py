"""`kvm-digest backup FILE`: a consistent copy of the index, while the daemon runs.

The index is not only a cache: its state tables (schema.sql marks them)
hold the subscribers, pending tokens, the VERP key, where each schedule
ended, the outbox and bounce scores, none of which git can give back. A
plain `cp` of index.sqlite3 misses what is still in its write-ahead log
(index.sqlite3-wal): a copy taken a minute after an unsubscribe can show
the reader as active. SQLite's online backup API copies the database as
one snapshot, WAL included, under a read transaction: the daemon goes on
writing meanwhile (WAL readers never block the writer).

The copy is written beside FILE and renamed over it when complete and
checked, so FILE is always either the previous backup or a whole new one,
and it is a single self-contained file (rollback journal, not WAL).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

from bot.errors import DigestError


def backup(index: Path, dest: Path) -> int:
    """Copy `index` to `dest` as one consistent snapshot; return its size in bytes."""
    if not index.exists():
        raise DigestError(f"there is no index at {index}; nothing to back up")
    own = {index.resolve().with_name(index.name + suffix) for suffix in ("", "-wal", "-shm")}
    if dest.resolve() in own:
        raise DigestError(f"{dest} is the index itself; back it up to another file")
    partial = dest.with_name(dest.name + ".partial")
    partial.unlink(missing_ok=True)
    source = sqlite3.connect(index, timeout=30)
    try:
        copy = sqlite3.connect(partial)
        try:
            # pages=-1: the whole database in one step, so one read
            # transaction: a single snapshot, however busy the daemon is.
            source.backup(copy, pages=-1)
            copy.execute("PRAGMA journal_mode = DELETE")  # one file, no -wal beside it
            verdict = copy.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            copy.close()
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        source.close()
    if verdict != "ok":
        partial.unlink(missing_ok=True)
        raise DigestError(
            f"the copy of {index} failed its integrity check ({verdict}); nothing was written"
        )
    _sync(partial)
    partial.replace(dest)
    _sync(dest.absolute().parent)
    return dest.stat().st_size


def _sync(path: Path) -> None:
    """fsync a file or a directory, so the rename survives a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):  # some file systems refuse fsync on a directory
            os.fsync(fd)
    finally:
        os.close(fd)
