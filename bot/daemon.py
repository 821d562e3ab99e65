"""`kvm-digest run`: the whole bot in one asyncio process.

IMAP listener (list mail to the archive, command mail to the desk), command
server (LMTP/SMTP), command worker, digest scheduler (APScheduler) and outbox
worker share one event loop, one index connection and the data dir's writer
lock. SIGTERM stops intake first, lets the message being sent finish, closes
the IMAP session and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

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
from bot.intake.imap import Listener, Route
from bot.intake.importer import Importer
from bot.parse.message import ParsedMessage
from bot.store.archive import Archive, WriterLock
from bot.store.index import Index

log = logging.getLogger(__name__)

SCHEDULES = ("daily", "weekly")


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

    async def run(self, stop: asyncio.Event) -> None:
        if self.config.is_mirror:
            raise DigestError("the daemon archives list mail itself; unset [archive] path")
        with WriterLock(self.config.data_dir):
            archive = Archive.create(self.config.archive_path)
            index = Index(self.config.index_path)
            try:
                index.catch_up(archive)
                await self._serve(archive, index, stop)
            finally:
                index.close()

    async def _serve(self, archive: Archive, index: Index, stop: asyncio.Event) -> None:
        config = self.config
        outbox = Outbox(index.conn, self.me)
        desk = Desk(index.conn, config, outbox, self.env)
        sender = Sender(outbox, config.smtp)
        intake_stop = asyncio.Event()  # set first on shutdown: no new work
        tasks = [
            asyncio.create_task(sender.run(stop), name="outbox"),
            asyncio.create_task(self._desk_worker(desk, intake_stop), name="commands"),
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
            )
            log.info(
                "command server (%s) on %s",
                config.commands.protocol,
                config.commands.listen,
            )
        if config.imap.host:
            importer = Importer(archive, index, config.import_.max_message_size)
            routes = Route(config.list.id, config.list.address, config.commands.address)
            listener = Listener(
                config.imap,
                importer,
                routes,
                on_command=lambda raw, p: self._from_imap(desk, raw, p),
            )
            tasks.append(asyncio.create_task(listener.run(intake_stop), name="imap"))
        scheduler = self._scheduler(index, outbox)
        scheduler.start()
        systemd.notify("READY=1")
        log.info("kvm-digest is running")
        watchdog = asyncio.create_task(self._watchdog(stop))
        try:
            await stop.wait()
        finally:
            systemd.notify("STOPPING=1")
            log.info("stopping")
            intake_stop.set()
            if server is not None:
                server.close()
            scheduler.shutdown(wait=False)
            watchdog.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for task in tasks:
                if not task.cancelled() and task.exception():
                    log.error("%s ended with %r", task.get_name(), task.exception())
            log.info("stopped; outbox %s", outbox.counts())

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
            desk.process()
            waiters = {
                asyncio.ensure_future(desk.pending.wait()),
                asyncio.ensure_future(stop.wait()),
            }
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()

    def _from_imap(self, desk: Desk, raw: bytes, parsed: ParsedMessage) -> None:
        rcpt = next((r for r in parsed.recipients if desk.accepts(r)), self.me.address)
        desk.queue(raw, parsed.from_addr, rcpt)

    async def _watchdog(self, stop: asyncio.Event) -> None:
        interval = systemd.watchdog_interval()
        if interval is None:
            return
        while not stop.is_set():
            systemd.notify("WATCHDOG=1")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)


def _hostname() -> str:
    import socket

    return socket.getfqdn()
