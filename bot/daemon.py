"""`kvm-digest run`: the whole bot in one asyncio process.

IMAP listener (list mail to the archive, command mail to the desk), command
server (LMTP/SMTP), command worker, digest scheduler (APScheduler), outbox
worker and housekeeping share one event loop, one index connection and the
data dir's writer lock. SIGTERM stops intake first, lets the message being
sent finish, closes the IMAP session and exits 0.

Every long-running task is supervised (bot/supervise.py): one that fails is
restarted with backoff; one that cannot be kept running stops the watchdog
and ends `run` with a non-zero exit, so systemd restarts the whole service.

The watchdog stops only for what a restart can fix: a task given up on (a
bug that a fresh process may not hit again; the supervisor's verdict) and a
stalled event loop (the pings come from it, so they stop by themselves).
What lies outside the process is no reason to restart it, and restarting
would not help: a relay that refuses, an IMAP server or lore that is down,
a full disk, wrong credentials. Those are lasting problems (bot/health.py):
logged when they start and when they end, recorded for `kvm-digest health`,
while everything else (commands, digests queued for later) goes on; a
restart loop would stop that too, and end with systemd giving up on the unit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import sqlite3
import threading
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from bot import redact, systemd
from bot.config import Config
from bot.delivery import cron, periodic
from bot.delivery.mail import Identity
from bot.delivery.outbox import Outbox
from bot.delivery.sender import Sender
from bot.desk.inbound import Desk
from bot.desk.lmtp import serve
from bot.digest.build import environment
from bot.digest.ranges import NULL_ID
from bot.errors import DigestError
from bot.health import Problems
from bot.intake import follow
from bot.intake.imap import Listener, Route
from bot.intake.importer import Importer
from bot.parse.message import ParsedMessage
from bot.store import damage, retention
from bot.store.archive import Archive, WriterLock
from bot.store.inbox import is_inbox, open_mirror
from bot.store.index import Index
from bot.supervise import Health, supervise

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEDULES = ("daily", "weekly")
CATCH_UP_BATCH = 200
"""Commits per transaction of the daemon's catch-up: the LMTP queue's writes wait at most one."""
RETRY_FIRST_SECONDS = 5.0
RETRY_MAX_SECONDS = 300.0
HOUSEKEEPING_SECONDS = 3600
ACCEPT_ERROR_LOG_SECONDS = 60


class Daemon:
    """Owns the parts; `run(stop)` until stop is set."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.env = environment(config.digest.templates or None)
        self.me = Identity.from_config(config, fallback=f"kvm-digest@{_hostname()}")
        self.health = Health()
        self.problems = Problems(config.index_path)
        self.indexed = asyncio.Event()
        """Set once intake's first catch-up ended: digests wait for it."""
        self.caught_up = False
        """A catch-up reached the archive's head: a new schedule may start there."""

    async def run(self, stop: asyncio.Event) -> None:
        config = self.config
        with WriterLock(config.data_dir, "run"):
            index = Index(config.index_path)
            try:
                if config.archive.follow and not is_inbox(config.archive_path):
                    # Nothing to serve digests from yet: a first fetch that
                    # fails means a wrong URL, said at once.
                    self._fetched(await starting(self._fetch()))
                elif not config.is_mirror:
                    Archive.create(config.archive_path)
                await self._serve(index, stop)
            finally:
                index.close()
                self.problems.close()

    async def _fetch(self) -> follow.Fetched:
        """Fetch the followed inbox; git runs in a thread, the loop goes on."""
        url = self.config.archive.follow
        bounds = follow.Bounds.of(self.config.archive)
        fetched = await asyncio.to_thread(
            follow.fetch, url, self.config.archive_path, bounds, self.config.archive.since
        )
        log.info("fetched %s: %s", redact.text(url), fetched)
        return fetched

    def _fetched(self, fetched: follow.Fetched) -> None:
        if fetched.problems:
            self.problems.failing("intake", "; ".join(fetched.problems))

    async def _catch_up(self, stop: asyncio.Event) -> int:
        """Index what is new in the archive, in a worker thread with its own connection.

        The event loop goes on answering LMTP and pinging the watchdog
        meanwhile; each CATCH_UP_BATCH commits are one short transaction,
        so the loop's own writes (the LMTP queue) never wait long for the
        lock. On stop, the worker ends after its current batch.
        """
        halt = threading.Event()
        job = asyncio.ensure_future(asyncio.to_thread(self._catch_up_in_thread, halt))
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({job, stopped}, return_when=asyncio.FIRST_COMPLETED)
            halt.set()
            return await job
        finally:
            halt.set()
            stopped.cancel()

    def _catch_up_in_thread(self, halt: threading.Event) -> int:
        config = self.config
        index = Index(config.index_path)
        try:
            archive = (
                open_mirror(config.archive_path)
                if config.is_mirror
                else Archive.open(config.archive_path, writable=True)
            )
            return index.catch_up(
                archive,
                max_size=config.import_.max_message_size,
                stop=halt.is_set,
                batch=CATCH_UP_BATCH,
                workers=config.import_.workers,
            )
        finally:
            index.close()

    async def _catch_up_reported(self, index: Index, stop: asyncio.Event) -> bool:
        """Catch up; a failure is the lasting problem "intake" (said once). True when done."""
        try:
            added = await self._catch_up(stop)
        except (DigestError, sqlite3.Error, OSError) as err:
            self.problems.failing("intake", intake_failure(self.config, err))
            return False
        finally:
            self.indexed.set()  # digests wait for the first catch-up, not for success
        self._caught_up(index)
        if added:
            log.info("indexed %d new messages", added)
        return True

    def _caught_up(self, index: Index) -> None:
        """The index reached the archive's head: schedules seen for the first
        time start there (not at the head of an index still catching up,
        whose first digest would hold the whole history)."""
        if self.caught_up:
            return
        self.caught_up = True
        with index.conn:
            started = [
                name
                for name in SCHEDULES
                if getattr(self.config.schedule, name) and periodic.ensure(index.conn, name)
            ]
        for name in started:
            # Where a new schedule's first digest begins: mail before it is in none.
            head = periodic.place(index.conn, name)
            after = "the archive's start" if head.commit_id == NULL_ID else head.commit_id[:12]
            log.info("the %s digest starts after %s", name, after)

    async def _intake(self, index: Index, desk: Desk, stop: asyncio.Event) -> None:
        """The supervised intake: catch the index up, then take new mail as it comes.

        A mirror (followed or fetched by someone else) is fetched and read
        every fetch_interval; our own archive is caught up (a crash between
        archive and index, a rebuild after an upgrade) before the IMAP
        listener starts, retried with backoff until it succeeds.
        """
        if self.config.is_mirror:
            await self._follow(index, stop)
            return
        delay = RETRY_FIRST_SECONDS
        while not await self._catch_up_reported(index, stop):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set():
                return
            delay = min(delay * 2, RETRY_MAX_SECONDS)
        self.problems.working("intake")
        if not self.config.imap.host:
            await stop.wait()
            return
        archive = Archive.create(self.config.archive_path)
        importer = Importer(archive, index, self.config.import_.max_message_size)
        routes = Route(self.config.list.id, self.config.list.address, self.config.commands.address)
        listener = Listener(
            self.config.imap,
            importer,
            routes,
            on_command=lambda raw, p: self._from_imap(desk, raw, p),
            problems=self.problems,
        )
        await listener.run(stop)

    async def _follow(self, index: Index, stop: asyncio.Event) -> None:
        """Fetch (or, for a mirror someone else fetches, re-read) on an interval.

        Each round's problems (an epoch that cannot be fetched, a bound
        reached, a full disk, a damaged archive) are one lasting problem,
        said once; the round after it is fixed says so. Digests meanwhile
        cover what has been indexed.
        """
        interval = self.config.archive.fetch_interval
        while not stop.is_set():
            problems = []
            if self.config.archive.follow:
                try:
                    problems += (await self._fetch()).problems
                except DigestError as err:
                    problems.append(str(err))
            if stop.is_set():
                return
            try:
                added = await self._catch_up(stop)
            except (DigestError, sqlite3.Error, OSError) as err:
                problems.append(intake_failure(self.config, err))
            else:
                self._caught_up(index)
                if added:
                    log.info("indexed %d new messages", added)
            finally:
                self.indexed.set()
            if problems:
                self.problems.failing("intake", "; ".join(problems))
            else:
                self.problems.working("intake")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    async def _serve(self, index: Index, stop: asyncio.Event) -> None:
        config = self.config
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(AcceptErrorThrottle())
        raise_fd_limit()
        outbox = Outbox(index.conn, self.me)
        desk = Desk(index.conn, config, outbox, self.env)
        sender = Sender(outbox, config.smtp, self.problems)
        intake_stop = asyncio.Event()  # set first on shutdown: no new work
        health = self.health

        def supervised(name: str, factory: Any, until: asyncio.Event) -> asyncio.Task:
            return asyncio.create_task(supervise(name, factory, until, health), name=name)

        tasks = [
            supervised("outbox", lambda: sender.run(stop), stop),
            supervised("commands", lambda: self._desk_worker(desk, intake_stop), intake_stop),
            supervised("housekeeping", lambda: self._housekeeping(index, intake_stop), intake_stop),
        ]
        if config.web.url:
            tasks.append(self._web(index, outbox, intake_stop, supervised))
        server = None
        if config.commands.address:
            host, _, port = config.commands.listen.rpartition(":")
            server = await serve(
                desk,
                host,
                int(port),
                config.commands.protocol,
                config.commands.max_size,
                config.commands,
            )
            log.info(
                "command server (%s) on %s",
                config.commands.protocol,
                config.commands.listen,
            )
        tasks.append(
            supervised("intake", lambda: self._intake(index, desk, intake_stop), intake_stop)
        )
        scheduler = self._scheduler(index, outbox)
        scheduler.start()
        systemd.notify("READY=1")
        log.info("kvm-digest is running")
        watchdog = asyncio.create_task(self._watchdog(stop))
        failed = asyncio.ensure_future(health.failed.wait())
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({failed, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            failed.cancel()
            stopped.cancel()
            systemd.notify("STOPPING=1")
            log.info("stopping")
            intake_stop.set()
            stop.set()
            if server is not None:
                server.close()
            scheduler.shutdown(wait=False)
            watchdog.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            log.info("stopped; outbox: %s", said_counts(outbox.counts()))
        if health.fatal:
            raise DigestError(health.fatal)

    def _web(
        self, index: Index, outbox: Outbox, stop: asyncio.Event, supervised: Any
    ) -> asyncio.Task:
        """The web endpoint (one-click unsubscribe, the feed) as a supervised task."""
        from bot.web import server  # aiohttp: only for a daemon that serves the web

        def make() -> Any:
            return server.application(index.conn, self.config, self.me, outbox)

        listen = self.config.web.listen

        async def endpoint() -> None:
            # A port that cannot be bound (taken, not allowed) is a lasting
            # problem of this part alone, said once and tried again: mail and
            # digests go on, and a restart of the whole daemon would not help.
            delay = RETRY_FIRST_SECONDS
            while not stop.is_set():
                try:
                    await server.serve(make, listen, stop, self.problems)
                except OSError as err:
                    self.problems.failing("web", f"cannot listen on {listen} ({err})")
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
                    delay = min(delay * 2, RETRY_MAX_SECONDS)

        return supervised("web", endpoint, stop)

    async def _housekeeping(self, index: Index, stop: asyncio.Event) -> None:
        """Purge handled state past its retention, at start and every hour."""
        data = self.config.data
        while not stop.is_set():
            counts = retention.purge(index.conn, data.retention_days, data.failed_retention_days)
            if any(counts.values()):
                log.info("purged old state: %s", counts)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), HOUSEKEEPING_SECONDS)

    def _scheduler(self, index: Index, outbox: Outbox) -> AsyncIOScheduler:
        scheduler = AsyncIOScheduler(timezone="UTC")
        for name in SCHEDULES:
            expression = getattr(self.config.schedule, name)
            if not expression:
                continue
            # Not started here: the index may not have caught up yet, and a
            # new schedule starts at the archive's head (see _digest_job).
            new = not periodic.exists(index.conn, name)
            scheduler.add_job(
                self._digest_job,
                cron.trigger(expression, self.config.schedule.seconds),
                args=(index, outbox, name),
                id=name,
                coalesce=True,
                max_instances=1,
                misfire_grace_time=3600,
            )
            if not new and periodic.missed(
                index.conn, name, expression, self.config.schedule.seconds
            ):
                # However many runs were missed, one digest covers them all.
                log.info(
                    "the %s digest was due while the daemon was down; sending it now",
                    name,
                )
                scheduler.add_job(self._digest_job, args=(index, outbox, name), id=f"{name}-missed")
        return scheduler

    async def _digest_job(self, index: Index, outbox: Outbox, name: str) -> None:
        """One periodic run: rendered in a worker process, stored on the loop.

        A coroutine, so APScheduler runs it on the event loop, where the
        index connection lives. It waits for intake's first catch-up (not a
        digest of an index half rebuilt). A run that fails (the index cannot
        be written, a bug) is said once while it lasts; the schedule stays
        where it was, and the next run covers the range.
        """
        await self.indexed.wait()
        check = f"digest {name}"  # one per schedule: a good daily run clears no weekly problem
        if not self.caught_up and not periodic.exists(index.conn, name):
            # Started at a head the index has not reached, its first digest
            # would hold everything after it: wait for a catch-up that does.
            log.info("the %s digest starts once the index has caught up", name)
            return
        try:
            await periodic.run_off_loop(index.path, index.conn, self.config, outbox, self.env, name)
        except periodic.Rebuilding as err:
            log.info("%s", err)
            return
        except (sqlite3.Error, OSError) as err:
            self.problems.failing(check, f"the {name} digest could not be made: {err}")
            return
        except Exception as err:
            log.exception("the %s digest could not be made", name)
            self.problems.failing(check, f"the {name} digest could not be made: {err!r}")
            return
        self.problems.working(check)

    async def _desk_worker(self, desk: Desk, stop: asyncio.Event) -> None:
        """Answer command mail as it comes, and deferred mail when it is due.

        The index that cannot be written (a full disk, a lock held too long,
        damage) is a lasting problem, "commands", said once: the mail stays
        queued, undone, and is answered once writes work again. A restart
        would not help, so it never stops the daemon.
        """
        delay = RETRY_FIRST_SECONDS
        while not stop.is_set():
            desk.pending.clear()
            try:
                await desk.process_off_loop()
            except sqlite3.DatabaseError as err:
                self.problems.failing("commands", desk_failure(self.config, err))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
                continue
            delay = RETRY_FIRST_SECONDS
            self.problems.working("commands")
            waiters = {
                asyncio.ensure_future(desk.pending.wait()),
                asyncio.ensure_future(stop.wait()),
            }
            # Deferred mail (over a limit) is due at a time of its own.
            due = desk.next_due()
            timeout = max(0.0, due - time.time()) + 0.01 if due is not None else None
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()

    def _from_imap(self, desk: Desk, raw: bytes, parsed: ParsedMessage) -> None:
        rcpt = next((r for r in parsed.recipients if desk.accepts(r)), self.me.address)
        desk.queue_fetched(raw, rcpt)  # the envelope sender is its Return-Path

    async def _watchdog(self, stop: asyncio.Event) -> None:
        interval = systemd.watchdog_interval()
        if interval is None:
            return
        while not stop.is_set() and self.health.ok:
            # Only a healthy daemon pings: a task that cannot be kept running
            # lets the watchdog expire, and systemd restarts the service.
            systemd.notify("WATCHDOG=1")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)


class AcceptErrorThrottle:
    """The loop's exception handler: accept() errors logged once a minute.

    When descriptors run out, asyncio reports every failed accept() with a
    traceback, once a second per listening socket (a 341 MB log in two
    minutes under a connection storm). One line a minute, with a count, says
    the same; everything else goes to the default handler.
    """

    def __init__(self) -> None:
        self.last = 0.0
        self.suppressed = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if "accept" not in str(context.get("message", "")):
            loop.default_exception_handler(context)
            return
        now = time.monotonic()
        if now - self.last < ACCEPT_ERROR_LOG_SECONDS:
            self.suppressed += 1
            return
        log.error(
            "cannot accept connections: %s (%d more such errors since the last report)",
            context.get("exception"),
            self.suppressed,
        )
        self.last, self.suppressed = now, 0


def intake_failure(config: Config, err: BaseException) -> str:
    """One sentence for a catch-up that failed: what is wrong, and that it heals."""
    if damage.is_damage(err):
        return damage.damaged_index(config.index_path, err)
    if isinstance(err, DigestError):
        return str(err)
    return (
        f"cannot index new mail into {config.index_path} ({err}); free some disk space or "
        "fix its permissions: intake resumes by itself, from where it stopped"
    )


EXTEND_SECONDS = 120
"""How much more start-up time each EXTEND_TIMEOUT_USEC asks of systemd."""


async def starting(work: Awaitable[T]) -> T:
    """Await start-up work that may outlast TimeoutStartSec (the first clone of a
    large inbox): while it runs, systemd is asked for more time every minute, so
    a long first clone is not killed and started again from nothing."""
    job = asyncio.ensure_future(work)
    while True:
        done, _ = await asyncio.wait({job}, timeout=EXTEND_SECONDS / 2)
        if done:
            return job.result()
        systemd.notify(f"EXTEND_TIMEOUT_USEC={EXTEND_SECONDS * 1_000_000}")
        log.info("still fetching the followed inbox for the first time")


def desk_failure(config: Config, err: BaseException) -> str:
    """One sentence for command mail that could not be handled for the index's sake."""
    if damage.is_damage(err):
        return damage.damaged_index(config.index_path, err)
    return (
        f"cannot store or answer command mail in {config.index_path} ({err}); free some "
        "disk space or fix its permissions: the mail waits, and is answered once it can be"
    )


def said_counts(counts: dict[str, int]) -> str:
    """{'queued': 2, 'sent': 10} -> "2 queued, 10 sent" (an empty outbox: "empty")."""
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "empty"


def raise_fd_limit() -> None:
    """Raise the soft limit on open files to the hard limit (as servers do)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _hostname() -> str:
    import socket

    return socket.getfqdn()
