"""Periodic digests: each schedule picks up where its last digest ended.

A run takes the range from the schedule's last end to the archive head,
renders the digest once, queues it for the schedule's subscribers and moves
the schedule's end, all in one transaction: consecutive digests never overlap
and never leave a gap, across restarts too, because the state is in the
index. A new schedule starts at the archive head when it is first seen.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import jinja2

from bot.config import Config
from bot.delivery import subscribers
from bot.delivery.cron import trigger
from bot.delivery.outbox import Outbox
from bot.digest import build as digestmod
from bot.digest import ranges

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Run:
    """What one run did."""

    schedule: str
    digest_id: int | None
    recipients: int
    messages: int
    digest_ids: tuple[int, ...] = ()
    """One digest per style its subscribers read (digest_id is the first)."""


def ensure(conn: sqlite3.Connection, name: str) -> bool:
    """Start a schedule at the archive head if it has no state yet.

    Returns True when the schedule was new (it cannot have missed a run).
    """
    rng = ranges.everything(conn)
    cur = conn.execute(
        "INSERT OR IGNORE INTO schedules (name, end_seq, end_id, last_run) VALUES (?, ?, ?, ?)",
        (name, rng.end_seq, rng.end_id, int(time.time())),
    )
    return cur.rowcount > 0


def missed(conn: sqlite3.Connection, name: str, expression: str) -> bool:
    """True when a run of `name` was due while the daemon was down."""
    row = conn.execute("SELECT last_run FROM schedules WHERE name = ?", (name,)).fetchone()
    if row is None:
        return False
    last = datetime.fromtimestamp(row[0], UTC)
    due = trigger(expression).get_next_fire_time(None, last)
    return due is not None and due <= datetime.now(UTC)


def run(
    conn: sqlite3.Connection,
    config: Config,
    outbox: Outbox,
    env: jinja2.Environment,
    name: str,
) -> Run:
    """Render and queue the next digest of schedule `name`."""
    with conn:
        ensure(conn, name)
        start_seq = conn.execute(
            "SELECT end_seq FROM schedules WHERE name = ?", (name,)
        ).fetchone()[0]
        rng = ranges.after(conn, start_seq)
        groups = subscribers.active_by_style(conn, name, config.digest.style)
        readers = [address for group in groups.values() for address in group]
        digest_ids: list[int] = []
        count = rng.end_seq - rng.start_seq
        if readers and (not rng.empty or config.schedule.send_empty):
            # Rendered once per style, however many subscribers read it.
            for style in sorted(groups):
                d = digestmod.build(
                    conn,
                    rng,
                    config.list.title,
                    config.digest.top,
                    config.digest.abbrev,
                    style=style,
                    archive_url=config.list.archive_url,
                )
                body = digestmod.render(d, env)
                digest_id = conn.execute(
                    "INSERT INTO digests (schedule, start_id, end_id, subject, body, created)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (name, rng.start_id, rng.end_id, d.subject, body, int(time.time())),
                ).lastrowid
                outbox.enqueue_digest(digest_id, groups[style])
                digest_ids.append(digest_id)
        digest_id = digest_ids[0] if digest_ids else None
        conn.execute(
            "UPDATE schedules SET end_seq = ?, end_id = ?, last_run = ? WHERE name = ?",
            (rng.end_seq, rng.end_id, int(time.time()), name),
        )
    log.info(
        "%s digest: %d messages, %s",
        name,
        count,
        f"queued for {len(readers)} subscribers" if digest_id else "nothing sent",
    )
    return Run(name, digest_id, len(readers) if digest_id else 0, count, tuple(digest_ids))
