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
import time
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from bot import systemd
from bot.config import Config
from bot.delivery import cron, periodic
from bot.delivery.mail import Identity
from bot.delivery.outbox import Outbox, Sender
from bot.desk.inbound import Desk
from bot.desk.lmtp import serve
from bot.digest.build import environment
from bot.errors import DigestError
from bot.health import Problems
from bot.intake.imap import Listener, Route
from bot.intake.importer import Importer
from bot.parse.message import ParsedMessage
from bot.store import retention
from bot.store.archive import Archive, WriterLock
from bot.store.inbox import Inbox, is_inbox, open_mirror
from bot.store.index import Index
from bot.supervise import Health, supervise

log = logging.getLogger(__name__)

SCHEDULES = ("daily", "weekly")
HOUSEKEEPING_SECONDS = 3600
ACCEPT_ERROR_LOG_SECONDS = 60


class Daemon:
    """Owns the parts; `run(stop)` until stop is set."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.env = environment(config.digest.templates or None)
        self.me = Identity(
            config.commands.address or f"kvm-digest@{_hostname()}",
            config.commands.name,
            config.list.title,
            config.list.archive_url,
        )
        self.health = Health()
        self.problems = Problems(config.index_path)
        """Lasting problems outside the process (intake, relay), for `kvm-digest health`."""

    async def run(self, stop: asyncio.Event) -> None:
        config = self.config
        with WriterLock(config.data_dir, "run"):
            index = Index(config.index_path)
            try:
                if config.archive.follow:
                    try:
                        await self._fetch()
                        self.problems.working("intake")
                    except DigestError as err:
                        if not is_inbox(config.archive_path):
                            raise  # nothing to serve digests from yet
                        self.problems.failing(
                            "intake", f"{err}; serving what was fetched before", logging.WARNING
                        )
                # Followed or mirrored, git brings the mail; else we archive it.
                archive: Archive | Inbox = (
                    open_mirror(config.archive_path)
                    if config.is_mirror
                    else Archive.create(config.archive_path)
                )
                index.catch_up(archive)
                await self._serve(archive, index, stop)
            finally:
                self.problems.close()
                index.close()

    async def _fetch(self) -> None:
        """Fetch the followed inbox; git runs in a thread, the loop goes on."""
        from bot.intake import follow

        url, since = self.config.archive.follow, self.config.archive.since
        fetched = await asyncio.to_thread(follow.fetch, url, self.config.archive_path, since)
        log.info("fetched %s: %s", url, fetched)

    async def _follow(self, index: Index, stop: asyncio.Event) -> None:
        """Fetch (or, for a mirror someone else fetches, re-read) on an interval.

        A failed fetch (network, server) is logged and tried again at the
        next interval; the digests meanwhile cover what has been indexed.
        """
        interval = self.config.archive.fetch_interval
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            if stop.is_set():
                return
            try:
                if self.config.archive.follow:
                    await self._fetch()
                # Reopened each time: a fetch may have brought a new epoch.
                added = index.catch_up(open_mirror(self.config.archive_path))
            except DigestError as err:
                # Said once per outage, not at every interval (bot/health.py).
                self.problems.failing("intake", f"{err}; trying again every {interval} s")
                continue
            self.problems.working("intake")
            if added:
                log.info("indexed %d new messages", added)

    async def _serve(self, archive: Archive | Inbox, index: Index, stop: asyncio.Event) -> None:
        config = self.config
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(AcceptErrorThrottle())
        raise_fd_limit()
        outbox = Outbox(index.conn, self.me)
        desk = Desk(index.conn, config, outbox, self.env)
        sender = Sender(outbox, config.smtp)
        intake_stop = asyncio.Event()  # set first on shutdown: no new work
        health = self.health

        def supervised(name: str, factory: Any, until: asyncio.Event) -> asyncio.Task:
            return asyncio.create_task(supervise(name, factory, until, health), name=name)

        tasks = [
            supervised("outbox", lambda: sender.run(stop), stop),
            supervised("commands", lambda: self._desk_worker(desk, intake_stop), intake_stop),
            supervised("housekeeping", lambda: self._housekeeping(index, intake_stop), intake_stop),
        ]
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
        if config.is_mirror:
            tasks.append(asyncio.create_task(self._follow(index, intake_stop), name="follow"))
        elif config.imap.host:
            assert isinstance(archive, Archive)
            importer = Importer(archive, index, config.import_.max_message_size)
            routes = Route(config.list.id, config.list.address, config.commands.address)
            listener = Listener(
                config.imap,
                importer,
                routes,
                on_command=lambda raw, p: self._from_imap(desk, raw, p),
                problems=self.problems,
            )
            tasks.append(supervised("imap", lambda: listener.run(intake_stop), intake_stop))
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
            with index.conn:
                new = periodic.ensure(index.conn, name)
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
        # A coroutine, so APScheduler runs it on the event loop, where the
        # index connection lives, not in its thread pool.
        periodic.run(index.conn, self.config, outbox, self.env, name)

    async def _desk_worker(self, desk: Desk, stop: asyncio.Event) -> None:
        while not stop.is_set():
            desk.pending.clear()
            await desk.process_off_loop()
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
