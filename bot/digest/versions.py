"""Versions of one piece of work: which series a series replaces, or is replaced by.

Two series are the same work when the same submitter (address) sent them
under the same title (the subject without its bracketed tags, case and
whitespace folded), or when their cover letters carry the same b4
`change-id:`. The index keeps those keys per cover letter and first patch
(the `works` table); the series they belong to is looked up at digest time,
so the answer never depends on the order the mail arrived in.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime


def title_key(title: str) -> str:
    """A title as versions compare it: whitespace and case folded."""
    return " ".join(title.split()).casefold()


def day(when: int | None) -> str:
    """An epoch time as its UTC date, YYYY-MM-DD; never raises.

    The index only keeps plausible times, but an index written by an older
    version may hold any: a date no calendar can show is an unknown one.
    """
    if when is None:
        return "unknown date"
    try:
        return datetime.fromtimestamp(when, UTC).date().isoformat()
    except (OverflowError, OSError, ValueError):
        return "unknown date"


def first_date(conn: sqlite3.Connection, series_id: str) -> int | None:
    """When a series was posted: the date of its first patch or cover letter."""
    return conn.execute(
        """SELECT MIN(COALESCE(date, received)) FROM messages INDEXED BY messages_series_patchy
            WHERE series_id = ? AND kind IN ('patch', 'cover')""",
        (series_id,),
    ).fetchone()[0]


def relations(conn: sqlite3.Connection, shown: dict[str, str], end_seq: int) -> dict[str, str]:
    """`supersedes v8 (2021-02-05)` or `superseded by v10` per series, when known.

    `shown` maps each series id to the Message-ID the digest shows for it
    (its cover letter or lowest patch): that message's `works` row names the
    work. Only mail up to `end_seq` counts: a digest says what was known at
    its end. A newer version wins over an older one: the reader wants to
    know the series they are looking at is no longer the current one.
    """
    mine: dict[str, tuple[str, str, str, int]] = {}
    for series_id, from_key, key, change_id, version in conn.execute(
        """SELECT m.series_id, w.from_key, w.title_key, w.change_id, m.version
             FROM messages m JOIN works w ON w.seq = m.seq
            WHERE m.message_id IN (SELECT value FROM json_each(?)) AND w.seq <= ?""",
        (json.dumps(sorted(set(shown.values()))), end_seq),
    ):
        if shown.get(series_id) is not None:
            mine[series_id] = (from_key, key, change_id, version)
    for series_id in shown.keys() - mine.keys():
        # Shown by a later patch (only part of the series is in the range).
        row = conn.execute(
            """SELECT w.from_key, w.title_key, w.change_id, m.version
                 FROM messages m JOIN works w ON w.seq = m.seq
                WHERE m.series_id = ? AND w.seq <= ?
                ORDER BY COALESCE(m.counter, 1) != 0, m.seq LIMIT 1""",
            (series_id, end_seq),
        ).fetchone()
        if row:
            mine[series_id] = row
    # Every version of every work named, in two indexed look-ups.
    pairs = json.dumps(sorted({(fk, key) for fk, key, _, _ in mine.values()}))
    change_ids = json.dumps(sorted({cid for _, _, cid, _ in mine.values() if cid}))
    by_title: dict[tuple[str, str], dict[str, tuple[int, int]]] = {}
    by_change: dict[str, dict[str, tuple[int, int]]] = {}
    rows = conn.execute(
        """WITH k(from_key, title_key) AS MATERIALIZED (
                SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]')
                  FROM json_each(?))
           SELECT w.from_key, w.title_key, '', m.series_id, m.version,
                  COALESCE(m.date, m.received, 0)
             FROM k CROSS JOIN works w ON w.from_key = k.from_key AND w.title_key = k.title_key
             CROSS JOIN messages m ON m.seq = w.seq
            WHERE w.seq <= ? AND m.series_id IS NOT NULL""",
        (pairs, end_seq),
    ).fetchall()
    if change_ids != "[]":  # b4 users only: most series have no change-id
        rows += conn.execute(
            """SELECT '', '', w.change_id, m.series_id, m.version,
                      COALESCE(m.date, m.received, 0)
                 FROM works w CROSS JOIN messages m ON m.seq = w.seq
                WHERE w.change_id != '' AND w.change_id IN (SELECT value FROM json_each(?))
                  AND w.seq <= ? AND m.series_id IS NOT NULL""",
            (change_ids, end_seq),
        ).fetchall()
    for from_key, key, change_id, other, version, when in rows:
        group = (
            by_change.setdefault(change_id, {})
            if change_id
            else by_title.setdefault((from_key, key), {})
        )
        old = group.get(other)
        group[other] = (
            max(version, old[0]) if old else version,
            min(when, old[1]) if old else when,
        )
    out = {}
    for series_id, (from_key, key, change_id, version) in mine.items():
        others = dict(by_title.get((from_key, key), {}))
        if change_id:
            others.update(by_change.get(change_id, {}))
        _, when = others.pop(series_id, (version, 0))
        out[series_id] = _say((when, version), [(w, v) for v, w in others.values()])
    return out


def _say(mine: tuple[int, int], others: list[tuple[int, int]]) -> str:
    """The version part of a series among the same work's other series.

    Each is (posting time, version). Earlier and newer go by posting time (the
    Date of a series' first message), not by archive position, so mail that
    arrives out of order gives the same answer; a series of the same version
    (a resend) is not another version. The nearest on each side is named.
    """
    candidates = [o for o in others if o[1] != mine[1]]
    newer = [o for o in candidates if o > mine]
    if newer:
        return f"superseded by v{min(newer)[1]}"
    older = [o for o in candidates if o < mine]
    if not older:
        return ""
    when, version = max(older)
    return f"supersedes v{version} ({day(when or None)})"
