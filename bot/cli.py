"""The `kvm-digest` command line.

Every subcommand is a small function taking the parsed arguments and the
config. Errors a user can fix are DigestErrors: printed as one line, exit 1.
"""

from __future__ import annotations

# Imports are kept to what every command needs: each command imports its own
# machinery (IMAP, SMTP, the scheduler, libgit2) in its function, so a digest
# from the command line starts in a few interpreter start-ups' time. A test
# (tests/test_startup.py) keeps it that way; benchmarks/run.py startup measures it.
import argparse
import contextlib
import functools
import logging
import sqlite3
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from bot import config as configmod
from bot.config import Config
from bot.digest import ranges
from bot.errors import ConfigError, DigestError
from bot.store import refs
from bot.store.index import Index

if TYPE_CHECKING:
    import asyncio

    import jinja2

    from bot.store.archive import Archive

log = logging.getLogger("kvm-digest")


def setup_logging(verbosity: int) -> None:
    """Log to stderr without timestamps: journald adds its own."""
    level = logging.WARNING - 10 * verbosity
    logging.basicConfig(
        level=max(level, logging.DEBUG),
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )


def open_archive(config: Config) -> Archive:
    """The archive to read: the configured mirror, or our own."""
    from bot.store.archive import Archive

    path = config.archive_path
    if config.is_mirror:
        return Archive.open(path)
    if not (path / "HEAD").exists():
        raise DigestError(
            f"there is no archive at {path} yet; run `kvm-digest import SOURCE` "
            "first, or set [archive] path to a public-inbox mirror"
        )
    return Archive.open(path, writable=True)


@contextlib.contextmanager
def writer(config: Config) -> Iterator[tuple[Archive, Index]]:
    """Hold the data dir's writer lock with an archive and a caught-up index."""
    from bot.store.archive import Archive, WriterLock

    with WriterLock(config.data_dir):
        archive = (
            Archive.open(config.archive_path)
            if config.is_mirror
            else Archive.create(config.archive_path)
        )
        index = Index(config.index_path)
        try:
            with progress_bar(lambda: archive.count(index.last_commit()), "indexing") as bar:
                index.catch_up(archive, bar)
            yield archive, index
        finally:
            index.close()


@contextlib.contextmanager
def progress_bar(count: Callable[[], int], what: str) -> Iterator[Callable[[int], None]]:
    """A progress bar on a terminal; silence elsewhere (logs, CI, systemd).

    `count` is only called when the bar is shown: counting means reading a
    whole mbox or walking every commit, which is wasted work without one.
    """
    if not sys.stderr.isatty():
        yield lambda n: None
        return
    total = count()
    if not total:
        yield lambda n: None
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=what, unit="msg", file=sys.stderr) as bar:
        yield bar.update


def reader(config: Config) -> Index:
    """An index that has caught up with the archive, when that can be done now.

    When another process holds the writer lock (the daemon), it is the one
    that indexes; we read what is there. The usual case, an index already
    caught up, is told from the branch ref alone, without loading libgit2.
    """
    index = Index(config.index_path)
    last = index.last_commit()
    if last is not None and refs.quick_head(config.archive_path) == last:
        return index
    try:
        archive = open_archive(config)
    except DigestError:
        index.close()
        raise
    if archive.head() != last:
        from bot.store.archive import WriterLock

        try:
            with WriterLock(config.data_dir):
                index.catch_up(archive)
        except DigestError as err:
            log.info("not catching up the index: %s", err)
    return index


# -- subcommands ---------------------------------------------------------


def cmd_import(args: argparse.Namespace, config: Config) -> int:
    from bot.intake.importer import Counts, Importer
    from bot.intake.sources import open_source

    if config.is_mirror:
        raise DigestError(
            "the archive is a read-only mirror ([archive] path); update it with "
            "`git fetch` instead of importing"
        )
    cache = config.data_dir / "sources"
    sources = [open_source(Path(p), cache) for p in args.sources]
    failed = False
    with writer(config) as (archive, index):
        for source in sources:
            importer = Importer(archive, index, config.import_.max_message_size)
            start = index.source_position(source.key) if source.resumable else None
            with progress_bar(
                functools.partial(source.count, start), Path(source.label).name
            ) as bar:
                counts: Counts = importer.run(
                    source.read(start),
                    source.label,
                    save_position=lambda pos, key=source.key: index.set_source_position(key, pos),
                    progress=bar,
                )
            print(f"{source.label}: {counts}")
            failed = failed or counts.rejected > 0
    return 1 if failed else 0


def cmd_reindex(args: argparse.Namespace, config: Config) -> int:
    from bot.store.archive import WriterLock

    with WriterLock(config.data_dir):
        archive = open_archive(config)
        index = Index(config.index_path)
        index.clear()
        with progress_bar(archive.count, "reindexing") as bar:
            count = index.catch_up(archive, bar)
        index.close()
    print(f"indexed {count} messages")
    return 0


def select_range(args: argparse.Namespace, index: Index) -> ranges.Range:
    if args.range:
        return ranges.parse_range(index.conn, " ".join(args.range))
    if args.since:
        until = ranges.parse_when(args.until) if args.until else None
        return ranges.by_time(index.conn, ranges.parse_when(args.since), until)
    return ranges.everything(index.conn)


def cmd_digest(args: argparse.Namespace, config: Config) -> int:
    from bot.digest import build as digestmod  # jinja2: only commands that render

    if args.until and not args.since:
        raise DigestError("--until needs --since; give both dates")
    index = reader(config)
    try:
        rng = select_range(args, index)
        d = digestmod.build(
            index.conn, rng, config.list.title, config.digest.top, config.digest.abbrev
        )
    finally:
        index.close()
    env = digestmod.environment(config.digest.templates or None)
    env.bytecode_cache = template_cache()
    text = digestmod.render(d, env)
    sys.stdout.write(text)
    return 0


def template_cache() -> jinja2.BytecodeCache | None:
    """Jinja2's compiled-template cache, so a one-shot digest does not recompile.

    Compiling the digest template costs more than building the digest; the
    daemon compiles once, but each `kvm-digest digest` is a new process.
    Jinja2 keeps the cache in a per-user directory of the temp dir that it
    checks is ours and private, and keys entries on the template source, so
    an edited template is recompiled. Without a usable directory: no cache.
    """
    import jinja2

    class Quiet(jinja2.FileSystemBytecodeCache):
        def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
            try:
                super().dump_bytecode(bucket)
            except OSError as err:  # a full temp dir costs speed, never the digest
                log.debug("not caching the compiled template: %s", err)

    try:
        return Quiet()
    except (OSError, RuntimeError) as err:  # RuntimeError: no private temp dir
        log.debug("no template cache: %s", err)
        return None


def cmd_listen(args: argparse.Namespace, config: Config) -> int:
    """Consume the mailbox live until SIGTERM or SIGINT."""
    import asyncio

    from bot.intake.imap import Listener, Route
    from bot.intake.importer import Importer

    imap = config.imap
    if not imap.host or not imap.user:
        raise ConfigError("[imap] host and user must be set to listen; see the README")
    if config.is_mirror:
        raise DigestError("the archive is a read-only mirror; listening needs our own")
    imap.secret()
    with writer(config) as (archive, index):
        importer = Importer(archive, index, config.import_.max_message_size)
        routes = Route(config.list.id, config.list.address, config.commands.address)
        listener = Listener(imap, importer, routes)
        asyncio.run(until_signalled(listener.run))
        log.info("stopped: %s", importer.counts)
    return 0


async def until_signalled(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run `main(stop)`; SIGTERM or SIGINT sets `stop`."""
    import asyncio
    import signal

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

    # Check the password sources now: a bad one is a config error, not a retry loop.
    if config.imap.host:
        config.imap.secret()
    config.smtp.secret()
    asyncio.run(until_signalled(Daemon(config).run))
    return 0


def _state(config: Config) -> Index:
    """The index for state commands (subscribers, outbox), without the lock."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    return Index(config.index_path)


def cmd_subscribers(args: argparse.Namespace, config: Config) -> int:
    from bot.delivery import subscribers

    index = _state(config)
    try:
        with index.conn:
            if args.action == "list":
                for sub in subscribers.listing(index.conn):
                    print(
                        f"{sub.address}\t{sub.schedule}\t{sub.status}\t"
                        f"{sub.hard_failures} hard failures"
                    )
            elif args.action == "add":
                for address in args.addresses:
                    subscribers.subscribe(index.conn, address, args.schedule)
                    print(f"added {address.lower()} ({args.schedule})")
            else:
                for address in args.addresses:
                    if not subscribers.unsubscribe(index.conn, address):
                        raise DigestError(f"{address} is not subscribed")
                    print(f"removed {address.lower()}")
    finally:
        index.close()
    return 0


def cmd_send_now(args: argparse.Namespace, config: Config) -> int:
    """Run a schedule's digest now; a running daemon sends the queued mail."""
    from bot.daemon import Daemon
    from bot.delivery import periodic
    from bot.delivery.outbox import Outbox

    config.schedule.check()

    index = reader(config)
    try:
        daemon = Daemon(config)
        outbox = Outbox(index.conn, daemon.me)
        result = periodic.run(index.conn, config, outbox, daemon.env, args.schedule)
    finally:
        index.close()
    print(
        f"{args.schedule} digest: {result.messages} messages, "
        f"queued for {result.recipients} subscribers"
    )
    return 0


def cmd_outbox(args: argparse.Namespace, config: Config) -> int:
    index = _state(config)
    try:
        rows = index.conn.execute(
            "SELECT id, kind, recipient, status, attempts, last_error FROM outbox"
            " WHERE status IN ("
            + ("'failed'" if args.failed else "'queued', 'failed'")
            + ") ORDER BY id"
        ).fetchall()
    finally:
        index.close()
    for row_id, kind, recipient, status, attempts, error in rows:
        print(f"{row_id}\t{kind}\t{recipient}\t{status}\t{attempts} attempts\t{error}")
    if not rows:
        print("the outbox is empty" if not args.failed else "no failed mail")
    return 0


def cmd_fsck(args: argparse.Namespace, config: Config) -> int:
    """Check that the archive and the index agree (without changing either)."""
    from bot.store import fsck

    archive = open_archive(config)
    index = Index(config.index_path)
    try:
        report = fsck.check(archive, index)
    finally:
        index.close()
    if report.ok:
        print(f"ok: {report.messages} messages; the archive and the index agree")
        return 0
    for problem in report.problems:
        print(f"problem: {problem}")
    print("run `kvm-digest reindex` to rebuild the index from the archive")
    return 1


def cmd_check_config(args: argparse.Namespace, config: Config) -> int:
    config.schedule.check()
    where = config.source or "built-in defaults (no config file found)"
    print(f"configuration from {where} is valid")
    print(f"data directory: {config.data_dir}")
    print(f"archive: {config.archive_path}" + (" (mirror, read-only)" if config.is_mirror else ""))
    imap, smtp, commands = config.imap, config.smtp, config.commands
    if imap.host:
        imap.secret()  # a missing or world-readable password file fails here
        print(
            f"imap: {imap.user}@{imap.host}:{imap.port} ({imap.security}), folder "
            f"{imap.folder}" + ("" if imap.verify else ", certificates NOT checked")
        )
    else:
        print("imap: not configured (no live intake)")
    if commands.address:
        print(f"commands: {commands.address}, {commands.protocol.upper()} on {commands.listen}")
    else:
        print("commands: not configured (no command mail)")
    smtp.secret()
    print(
        f"smtp relay: {smtp.host}:{smtp.port} ({smtp.security})"
        + ("" if smtp.verify else ", certificates NOT checked")
    )
    schedule = config.schedule
    print(f"schedule (UTC): daily {schedule.daily or 'off'}, weekly {schedule.weekly or 'off'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvm-digest",
        description="Archive a mailing list, thread its patch series and mail digests.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        help=f"config file (default {configmod.DEFAULT_PATH} if present, "
        f"or ${configmod.ENV_CONFIG})",
    )
    parser.add_argument("--data-dir", help=f"data directory (or ${configmod.ENV_DATA})")
    parser.add_argument(
        "--archive",
        help="index this public-inbox epoch in place "
        "(mirror mode) instead of the data dir's own archive",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "import", help="import mail: mbox, Maildir, .eml, public-inbox git or bundle"
    )
    p.add_argument("sources", nargs="+", metavar="SOURCE")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("digest", help="print the digest for a range")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument(
        "--range",
        nargs="+",
        metavar="A..B",
        help="commit ids as printed in digest headers: A..B or A B",
    )
    group.add_argument("--since", metavar="DATE", help="YYYY-MM-DD[THH:MM], UTC")
    group.add_argument("--all", action="store_true", help="the whole archive")
    p.add_argument("--until", metavar="DATE", help="end of the --since window (excluded)")
    p.set_defaults(func=cmd_digest)

    p = sub.add_parser("reindex", help="rebuild the index from the archive")
    p.set_defaults(func=cmd_reindex)

    p = sub.add_parser("listen", help="consume the list's mailbox live (IMAP IDLE)")
    p.set_defaults(func=cmd_listen)

    p = sub.add_parser("run", help="the daemon: intake, commands, schedule, delivery")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("subscribers", help="list, add or remove digest subscribers")
    p.add_argument("action", choices=["list", "add", "remove"])
    p.add_argument("addresses", nargs="*", metavar="ADDRESS")
    p.add_argument("--schedule", choices=["daily", "weekly"], default="daily")
    p.set_defaults(func=cmd_subscribers)

    p = sub.add_parser("send-now", help="queue a schedule's next digest now")
    p.add_argument("--schedule", choices=["daily", "weekly"], default="daily")
    p.set_defaults(func=cmd_send_now)

    p = sub.add_parser("outbox", help="show queued and failed outgoing mail")
    p.add_argument("--failed", action="store_true", help="only failed mail")
    p.set_defaults(func=cmd_outbox)

    p = sub.add_parser("fsck", help="check that the archive and the index agree")
    p.set_defaults(func=cmd_fsck)

    p = sub.add_parser("check-config", help="validate the configuration")
    p.set_defaults(func=cmd_check_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose + (1 if args.command in ("listen", "run") else 0))
    try:
        config = configmod.load(args.config, args.data_dir, args.archive)
        return args.func(args, config)
    except DigestError as err:
        print(f"kvm-digest: error: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0
    except (OSError, sqlite3.Error) as err:
        # A full disk or a read-only data dir: say so in one line; the
        # transaction in progress was rolled back and the archive head moves last.
        print(
            f"kvm-digest: error: cannot read or write the data directory ({err}); free "
            "some disk space or fix its permissions, then run the command again",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
