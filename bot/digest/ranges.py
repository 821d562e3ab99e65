"""Digest ranges: `A..B` commit ids (as `git log A..B`), date windows, all.

`A` is the last commit before the range and is excluded; `B` is the last
commit in it. Ids may be abbreviated to 7 or more hex digits, as digest
headers print them. The all-zero id stands for "before the first message",
as git prints it for a ref that did not exist; in a mirror cloned from a day
on (shallow), "before the first message" is the commit lore has before it.
"""

from __future__ import annotations

import re
import sqlite3
from datetime import UTC, datetime

from bot.errors import RangeError
from bot.record import Record

NULL_ID = "0" * 40
MIN_DIGITS = 7
_HEX = re.compile(r"^[0-9a-f]{7,40}$")
_SPLIT = re.compile(r"\s*\.\.\s*|\s+")


class Range(Record):
    """Archive positions (start excluded, end included) and their commit ids."""

    start_seq: int
    end_seq: int
    start_id: str
    end_id: str

    @property
    def empty(self) -> bool:
        return self.end_seq <= self.start_seq

    def abbrev(self, digits: int) -> tuple[str, str]:
        return self.start_id[:digits], self.end_id[:digits]


def split_range(text: str) -> tuple[str, str]:
    """Split "A..B" or "A B" into its two ids."""
    parts = [p for p in _SPLIT.split(text.strip()) if p]
    if len(parts) != 2:
        raise RangeError(
            f"{text.strip()!r} is not a range; write it as A..B with two commit "
            "ids from digest headers, e.g. d62e82362..caab494ce"
        )
    return parts[0], parts[1]


def resolve_id(conn: sqlite3.Connection, text: str) -> tuple[int, str]:
    """The archive position and full commit id an abbreviated id names."""
    prefix = text.strip().lower()
    if not _HEX.match(prefix):
        raise RangeError(
            f"{text!r} is not a commit id; use {MIN_DIGITS} to 40 hex digits as "
            "printed in digest headers"
        )
    if set(prefix) == {"0"}:
        return 0, NULL_ID
    rows = conn.execute(
        "SELECT seq, commit_id FROM messages WHERE commit_id >= ? AND commit_id < ? "
        "ORDER BY commit_id LIMIT 2",
        (prefix, prefix + "g"),
    ).fetchall()
    if not rows:
        base = _base(conn)
        if base != NULL_ID and base.startswith(prefix):
            return 0, base  # the commit before the first one a shallow mirror holds
        raise RangeError(
            f"no message in the archive has a commit id starting with {prefix}; "
            "copy the ids from a digest header (From A to B)"
        )
    if len(rows) > 1:
        raise RangeError(f"commit id {prefix} is ambiguous; give more digits")
    return rows[0][0], rows[0][1]


def by_ids(conn: sqlite3.Connection, start: str, end: str) -> Range:
    """The range A..B; A must not come after B in the archive."""
    start_seq, start_id = resolve_id(conn, start)
    end_seq, end_id = resolve_id(conn, end)
    if start_seq > end_seq:
        raise RangeError(
            f"the range start {start} comes after its end {end} in the archive; "
            f"swap them ({end}..{start})"
        )
    return Range(start_seq, end_seq, start_id, end_id)


def parse_range(conn: sqlite3.Connection, text: str) -> Range:
    return by_ids(conn, *split_range(text))


def parse_when(text: str) -> int:
    """Epoch seconds for an ISO date or date-time; naive times are UTC."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise RangeError(
            f"{text!r} is not a date; write it as YYYY-MM-DD or YYYY-MM-DDTHH:MM"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp())


_SPAN = re.compile(r"([1-9][0-9]{0,5})([hdw])")
_SPAN_SECONDS = {"h": 3600, "d": 86400, "w": 7 * 86400}


def parse_span(text: str) -> int:
    """Seconds in a relative window such as `7d`, `24h` or `2w` (digest --last)."""
    found = _SPAN.fullmatch(text.strip().lower())
    if found is None:
        raise RangeError(
            f"{text!r} is not a window; write a number and h, d or w, e.g. 24h, 7d or 2w"
        )
    return int(found.group(1)) * _SPAN_SECONDS[found.group(2)]


def _id_at(conn: sqlite3.Connection, seq: int) -> str:
    """The commit at a position, or at the nearest one before it."""
    if seq <= 0:
        return _base(conn)
    row = conn.execute(
        "SELECT commit_id FROM messages WHERE seq <= ? ORDER BY seq DESC LIMIT 1", (seq,)
    ).fetchone()
    return row[0] if row else _base(conn)


def by_time(conn: sqlite3.Connection, since: int, until: int | None = None) -> Range:
    """The archive range from the first to the last message received in a window.

    Arrival time is the list server's Received stamp (the Date header when
    there is none): it follows archive order far better than senders' clocks.
    """
    if until is not None and until <= since:
        raise RangeError("the --until date must come after the --since date")
    row = conn.execute(
        "SELECT MIN(seq), MAX(seq) FROM messages WHERE received >= ? AND received < ?",
        (since, until if until is not None else 2**62),
    ).fetchone()
    if row[0] is None:
        first, last = conn.execute("SELECT MIN(received), MAX(received) FROM messages").fetchone()
        held = (
            "the archive is empty"
            if first is None
            else f"the archive holds mail from {_day(first)} to {_day(last)}"
        )
        raise RangeError(f"no message arrived in that time window; {held}")
    lo, hi = row
    return Range(lo - 1, hi, _id_at(conn, lo - 1), _id_at(conn, hi))


def after(conn: sqlite3.Connection, start_seq: int) -> Range:
    """From just after `start_seq` to the newest message (periodic digests)."""
    end = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM messages").fetchone()[0]
    start_seq = min(max(start_seq, 0), end)
    return Range(start_seq, end, _id_at(conn, start_seq), _id_at(conn, end))


class Place(Record):
    """A place in the archive, held so that it survives any rewrite.

    Positions (`seq`) are renumbered whenever the index is rebuilt: by
    `reindex`, or after a followed inbox rewrote its history
    (public-inbox-purge, -edit). The commit id survives a reindex; the
    message it holds (Message-ID and content) survives a re-made commit;
    its arrival time is the best clue left when the message itself was
    purged. `seq` is the position as last known, for places stored by
    versions that kept nothing else.
    """

    commit_id: str
    message_id: str = ""
    content_hash: str = ""
    received: int | None = None
    seq: int = 0


def place_at(conn: sqlite3.Connection, seq: int) -> Place:
    """The place of the message at a position (0: before the first message)."""
    row = conn.execute(
        "SELECT seq, commit_id, message_id, content_hash, received FROM messages"
        " WHERE seq <= ? ORDER BY seq DESC LIMIT 1",
        (seq,),
    ).fetchone()
    if seq <= 0 or row is None:
        return Place(NULL_ID)
    found, commit_id, message_id, content_hash, received = row
    return Place(commit_id, message_id, content_hash, received, found)


def locate(conn: sqlite3.Connection, place: Place) -> int:
    """The position of a place in the index as it is now; never fails.

    The commit, else the same message (its first copy), else the message
    before the first one that arrived at or after the place's arrival time:
    nearer the start rather than past it, so a place found again this way
    can make a digest repeat a message, never skip one.
    """
    if place.commit_id == NULL_ID:
        return 0
    row = conn.execute("SELECT seq FROM messages WHERE commit_id = ?", (place.commit_id,))
    if (found := row.fetchone()) is not None:
        return found[0]
    if place.message_id:
        (seq,) = conn.execute(
            "SELECT MIN(seq) FROM messages WHERE message_id = ? AND content_hash = ?",
            (place.message_id, place.content_hash),
        ).fetchone()
        if seq is not None:
            return seq
    (head,) = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM messages").fetchone()
    if place.received is None:
        return min(max(place.seq, 0), head)
    (later,) = conn.execute(
        "SELECT MIN(seq) FROM messages WHERE received >= ?", (place.received,)
    ).fetchone()
    if later is None:
        return head  # everything there is arrived before the place
    (before,) = conn.execute(
        "SELECT COALESCE(MAX(seq), 0) FROM messages WHERE seq < ?", (later,)
    ).fetchone()
    return before


def everything(conn: sqlite3.Connection) -> Range:
    return after(conn, 0)


def _base(conn: sqlite3.Connection) -> str:
    """What "before the first message" is: 0000000, or for a shallow mirror the
    commit its history continues from (Index.catch_up records it)."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'base_commit'").fetchone()
    return row[0] if row else NULL_ID


def _day(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d")
