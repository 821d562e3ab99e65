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

    `shown` maps each series id to the Message-ID the digest shows for it;
    only its keys matter: every series has a title of its own (titles()),
    so the answer is the same whichever part of a series a range holds.
    Only mail up to `end_seq` counts: a digest says what was known at its
    end. A newer version wins over an older one: the reader wants to know
    the series they are looking at is no longer the current one.
    """
    mine = titles(conn, list(shown), end_seq)
    # Every series that ever had a patch or cover letter under one of these
    # titles (or change-ids), in two indexed look-ups; each then counts
    # only if that is its own title.
    candidates = same_work(
        conn,
        {(fk, key) for fk, key, _, _ in mine.values()},
        {cid for _, _, cid, _ in mine.values() if cid},
        end_seq,
    )
    others = titles(conn, sorted(candidates - mine.keys()), end_seq) | mine
    by_title: dict[tuple[str, str], dict[str, tuple[int, int]]] = {}
    by_change: dict[str, dict[str, tuple[int, int]]] = {}
    posted = first_dates(conn, list(others), end_seq)
    for other, (from_key, key, change_id, version) in others.items():
        when = posted.get(other) or 0
        by_title.setdefault((from_key, key), {})[other] = (version, when)
        if change_id:
            by_change.setdefault(change_id, {})[other] = (version, when)
    out = {}
    for series_id, (from_key, key, change_id, version) in mine.items():
        same = dict(by_title.get((from_key, key), {}))
        if change_id:
            same.update(by_change.get(change_id, {}))
        _, when = same.pop(series_id, (version, 0))
        out[series_id] = _say((when, version), [(w, v) for v, w in same.values()])
    return out


def same_work(
    conn: sqlite3.Connection,
    pairs: set[tuple[str, str]],
    change_ids: set[str],
    end_seq: int,
) -> set[str]:
    """Every series that had a patch or cover letter up to `end_seq` under one
    of these (submitter, title key) pairs or b4 change-ids: two indexed
    look-ups, whatever the number of series."""
    found = {
        row[0]
        for row in conn.execute(
            """WITH k(from_key, title_key) AS MATERIALIZED (
                    SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]')
                      FROM json_each(?))
               SELECT DISTINCT m.series_id
                 FROM k CROSS JOIN works w
                      ON w.from_key = k.from_key AND w.title_key = k.title_key
                 CROSS JOIN messages m ON m.seq = w.seq
                WHERE w.seq <= ? AND m.series_id IS NOT NULL""",
            (json.dumps(sorted(pairs)), end_seq),
        )
    }
    if change_ids:  # b4 users only: most series have no change-id
        found |= {
            row[0]
            for row in conn.execute(
                """SELECT DISTINCT m.series_id
                     FROM works w CROSS JOIN messages m ON m.seq = w.seq
                    WHERE w.change_id != '' AND w.change_id IN (SELECT value FROM json_each(?))
                      AND w.seq <= ? AND m.series_id IS NOT NULL""",
                (json.dumps(sorted(change_ids)), end_seq),
            )
        }
    return found


def titles(
    conn: sqlite3.Connection, series_ids: list[str], end_seq: int
) -> dict[str, tuple[str, str, str, int]]:
    """Each series' work: (submitter, title key, change-id, version).

    A series' title is that of its cover letter, else of its lowest-numbered
    patch (the subject it shows), copies aside, among the mail up to
    `end_seq`; so a series whose cover letter and first patches never
    reached the list (`[PATCH v4 3/9]`) still has one. The change-id is
    any the series' messages carry.
    """
    out: dict[str, tuple[str, str, str, int]] = {}
    change: dict[str, str] = {}
    for series_id, from_key, key, change_id, version in conn.execute(
        """SELECT m.series_id, w.from_key, w.title_key, w.change_id, m.version
             FROM messages m INDEXED BY messages_series_patchy JOIN works w ON w.seq = m.seq
            WHERE m.series_id IN (SELECT value FROM json_each(?))
              AND m.kind IN ('patch', 'cover') AND m.seq <= ? AND NOT m.is_dup
            ORDER BY m.series_id, m.kind != 'cover', COALESCE(m.counter, 1), m.seq""",
        (json.dumps(series_ids), end_seq),
    ):
        if series_id not in out:
            out[series_id] = (from_key, key, change_id, version)
        if change_id:
            change.setdefault(series_id, change_id)
    for series_id, cid in change.items():
        from_key, key, _, version = out[series_id]
        out[series_id] = (from_key, key, cid, version)
    return out


def first_dates(conn: sqlite3.Connection, series_ids: list[str], end_seq: int) -> dict[str, int]:
    """When each series was posted: the date of its first patch or cover letter."""
    return {
        series_id: when
        for series_id, when in conn.execute(
            """SELECT series_id, MIN(COALESCE(date, received))
                 FROM messages INDEXED BY messages_series_patchy
                WHERE series_id IN (SELECT value FROM json_each(?))
                  AND kind IN ('patch', 'cover') AND seq <= ?
                GROUP BY series_id""",
            (json.dumps(series_ids), end_seq),
        )
        if when is not None
    }


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
