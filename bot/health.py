"""Lasting problems of the running service: said once when they start, once when they end.

A relay outage, a full disk or a dead intake is one problem however many
mails or retries it touches: the daemon logs it when it starts (one line at
ERROR or WARNING), counts what it touches meanwhile (at DEBUG), and logs it
once more when it ends, with the count and how long it lasted. So a
10,000-reader digest during a relay outage writes two lines, not 10,000.

The same state is kept in the index's `health` table, so `kvm-digest
health`, a separate process, can say what the daemon knows. It is written
through a connection of its own, outside whatever transaction the caller
is in, and best-effort: the problem being recorded may be the full disk
itself, and a record that cannot be written must never add a failure.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("kvm-digest.health")

CONFIRM_SECONDS = 60
"""A working check's `updated` stamp is refreshed at most this often."""


@dataclass
class Problem:
    """One check's state, as the daemon last knew it."""

    check: str
    ok: bool
    since: float
    """When this state (working or failing) began."""
    updated: float
    """When it was last confirmed."""
    count: int = 0
    """Failures since `since` (0 while working)."""
    detail: str = ""


class Problems:
    """The daemon's lasting problems, by check name ("relay", "intake", ...)."""

    def __init__(self, index_path: Path | None = None) -> None:
        self.path = index_path
        self.state: dict[str, Problem] = {}
        self._conn: sqlite3.Connection | None = None

    def failing(self, check: str, detail: str, level: int = logging.ERROR) -> bool:
        """`check` failed again; logged only when the problem starts. True when new."""
        now = time.time()
        current = self.state.get(check)
        if current is not None and not current.ok:
            current.count += 1
            current.updated = now
            current.detail = detail
            log.debug("%s still failing (%d times): %s", check, current.count, detail)
            self._save(current)
            return False
        problem = Problem(check, False, now, now, 1, detail)
        self.state[check] = problem
        log.log(level, "%s: %s (said once; the end of the problem is logged too)", check, detail)
        self._save(problem)
        return True

    def working(self, check: str) -> None:
        """`check` succeeded: a problem it had ends, logged once with its count."""
        now = time.time()
        current = self.state.get(check)
        if current is not None and current.ok:
            if now - current.updated >= CONFIRM_SECONDS:
                current.updated = now
                self._save(current)
            return
        if current is not None:
            log.info(
                "%s works again, after %d failures in %.0f s (last: %s)",
                check,
                current.count,
                now - current.since,
                current.detail,
            )
        problem = Problem(check, True, now, now)
        self.state[check] = problem
        self._save(problem)

    def is_failing(self, check: str) -> bool:
        current = self.state.get(check)
        return current is not None and not current.ok

    def _save(self, p: Problem) -> None:
        if self.path is None:
            return
        try:
            if self._conn is None:
                self._conn = sqlite3.connect(self.path, timeout=1, isolation_level=None)
            self._conn.execute(
                "INSERT INTO health (check_name, ok, since, updated, count, detail)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(check_name) DO UPDATE SET"
                " ok = excluded.ok, since = excluded.since, updated = excluded.updated,"
                " count = excluded.count, detail = excluded.detail",
                (p.check, int(p.ok), int(p.since), int(p.updated), p.count, p.detail[:500]),
            )
        except sqlite3.Error as err:
            # The problem may be the disk itself; the in-memory state still holds.
            log.debug("cannot record the health of %s: %s", p.check, err)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def recorded(conn: sqlite3.Connection) -> list[Problem]:
    """What the daemon last recorded, for `kvm-digest health`."""
    rows = conn.execute(
        "SELECT check_name, ok, since, updated, count, detail FROM health ORDER BY check_name"
    ).fetchall()
    return [
        Problem(c, bool(ok), since, updated, count, detail)
        for c, ok, since, updated, count, detail in rows
    ]
