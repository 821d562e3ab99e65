"""Periodic digests: each schedule picks up where its last digest ended.

A run takes the range from the schedule's last end to the archive head,
renders the digest once, queues it for the schedule's subscribers and moves
the schedule's end, all in one transaction: consecutive digests never overlap
and never leave a gap, across restarts too, because the state is in the
index. A new schedule starts at the archive head when it is first seen.

Subscribers with a topic get the digest filtered by it; subscribers of one
schedule with the same topic share one rendering, and a topic that matched
nothing in the range sends nothing (unless `send_empty`).
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
from bot.digest import personal, ranges
from bot.digest.query import QueryError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Run:
    """What one run did."""

    schedule: str
    digest_id: int | None
    recipients: int
    messages: int
    digests: tuple[int, ...] = ()
    """Every digest queued, one per (topic, style) group (digest_id is the first)."""


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


def missed(conn: sqlite3.Connection, name: str, expression: str, seconds: bool = False) -> bool:
    """True when a run of `name` was due while the daemon was down."""
    row = conn.execute("SELECT last_run FROM schedules WHERE name = ?", (name,)).fetchone()
    if row is None:
        return False
    last = datetime.fromtimestamp(row[0], UTC)
    due = trigger(expression, seconds).get_next_fire_time(None, last)
    return due is not None and due <= datetime.now(UTC)


class ForYou:
    """The "For you" sections of one run: the range's pool of candidates is
    computed once, the first time a reader needs it (reusing the unfiltered
    full digest when the run builds one), then each personal reader's section
    is a few look-ups and a small template (bot/digest/personal.py)."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        config: Config,
        env: jinja2.Environment,
        rng: ranges.Range,
        schedule: str,
    ) -> None:
        self.conn, self.config, self.env, self.rng = conn, config, env, rng
        self.readers = subscribers.personal_readers(conn, schedule, config.digest.personal)
        self.pool: personal.Pool | None = None

    def sections(self, readers: list[str], full: digestmod.Digest | None) -> dict[str, str]:
        """Address -> section, for those of `readers` who have one. `full` is
        the range's unfiltered full digest, if the caller has it."""
        wanted = [r for r in readers if r in self.readers]
        if not wanted or self.rng.empty:
            return {}
        if self.pool is None:
            self.pool = personal.pool(self.conn, self.rng, self.config.list.archive_url, full)
        return personal.sections(self.pool, wanted, self.env)


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
        count = rng.end_seq - rng.start_seq
        queued: list[int] = []
        recipients = 0
        send_empty = config.schedule.send_empty
        # Rendered once per (topic, style), however many subscribers read it.
        groups = subscribers.groups(conn, name, config.digest.style)
        for_you = ForYou(conn, config, env, rng, name)
        for (topic, style), readers in groups.items():
            if rng.empty and not send_empty:
                break
            try:
                d = digestmod.build(
                    conn,
                    rng,
                    config.list.title,
                    config.digest.top,
                    config.digest.abbrev,
                    query=topic or None,
                    style=style,
                    archive_url=config.list.archive_url,
                    review_wait_days=config.digest.review_wait_days,
                )
            except QueryError as err:
                # Stored topics were checked when set; one that no longer
                # parses must not stop everyone else's digest.
                log.warning("%s digest: skipping topic %r: %s", name, topic, err)
                continue
            own = for_you.sections(readers, d if not topic and style == "full" else None)
            if topic and d.messages == 0 and not d.waiting and not send_empty:
                # Nothing on the topic: only readers with something for them.
                readers = [r for r in readers if r in own]
                if not readers:
                    continue
            body = digestmod.render(d, env)
            digest_id = conn.execute(
                "INSERT INTO digests (schedule, start_id, end_id, subject, body, created,"
                " topic) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (name, rng.start_id, rng.end_id, d.subject, body, int(time.time()), topic),
            ).lastrowid
            outbox.enqueue_digest(digest_id, readers, own)
            queued.append(digest_id)
            recipients += len(readers)
        conn.execute(
            "UPDATE schedules SET end_seq = ?, end_id = ?, last_run = ? WHERE name = ?",
            (rng.end_seq, rng.end_id, int(time.time()), name),
        )
    log.info(
        "%s digest: %d messages, %s",
        name,
        count,
        f"{len(queued)} digests queued for {recipients} subscribers" if queued else "nothing sent",
    )
    return Run(name, queued[0] if queued else None, recipients, count, tuple(queued))
