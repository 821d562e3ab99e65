"""The long-running commands: `listen` (IMAP intake alone) and `run` (the daemon)."""

from __future__ import annotations

import argparse
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from bot.cli.common import Subparsers, add_command, writer
from bot.config import Config
from bot.errors import ConfigError, DigestError

if TYPE_CHECKING:
    import asyncio

log = logging.getLogger("kvm-digest")

LONG_RUNNING = ("listen", "run")
"""Commands that log at INFO by default: their log is all an operator sees."""


def cmd_listen(args: argparse.Namespace, config: Config) -> int:
    """Consume the mailbox live until SIGTERM or SIGINT."""
    import asyncio

    from bot.health import Problems
    from bot.intake.imap import Listener, Route
    from bot.intake.importer import Importer

    imap = config.imap
    if not imap.host or not imap.user:
        raise ConfigError("[imap] host and user must be set to listen; see the README")
    if config.is_mirror:
        raise DigestError("the archive is a read-only mirror; listening needs our own")
    imap.secret()
    with writer(config, "listen") as (archive, index):
        importer = Importer(archive, index, config.import_.max_message_size)
        routes = Route(config.list.id, config.list.address, config.commands.address)
        problems = Problems(config.index_path)  # `kvm-digest health` reads them
        listener = Listener(imap, importer, routes, problems=problems)
        try:
            asyncio.run(until_signalled(listener.run))
        finally:
            problems.close()
        log.info("stopped: %s", importer.counts)
    return 0


async def until_signalled(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run `main(stop)`; SIGTERM or SIGINT sets `stop`."""
    import asyncio

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await main(stop)


def cmd_run(args: argparse.Namespace, config: Config) -> int:
    """The daemon: everything in one process until SIGTERM."""
    import asyncio

    from bot.daemon import Daemon

    config.schedule.check()  # a bad cron expression is a config error, not a crash
    if not (config.imap.host or config.is_mirror):
        raise ConfigError(
            "kvm-digest run needs an intake for list mail: set [archive] follow (the "
            "inbox URL, e.g. https://lore.kernel.org/kvm) or [imap] host; see the README"
        )

    # Check the password sources now: a bad one is a config error, not a retry loop.
    if config.imap.host:
        config.imap.secret()
    config.smtp.secret()
    asyncio.run(until_signalled(Daemon(config).run))
    return 0


COMMANDS = ("listen", "run")
"""The commands register() adds (the CLI registers only the group a command line names)."""


def register(sub: Subparsers) -> None:
    p = add_command(
        sub,
        "listen",
        "consume the list's mailbox live (IMAP IDLE)",
        "Stores list mail as it arrives until SIGTERM or Ctrl-C; `run` includes this.",
    )
    p.set_defaults(func=cmd_listen)

    p = add_command(
        sub,
        "run",
        "the daemon: intake, commands, schedule, delivery",
        "Runs until SIGTERM: follows the inbox or listens on IMAP, answers command "
        "mail, sends scheduled digests and works through the outbox.",
    )
    p.set_defaults(func=cmd_run)
