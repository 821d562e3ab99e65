"""`kvm-digest outbox`: what is queued or failed, and putting failed mail right.

An operator who fixed a relay or an address needs to send failed mail again
(retry) or drop it for good (purge); both touch only failed rows, so mail in
flight or already sent is never resent or lost by mistake.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True)
class Row:
    id: int
    kind: str
    recipient: str
    status: str
    attempts: int
    created: int
    next_attempt: int
    last_error: str

    def line(self) -> str:
        """One tab-separated line: id, kind, recipient, status, times, error."""
        when = (
            f"queued {_time(self.created)}, next try {_time(self.next_attempt)}"
            if self.status == "queued"
            else f"queued {_time(self.created)}, failed"
        )
        return (
            f"{self.id}\t{self.kind}\t{self.recipient}\t{self.status}\t{when}\t"
            f"{self.attempts} attempts\t{self.last_error}"
        )


def _time(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M UTC")


def listing(conn: sqlite3.Connection, failed_only: bool) -> list[Row]:
    """Queued and failed mail (or failed only), oldest first."""
    statuses = ("failed",) if failed_only else ("queued", "failed")
    marks = ", ".join("?" for _ in statuses)
    rows = conn.execute(
        "SELECT id, kind, recipient, status, attempts, created, next_attempt, last_error"
        f" FROM outbox WHERE status IN ({marks}) ORDER BY id",
        statuses,
    ).fetchall()
    return [Row(*row) for row in rows]


def _failed_where(ids: list[int]) -> tuple[str, list[int]]:
    if not ids:
        return "status = 'failed'", []
    return f"status = 'failed' AND id IN ({', '.join('?' for _ in ids)})", ids


def retry(conn: sqlite3.Connection, ids: list[int], now: int | None = None) -> int:
    """Queue failed mail (these ids, or all) again, due now; return how many."""
    where, params = _failed_where(ids)
    with conn:
        return conn.execute(
            f"UPDATE outbox SET status = 'queued', attempts = 0, next_attempt = ? WHERE {where}",
            [int(now if now is not None else time.time()), *params],
        ).rowcount


def purge(conn: sqlite3.Connection, ids: list[int]) -> int:
    """Delete failed mail (these ids, or all) for good; return how many."""
    where, params = _failed_where(ids)
    with conn:
        return conn.execute(f"DELETE FROM outbox WHERE {where}", params).rowcount
