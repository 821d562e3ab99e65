"""`kvm-digest repair`: a new index from the archive, with the old one's state.

The derived tables are git's, so they are simply rebuilt. The state tables
(subscribers, tokens, schedules, digests, the outbox, bounces, inbound
and failed mail, the VERP key in `meta`...) exist nowhere else, so every
row SQLite can still read is carried over: each table is read in rowid
order, and where a page cannot be read, the read seeks past it (SQLite's
own b-tree finds the next readable row) instead of giving the table up. A
file whose header was overwritten gets a sound one first, taken from an
index made by this version, so the pages behind it can be read at all.

The old file is never changed: the work is done on a copy and in a new
file, which replaces the old one only when it is complete; the old one is
kept beside it for the admin.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import struct
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bot.store.damage import HEADER
from bot.store.index import DERIVED_TABLES, Index

if TYPE_CHECKING:
    from bot.store.archive import Archive
    from bot.store.inbox import Inbox

DERIVED_META = ("last_commit", "rules_version", "schema_stamp")
"""Keys of `meta` that describe the derived tables; the rest is state."""
PAGE_SIZES = (4096, 512, 1024, 2048, 8192, 16384, 32768, 65536)


@dataclass
class Repaired:
    """What a repair did, for its summary."""

    kept: dict[str, int] = field(default_factory=dict)
    """State rows carried over, by table."""
    lost: list[str] = field(default_factory=list)
    """State tables (or parts) that could not be read."""
    messages: int = 0
    old: Path | None = None
    """Where the old index now is."""


def repair(
    path: Path,
    archive: Archive | Inbox,
    max_size: int,
    progress: Callable[[int], None] | None = None,
) -> Repaired:
    """Rebuild the index at `path` from `archive`, keeping what state can be read."""
    done = Repaired()
    fresh = path.with_name(path.name + ".new")
    _remove(fresh)
    index = Index(fresh)
    try:
        if path.exists():
            with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
                copy = _working_copy(path, Path(scratch))
                state = salvage(copy, done)
            _restore(index.conn, state)
            done.kept = {t: len(rows) for t, (_, rows) in state.items() if rows and t != "meta"}
        done.messages = index.catch_up(archive, progress, max_size=max_size)
    finally:
        index.close()
    if path.exists():
        done.old = path.with_name(f"{path.name}.before-repair-{time.strftime('%Y%m%dT%H%M%S')}")
        path.rename(done.old)
        wal = path.with_name(path.name + "-wal")
        if wal.exists():
            wal.rename(done.old.with_name(done.old.name + "-wal"))
    _remove(path.with_name(path.name + "-shm"))
    fresh.rename(path)
    _sync_dir(path.parent)
    return done


def _working_copy(path: Path, scratch: Path) -> Path:
    """A copy of the index (with its WAL, which holds the latest commits) to read."""
    copy = scratch / "index.sqlite3"
    shutil.copyfile(path, copy)
    wal = path.with_name(path.name + "-wal")
    if wal.exists():
        shutil.copyfile(wal, scratch / "index.sqlite3-wal")
    with copy.open("rb") as f:
        header = f.read(100)
    if header[: len(HEADER)] != HEADER:
        _new_header(copy, scratch)
    else:
        _pad(copy, header)
    return copy


def _pad(copy: Path, header: bytes) -> None:
    """Give a file cut short its full length again (zeros), as its header says.

    A table whose first page lies past the cut would otherwise make SQLite
    refuse the whole schema ("invalid rootpage"); padded, only the pages
    that were lost fail to read.
    """
    page = struct.unpack(">H", header[16:18])[0]
    page = 65536 if page == 1 else page
    pages = struct.unpack(">I", header[28:32])[0]
    if page >= 512 and copy.stat().st_size < page * pages:
        os.truncate(copy, page * pages)


def _new_header(copy: Path, scratch: Path) -> None:
    """Give the copy the header of an index made by this version, at the right page size.

    The header (the first 100 bytes) says how to read the rest: page size,
    format, encoding. Ours never vary but the page size might, so each
    size is tried until SQLite can read the list of tables.
    """
    template = scratch / "template.sqlite3"
    Index(template).close()
    header = bytearray(template.read_bytes()[:100])
    size = copy.stat().st_size
    for page in PAGE_SIZES:
        header[16:18] = struct.pack(">H", page if page < 65536 else 1)
        header[28:32] = struct.pack(">I", size // page)
        # Change counter and "version valid for" differ: SQLite then takes the
        # size from the file, and no freelist is trusted.
        header[24:28] = struct.pack(">I", 1)
        header[92:96] = struct.pack(">I", 2)
        header[32:40] = bytes(8)
        with copy.open("r+b") as f:
            f.write(header)
        try:
            conn = sqlite3.connect(copy)
            try:
                conn.execute("SELECT name FROM sqlite_master").fetchall()
                return
            finally:
                conn.close()
        except sqlite3.DatabaseError:
            continue


def state_tables() -> list[str]:
    """The tables `repair` carries over, in an order that keeps references whole."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.executescript((Path(__file__).parent / "schema.sql").read_text(encoding="utf-8"))
        names = [
            name
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY rowid"
            )
        ]
    finally:
        conn.close()
    return [n for n in names if n not in DERIVED_TABLES]


State = dict[str, tuple[list[str], list[tuple]]]


def salvage(copy: Path, done: Repaired) -> State:
    """Every readable row of each state table in the (copied) old index."""
    state: State = {}
    try:
        conn = sqlite3.connect(copy)
    except sqlite3.Error as err:
        done.lost.append(f"every state table: the old index cannot be opened ({err})")
        return state
    try:
        for table in state_tables():
            try:
                columns = [row[1] for row in conn.execute(f'PRAGMA table_info("{table}")')]
            except sqlite3.DatabaseError as err:
                done.lost.append(f"{table}: its definition cannot be read ({err})")
                continue
            if not columns:
                continue  # not in the old index: nothing to keep
            rows, whole = _rows(conn, table, columns)
            state[table] = (columns, rows)
            if not whole:
                done.lost.append(f"{table}: rows on damaged pages (kept {len(rows)})")
    finally:
        conn.close()
    return state


def _rows(conn: sqlite3.Connection, table: str, columns: list[str]) -> tuple[list[tuple], bool]:
    """The rows SQLite can read, in rowid order; False when some could not be."""
    wanted = ", ".join(f'"{c}"' for c in columns)
    if not _has_rowid(conn, table):
        return _rows_in_key_order(conn, table, wanted)
    rows: list[tuple] = []
    whole = True
    start = -(2**63)
    while start is not None:
        try:
            for row in conn.execute(
                f'SELECT rowid, {wanted} FROM "{table}" WHERE rowid >= ? ORDER BY rowid', (start,)
            ):
                rows.append(row[1:])
                start = row[0] + 1
            return rows, whole
        except sqlite3.DatabaseError:
            whole = False
            start = _next_readable(conn, table, start)
    return rows, whole


def _has_rowid(conn: sqlite3.Connection, table: str) -> bool:
    """False for a WITHOUT ROWID table, which has only its primary key to seek by."""
    try:
        conn.execute(f'SELECT rowid FROM "{table}" LIMIT 0')
    except sqlite3.OperationalError:
        return False
    return True


def _rows_in_key_order(
    conn: sqlite3.Connection, table: str, wanted: str
) -> tuple[list[tuple], bool]:
    """A WITHOUT ROWID table's rows up to the first damaged page (small state tables)."""
    rows: list[tuple] = []
    try:
        for row in conn.execute(f'SELECT {wanted} FROM "{table}"'):
            rows.append(row)
    except sqlite3.DatabaseError:
        return rows, False
    return rows, True


def _next_readable(conn: sqlite3.Connection, table: str, failed: int) -> int | None:
    """The smallest rowid start past `failed` from which the table reads again.

    Steps double until a read succeeds (SQLite seeks through the interior
    pages, past a damaged leaf), then halve back towards the damage, so
    rows just after it are not skipped.
    """
    step = 1
    good = None
    while failed + step < 2**63:
        if _readable(conn, table, failed + step):
            good = failed + step
            break
        step *= 2
    if good is None:
        return None
    low = failed + step // 2  # known to fail (or the failed start itself)
    while good - low > 1:
        middle = (low + good) // 2
        if _readable(conn, table, middle):
            good = middle
        else:
            low = middle
    return good


def _readable(conn: sqlite3.Connection, table: str, start: int) -> bool:
    try:
        conn.execute(
            f'SELECT * FROM "{table}" WHERE rowid >= ? ORDER BY rowid LIMIT 1', (start,)
        ).fetchall()
    except sqlite3.DatabaseError:
        return False
    return True


def _restore(conn: sqlite3.Connection, state: State) -> None:
    """Write the salvaged rows into the new index (one transaction)."""
    conn.execute("PRAGMA foreign_keys = OFF")  # a row may name one that was lost
    with conn:
        for table, (columns, rows) in state.items():
            have = {row[1] for row in conn.execute(f'PRAGMA table_info("{table}")')}
            keep = [i for i, c in enumerate(columns) if c in have]
            names = ", ".join(f'"{columns[i]}"' for i in keep)
            marks = ", ".join("?" for _ in keep)
            if table == "meta":
                rows = [r for r in rows if r[columns.index("key")] not in DERIVED_META]
            conn.executemany(
                f'INSERT OR REPLACE INTO "{table}" ({names}) VALUES ({marks})',
                [tuple(r[i] for i in keep) for r in rows],
            )
    conn.execute("PRAGMA foreign_keys = ON")


def _remove(path: Path) -> None:
    for name in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        name.unlink(missing_ok=True)


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
