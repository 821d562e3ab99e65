"""Waiting for review: the series nobody but their submitter has answered.

FORMAT.md, "Waiting for review". A series turns `wait` days old at one
moment: the arrival of its first message (patch or cover letter, in archive
order) plus `wait` days. The digest of a range A..B lists the series whose
moment falls in the range's arrival-time window, after the arrival of A and
up to that of B, and that are still open at B: the latest version (no newer
one by B), not applied, and not answered by anyone but the submitter.

Why that window: consecutive digests of a schedule share their boundary (one
ends at B, the next starts after B), so their windows meet end to end and
every moment falls in exactly one of them. A series is listed once, by the
digest whose range holds its moment, and never again; one answered by then
is never listed. Arrival times are the ones ranges use everywhere (the list
server's Received stamp, see bot/store/index.py), which follow archive order;
a sender's clock does not move a series into another digest.

Who "the submitter" is goes by canonical address (bot/desk/addresses.py
limit_key, as the command limits count): a ping from `jane+kvm@` or
`Jane@Example.org` is Jane's own and ends nothing.

This module decides which series wait and how each is shown; build.py turns
them into patch-list lines with their facts (and drops the applied ones).
"""

from __future__ import annotations

import functools
import json
import sqlite3

from bot.desk.addresses import limit_key
from bot.digest import versions
from bot.digest.ranges import Range
from bot.record import Record

DAY = 86400


@functools.lru_cache(maxsize=8192)
def canonical(address: str) -> str:
    """limit_key, remembered: a list's mail comes from and goes to the same few
    hundred people, and IDNA-encoding their domains each time is most of the
    cost of comparing them."""
    return limit_key(address)


class Posted(Record):
    """A series as a digest shows it when it need not be in the range."""

    series_id: str
    subject: str
    """Its cover letter's subject, else its lowest-numbered patch's."""
    name: str
    addr: str
    """The sender (header From) of the message shown: the submitter."""
    message_id: str
    posted: int | None
    """When its first message was sent (Date, else arrival)."""
    patches: int
    total: int
    cover: bool

    @property
    def summary(self) -> str:
        """`posted 2021-05-13, 3/3 patches, cover letter`."""
        text = f"posted {versions.day(self.posted)}, {self.patches}/{self.total} patches"
        return text + ", cover letter" if self.cover else text


def window(conn: sqlite3.Connection, rng: Range) -> tuple[int | None, int | None]:
    """The arrival times a range spans: (after this, up to and including that).

    None below means "since the beginning"; None above, an empty window (the
    end commit has no time, or the range is empty).
    """
    if rng.empty:
        return None, None

    def arrival(seq: int) -> int | None:
        row = conn.execute("SELECT received FROM messages WHERE seq = ?", (seq,)).fetchone()
        return row[0] if row else None

    lo = arrival(rng.start_seq) if rng.start_seq > 0 else None
    hi = arrival(rng.end_seq)
    if hi is not None and lo is not None and hi < lo:
        hi = lo  # a clock that ran backwards: nothing, rather than a window twice
    return lo, hi


def turned(conn: sqlite3.Connection, rng: Range, wait_days: int) -> list[tuple[str, str]]:
    """(series id, submitter's address) of the series that turned `wait_days`
    old in the range's window, by that moment; open or not."""
    lo, hi = window(conn, rng)
    if hi is None or wait_days <= 0:
        return []
    wait = wait_days * DAY
    low = lo - wait if lo is not None else -(2**62)
    candidates = [
        r[0]
        for r in conn.execute(
            """SELECT DISTINCT series_id FROM messages INDEXED BY messages_received
                WHERE received > ? AND received <= ? AND kind IN ('patch', 'cover')
                  AND series_id IS NOT NULL AND seq <= ?""",
            (low, hi - wait, rng.end_seq),
        )
    ]
    if not candidates:
        return []
    # A candidate's first message may be earlier still (it did not turn old
    # in this window then); the first one by archive position decides.
    found = []
    for series_id, seq, received, addr in conn.execute(
        """SELECT f.series_id, f.first, m.received, m.from_addr
             FROM (SELECT series_id, MIN(seq) AS first FROM messages
                    WHERE series_id IN (SELECT value FROM json_each(?))
                      AND kind IN ('patch', 'cover') GROUP BY series_id) f
             JOIN messages m ON m.seq = f.first""",
        (json.dumps(candidates),),
    ):
        if received is not None and low < received <= hi - wait:
            found.append((received, seq, series_id, addr))
    return [(series_id, addr) for _, _, series_id, addr in sorted(found)]


def posted(conn: sqlite3.Connection, series_ids: list[str], end_seq: int) -> dict[str, Posted]:
    """Each series as shown outside the range: the cover letter (not a
    duplicate copy) if the archive holds one by `end_seq`, else its
    lowest-numbered patch; with its patches and first posting date."""
    rows: dict[str, list[tuple]] = {}
    for row in conn.execute(
        """SELECT series_id, kind, counter, total, subject, from_name, from_addr,
                  message_id, is_dup, COALESCE(date, received), seq
             FROM messages INDEXED BY messages_series_patchy
            WHERE series_id IN (SELECT value FROM json_each(?))
              AND kind IN ('patch', 'cover') AND seq <= ?
            ORDER BY seq""",
        (json.dumps(sorted(set(series_ids))), end_seq),
    ):
        rows.setdefault(row[0], []).append(row)
    out = {}
    for series_id, members in rows.items():
        covers = [m for m in members if m[1] == "cover"]
        patches = [m for m in members if m[1] == "patch"]
        fresh_covers = [m for m in covers if not m[8]]
        fresh_patches = [m for m in patches if not m[8]]
        if fresh_covers or covers:
            shown = (fresh_covers or covers)[0]
        else:
            shown = min(fresh_patches or patches, key=lambda m: (m[2] or 1, m[10]))
        times = [m[9] for m in members if m[9] is not None]
        out[series_id] = Posted(
            series_id=series_id,
            subject=shown[4],
            name=shown[5],
            addr=shown[6],
            message_id=shown[7],
            posted=min(times) if times else None,
            # A copy adds nothing to k, which never exceeds n (as in the patch list).
            patches=min(
                len({m[2] or 1 for m in fresh_patches}),
                max((m[3] or 1 for m in members), default=1),
            ),
            total=max((m[3] or 1 for m in members), default=1),
            cover=bool(covers),
        )
    return out


def answered_by_others(
    conn: sqlite3.Connection, submitters: dict[str, str], end_seq: int
) -> set[str]:
    """The series (of `submitters`: id -> canonical key) with a reply up to
    `end_seq` from someone else."""
    out = set()
    for series_id, addr in conn.execute(
        """SELECT series_id, from_addr FROM messages INDEXED BY messages_series_replies
            WHERE series_id IN (SELECT value FROM json_each(?))
              AND kind = 'reply' AND seq <= ?""",
        (json.dumps(sorted(submitters)), end_seq),
    ):
        if series_id not in out and canonical(addr) != submitters[series_id]:
            out.add(series_id)
    return out


def open_series(conn: sqlite3.Connection, rng: Range, wait_days: int) -> list[Posted]:
    """The series that turned `wait_days` old in the range and are still open
    at its end but for "applied", which build.py decides (its rule is the
    patch list's); in the order they turned old."""
    # The cheap tests first: most series are answered within the week.
    submitters = {series_id: canonical(addr) for series_id, addr in turned(conn, rng, wait_days)}
    others = answered_by_others(conn, submitters, rng.end_seq) if submitters else set()
    order = [s for s in submitters if s not in others]
    if not order:
        return []
    # A resent copy is a member of its original's series (bot/store/index.py),
    # so every series here has a posting of its own to show.
    shown = posted(conn, order, rng.end_seq)
    order = [s for s in order if s in shown]
    if not order:
        return []
    relation = versions.relations(conn, {s: shown[s].message_id for s in order}, rng.end_seq)
    return [shown[s] for s in order if not relation.get(s, "").startswith("superseded")]
