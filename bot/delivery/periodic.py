"""Periodic digests: each schedule picks up where its last digest ended.

A run takes the range from the schedule's last end to the archive head,
renders the digest once, queues it for the schedule's subscribers and moves
the schedule's end, all in one transaction: consecutive digests never overlap
and never leave a gap, across restarts too, because the state is in the
index. A new schedule starts at the archive head when it is first seen.

The end is held as a place that survives a rebuild of the index
(`ranges.Place`: the commit, its message, its arrival), found again at
every run, so a reindex or a rewritten followed inbox neither skips mail
nor sends it twice (at worst, a place whose message was purged makes the
next digest repeat a message or two).

Subscribers with a topic get the digest filtered by it; subscribers of one
schedule with the same topic share one rendering, and a topic that matched
nothing in the range sends nothing (unless `send_empty`). With a web
endpoint, the whole list's digest in the configured style is rendered even
when nobody reads it by mail: it is an entry of the Atom feed.

Rendering is the slow part (2,000 topics are 2,000 digests), so the daemon
does it in a worker process, on a connection of its own whose read
transaction is one consistent snapshot (`prepare`); what it made is then
written in one transaction on the event loop (`commit`). One group
(topic and style) that cannot be rendered is logged and skipped; the
others go out and the schedule moves on.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import jinja2

from bot.config import Config
from bot.delivery import subscribers
from bot.delivery.cron import trigger
from bot.delivery.outbox import Outbox
from bot.digest import build as digestmod
from bot.digest import personal, ranges
from bot.digest.query import QueryError
from bot.digest.ranges import Place, Range
from bot.errors import DigestError
from bot.store.index import rebuilding
from bot.workers import spawned_pool

log = logging.getLogger(__name__)

READ_TIMEOUT = 5
"""Seconds the worker's read connection may wait for a lock (WAL readers rarely do)."""


@dataclass(frozen=True)
class Run:
    """What one run did."""

    schedule: str
    digest_id: int | None
    recipients: int
    messages: int
    digests: tuple[int, ...] = ()
    """Every digest queued, one per (topic, style) group (digest_id is the first)."""


@dataclass(frozen=True)
class Rendered:
    """One group's digest, ready to store."""

    topic: str
    style: str
    subject: str
    body: str
    sections: Mapping[str, str] = field(default_factory=dict)
    """Its personal readers' "For you" sections, by address."""
    only_personal: bool = False
    """It matched nothing: only readers with a section of their own get it."""


@dataclass(frozen=True)
class Plan:
    """What a run will write, made from one snapshot of the index."""

    schedule: str
    since: Place
    """The schedule's place when the plan was made (nobody may move it meanwhile)."""
    rng: Range
    end: Place
    digests: tuple[Rendered, ...]
    default_style: str
    """`[digest] style`, for readers who chose none."""
    feed: bool = False
    """The whole list's digest is kept even without readers (the web feed's entry)."""


class Rebuilding(DigestError):
    """The index is being rebuilt: no digest until it is at the archive's head."""


def exists(conn: sqlite3.Connection, name: str) -> bool:
    """True when the schedule has a place already (it has run, or been started)."""
    row = conn.execute("SELECT 1 FROM schedules WHERE name = ?", (name,)).fetchone()
    return row is not None


def ensure(conn: sqlite3.Connection, name: str) -> bool:
    """Start a schedule at the archive head if it has no state yet.

    Returns True when the schedule was new (it cannot have missed a run).
    """
    head = ranges.place_at(conn, ranges.everything(conn).end_seq)
    cur = conn.execute(
        "INSERT OR IGNORE INTO schedules (name, end_seq, end_id, last_run) VALUES (?, ?, ?, ?)",
        (name, head.seq, head.commit_id, int(time.time())),
    )
    if cur.rowcount > 0:
        _move(conn, name, head)
    return cur.rowcount > 0


def missed(conn: sqlite3.Connection, name: str, expression: str, seconds: bool = False) -> bool:
    """True when a run of `name` was due while the daemon was down."""
    row = conn.execute("SELECT last_run FROM schedules WHERE name = ?", (name,)).fetchone()
    if row is None:
        return False
    last = datetime.fromtimestamp(row[0], UTC)
    due = trigger(expression, seconds).get_next_fire_time(None, last)
    return due is not None and due <= datetime.now(UTC)


def place(conn: sqlite3.Connection, name: str) -> Place:
    """Where the schedule's last digest ended, as stored."""
    row = conn.execute(
        "SELECT end_id, end_message_id, end_hash, end_received, end_seq FROM schedules"
        " WHERE name = ?",
        (name,),
    ).fetchone()
    return Place(*row)


def move(conn: sqlite3.Connection, name: str, seq: int) -> None:
    """Put a schedule's place at the message at position `seq` (0: before the first).

    Its next digest starts after that message (`send-now` then sends it);
    in the caller's transaction.
    """
    _move(conn, name, ranges.place_at(conn, seq))


def _move(conn: sqlite3.Connection, name: str, to: Place) -> None:
    conn.execute(
        "UPDATE schedules SET end_seq = ?, end_id = ?, end_message_id = ?, end_hash = ?,"
        " end_received = ? WHERE name = ?",
        (to.seq, to.commit_id, to.message_id, to.content_hash, to.received, name),
    )


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
    """Render and queue the next digest of schedule `name`, on one connection."""
    with conn:
        ensure(conn, name)
    return commit(conn, prepare(conn, config, env, name), outbox)


async def run_off_loop(
    index_path: Path,
    conn: sqlite3.Connection,
    config: Config,
    outbox: Outbox,
    env: jinja2.Environment,
    name: str,
) -> Run:
    """As run(), with the rendering in a process of its own: the event loop goes on.

    Rendering is pure Python (Jinja2, the digest's look-ups): in a thread
    it would hold the GIL the loop needs, and LMTP's greetings waited up to
    a quarter of a second for it with 2,000 topics. A worker process
    (spawned: forking a process with threads is unsafe) makes the plan and
    sends it back, its log lines going to the daemon's stderr; `env` is
    made again there from the same templates (`env` serves a run with
    nothing new, made in a thread). `conn` is the loop's
    connection: it only makes the two short writes before and after, never
    a transaction held across the wait.
    """
    with conn:
        ensure(conn, name)
    if (
        not config.schedule.send_empty
        and ranges.after(conn, ranges.locate(conn, place(conn, name))).empty
    ):
        # Nothing new: nothing to render, no process to start (a snapshot
        # taken in the thread still decides, should mail arrive meanwhile).
        plan = await asyncio.to_thread(prepare_at, index_path, config, env, name)
        return commit(conn, plan, outbox)
    level = logging.getLogger().getEffectiveLevel()
    loop = asyncio.get_running_loop()
    pool = spawned_pool(1)
    try:
        plan = await loop.run_in_executor(pool, prepare_elsewhere, index_path, config, name, level)
    finally:
        # Not waited for on the loop: the worker ends once its plan is sent
        # (or, on a stop mid-run, once it is made, as a thread would).
        pool.shutdown(wait=False)
    return commit(conn, plan, outbox)


def prepare_elsewhere(index_path: Path, config: Config, name: str, level: int) -> Plan:
    """prepare_at() in a worker process: logging as the daemon's, the same templates."""
    from bot import logsetup

    logsetup.configure(max(0, (logging.WARNING - level) // 10))
    env = digestmod.environment(config.digest.templates or None)
    return prepare_at(index_path, config, env, name)


def prepare_at(index_path: Path, config: Config, env: jinja2.Environment, name: str) -> Plan:
    """prepare() on a read-only connection of its own, in one read transaction."""
    conn = sqlite3.connect(index_path, timeout=READ_TIMEOUT, isolation_level=None)
    try:
        conn.execute("PRAGMA query_only = ON")
        conn.execute("BEGIN")  # one snapshot: the range and every group agree
        return prepare(conn, config, env, name)
    finally:
        conn.close()


def prepare(conn: sqlite3.Connection, config: Config, env: jinja2.Environment, name: str) -> Plan:
    """Every digest the next run of `name` sends, rendered; reads only."""
    if rebuilding(conn):
        raise Rebuilding(
            f"the index is being rebuilt from the archive; the {name} digest waits until "
            "it is done (`kvm-digest health` shows the intake), then covers everything"
        )
    since = place(conn, name)
    rng = ranges.after(conn, ranges.locate(conn, since))
    end = ranges.place_at(conn, rng.end_seq)
    made: list[Rendered] = []
    if not rng.empty or config.schedule.send_empty:
        # Rendered once per (topic, style), however many subscribers read it.
        groups = subscribers.groups(conn, name, config.digest.style)
        if config.web.url:
            # The web feed shows every digest of the whole list, read or not.
            groups.setdefault(("", config.digest.style), [])
        log.debug("%s digest: rendering %d digests of %s", name, len(groups), rng)
        for_you = ForYou(conn, config, env, rng, name)
        for (topic, style), readers in groups.items():
            try:
                rendered = _render(conn, config, env, rng, topic, style, readers, for_you)
            except QueryError as err:
                # Stored topics were checked when set; one that no longer
                # parses must not stop everyone else's digest.
                log.warning("%s digest: skipping topic %r: %s", name, topic, err)
                continue
            except Exception:
                log.exception(
                    "%s digest: could not make the %s digest of topic %r; its readers"
                    " get the next one",
                    name,
                    style,
                    topic,
                )
                continue
            if rendered is not None:
                made.append(rendered)
    return Plan(name, since, rng, end, tuple(made), config.digest.style, bool(config.web.url))


def _render(
    conn: sqlite3.Connection,
    config: Config,
    env: jinja2.Environment,
    rng: Range,
    topic: str,
    style: str,
    readers: list[str],
    for_you: ForYou,
) -> Rendered | None:
    """One group's digest, with its personal readers' "For you" sections.

    None: a topic that matched nothing (and had nothing waiting), for
    readers none of whom has a section of their own; it is not sent.
    """
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
    try:
        own = for_you.sections(readers, d if not topic and style == "full" else None)
    except Exception:
        # One reader's section must not cost the group its digest: they get
        # the digest everyone gets, without it.
        log.exception("%s digest: no 'For you' sections this time", style)
        own = {}
    nothing = bool(topic) and d.messages == 0 and not d.waiting and not config.schedule.send_empty
    if nothing and not own:
        return None
    return Rendered(topic, style, d.subject, digestmod.render(d, env), own, only_personal=nothing)


def commit(conn: sqlite3.Connection, plan: Plan, outbox: Outbox) -> Run:
    """Store a plan's digests, queue them and move the schedule, in one transaction.

    Readers are read again here: who unsubscribed while the plan was made
    gets nothing. A place moved meanwhile (`send-now` in another process)
    means the range was sent already: the plan is dropped.
    """
    name, rng = plan.schedule, plan.rng
    queued: list[int] = []
    recipients = 0
    with conn:
        if place(conn, name).commit_id != plan.since.commit_id:
            log.info("%s digest: another run moved the schedule meanwhile; not sending", name)
            return Run(name, None, 0, 0)
        readers = subscribers.groups(conn, name, plan.default_style)
        now = int(time.time())
        for r in plan.digests:
            group = readers.get((r.topic, r.style), [])
            if r.only_personal:
                # Nothing on the topic: only readers with something for them.
                group = [a for a in group if a in r.sections]
            if not group and not (plan.feed and (r.topic, r.style) == ("", plan.default_style)):
                continue
            digest_id = conn.execute(
                "INSERT INTO digests (schedule, start_id, end_id, subject, body, created,"
                " topic, style) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (name, rng.start_id, rng.end_id, r.subject, r.body, now, r.topic, r.style),
            ).lastrowid
            outbox.enqueue_digest(digest_id, group, r.sections)
            queued.append(digest_id)
            recipients += len(group)
        if not rng.empty or not plan.since.message_id:
            # An empty range keeps the place as it was stored: found again
            # later (after a rebuild still in progress, say), it may be
            # more exact than this snapshot's head. Only a place that names
            # no message (one stored by an older version) is replaced.
            _move(conn, name, plan.end)
        conn.execute("UPDATE schedules SET last_run = ? WHERE name = ?", (now, name))
    count = rng.end_seq - rng.start_seq
    log.info(
        "%s digest: %d messages, %s",
        name,
        count,
        f"{len(queued)} digests queued for {recipients} subscribers" if queued else "nothing sent",
    )
    return Run(name, queued[0] if queued else None, recipients, count, tuple(queued))
