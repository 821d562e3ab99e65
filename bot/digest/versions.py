"""Versions of one piece of work: which series a series replaces, or is replaced by.

Two series are the same work when the same submitter (address) sent them
under the same title (the subject without its bracketed tags, case and
whitespace folded), or when their cover letters carry the same b4
`change-id:`. The index keeps those keys per cover letter and first patch
(the `works` table); the series they belong to is looked up at digest time,
so the answer never depends on the order the mail arrived in.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime


def title_key(title: str) -> str:
    """A title as versions compare it: whitespace and case folded."""
    return " ".join(title.split()).casefold()


def day(when: int | None) -> str:
    """An epoch time as its UTC date, YYYY-MM-DD."""
    if when is None:
        return "unknown date"
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%d")


def first_date(conn: sqlite3.Connection, series_id: str) -> int | None:
    """When a series was posted: the date of its first patch or cover letter."""
    return conn.execute(
        """SELECT MIN(COALESCE(date, received)) FROM messages
            WHERE series_id = ? AND kind IN ('patch', 'cover')""",
        (series_id,),
    ).fetchone()[0]


def relation(conn: sqlite3.Connection, series_id: str, end_seq: int) -> str:
    """`supersedes v8 (2021-02-05)`, `superseded by v10`, or "".

    Only mail up to `end_seq` counts: a digest says what was known at its end.
    A newer version wins over an older one: the reader wants to know the
    series they are looking at is no longer the current one.
    """
    rows = conn.execute(
        """SELECT w.from_key, w.title_key, w.change_id, m.version
             FROM works w JOIN messages m ON m.seq = w.seq
            WHERE m.series_id = ? AND w.seq <= ?
            ORDER BY COALESCE(m.counter, 1) != 0, m.seq""",
        (series_id, end_seq),
    ).fetchall()
    if not rows:
        return ""
    from_key, key, _, version = rows[0]
    change_ids = sorted({r[2] for r in rows if r[2]})
    marks = ",".join("?" * len(change_ids))
    by_change_id = f" OR w.change_id IN ({marks})" if change_ids else ""
    others: dict[str, int] = {}
    for other, other_version in conn.execute(
        f"""SELECT m.series_id, m.version
              FROM works w JOIN messages m ON m.seq = w.seq
             WHERE ((w.from_key = ? AND w.title_key = ?){by_change_id})
               AND w.seq <= ? AND m.series_id IS NOT NULL AND m.series_id != ?""",
        (from_key, key, *change_ids, end_seq, series_id),
    ):
        others[other] = max(others.get(other, 0), other_version)
    newer = [v for v in others.values() if v > version]
    if newer:
        return f"superseded by v{min(newer)}"
    older = [(v, first_date(conn, s) or 0, s) for s, v in others.items() if v < version]
    if not older:
        return ""
    previous, when, _ = max(older)
    return f"supersedes v{previous} ({day(when)})"
