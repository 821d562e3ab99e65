"""A damaged index: told apart from a full disk, and named.

A disk that fills or a directory that turns read-only is a problem of the
machine; a file whose bytes are wrong (a bad sector, a copy cut short,
something else writing over it) is a problem of the file, and freeing disk
space does nothing for it. SQLite says which (SQLITE_CORRUPT, SQLITE_NOTADB),
and every command turns that into the one thing to do: `kvm-digest repair`
(bot/store/repair.py). `problems()` is what `kvm-digest fsck` reports.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

HEADER = b"SQLite format 3\x00"
"""The first 16 bytes of every SQLite database file."""
DAMAGE_CODES = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def is_damage(err: BaseException) -> bool:
    """True when SQLite says the file itself is damaged (not full, not locked)."""
    return (
        isinstance(err, sqlite3.DatabaseError)
        and getattr(err, "sqlite_errorcode", None) in DAMAGE_CODES
    )


def damaged_index(path: Path, err: BaseException) -> str:
    """The sentence every command says about a damaged index."""
    return (
        f"the index {path} is damaged ({err}); run `kvm-digest repair`: it rebuilds "
        "the index from the archive and keeps subscribers, schedules and the outbox"
    )


def problems(path: Path) -> list[str]:
    """What is damaged in the index file at `path`, in plain words; [] when sound.

    The header first (a file that is not SQLite's tells nothing more), then
    SQLite's own `PRAGMA quick_check`, then, when that finds damage, which
    tables can no longer be read whole.
    """
    try:
        with path.open("rb") as f:
            start = f.read(len(HEADER))
    except OSError as err:
        return [f"the index {path} cannot be read ({err.strerror})"]
    if start != HEADER:
        return [f"the index {path} does not start with SQLite's header: it is not a database"]
    conn = sqlite3.connect(path)
    try:
        said = _quick_check(conn)
        if not said:
            return []
        found = [f"SQLite's quick_check of {path}: {said}"]
        found += [f"table {t} cannot be read ({why})" for t, why in unreadable_tables(conn)]
        return found
    finally:
        conn.close()


def _quick_check(conn: sqlite3.Connection) -> str:
    """'' when SQLite finds the file sound; else its first findings."""
    try:
        rows = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
    except sqlite3.DatabaseError as err:
        return str(err)
    if rows == ["ok"]:
        return ""
    lines = [line for row in rows for line in row.splitlines()]
    return "; ".join(line for line in lines if not line.startswith("*** in database"))


def unreadable_tables(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    """Each table a full read of fails, with SQLite's reason."""
    try:
        tables = [
            name
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
            )
        ]
    except sqlite3.DatabaseError as err:
        return [("sqlite_master (the list of tables)", str(err))]
    bad = []
    for table in tables:
        try:
            for _ in conn.execute(f'SELECT * FROM "{table}"'):
                pass
        except sqlite3.DatabaseError as err:
            bad.append((table, str(err)))
    return bad
