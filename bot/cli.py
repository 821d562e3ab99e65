"""The `kvm-digest` command line.

Every subcommand is a small function taking the parsed arguments and the
config. Errors a user can fix are DigestErrors: printed as one line, exit 1.
"""

from __future__ import annotations

# Imports are kept to what every command needs: each command imports its own
# machinery (IMAP, SMTP, the scheduler, libgit2, Jinja2) in its function, so a
# digest from the command line starts in a few interpreter start-ups' time. A
# test (tests/test_startup.py) keeps it that way; benchmarks/run.py measures it.
import argparse
import contextlib
import functools
import logging
import os
import signal
import sqlite3
import sys
import time
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

    from bot.store.archive import Archive
    from bot.store.inbox import Inbox

log = logging.getLogger("kvm-digest")


def setup_logging(verbosity: int) -> None:
    """stderr logging; timestamps unless journald adds its own (bot/logsetup.py)."""
    from bot import logsetup

    logsetup.configure(verbosity)


def open_archive(config: Config) -> Archive | Inbox:
    """The archive to read: the configured mirror (an epoch or a v2 inbox), or our own."""
    from bot.store.archive import Archive
    from bot.store.inbox import is_inbox, open_mirror

    path = config.archive_path
    if config.archive.follow and not is_inbox(path):
        raise DigestError(
            f"nothing has been fetched from {config.archive.follow} yet; run "
            "`kvm-digest fetch` first"
        )
    if config.is_mirror:
        return open_mirror(path)
    if not (path / "HEAD").exists():
        raise DigestError(
            f"there is no archive at {path} yet; run `kvm-digest import SOURCE` "
            "first, or set [archive] path to a public-inbox mirror"
        )
    return Archive.open(path, writable=True)


@contextlib.contextmanager
def writer(config: Config) -> Iterator[tuple[Archive | Inbox, Index]]:
    """Hold the data dir's writer lock with an archive and a caught-up index."""
    from bot.store.archive import Archive, WriterLock

    with WriterLock(config.data_dir):
        archive = open_archive(config) if config.is_mirror else Archive.create(config.archive_path)
        index = Index(config.index_path)
        try:
            catch_up(archive, index)
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


def catch_up(archive: Archive | Inbox, index: Index) -> int:
    """Index what is new in the archive, with a progress bar on a terminal.

    The first indexing of a large mirror takes a while; the bar says so.
    """
    if archive.head() == index.last_commit():
        return 0
    with progress_bar(lambda: archive.count(index.last_commit()), "indexing") as bar:
        return index.catch_up(archive, bar)


def reader(config: Config) -> Index:
    """An index that has caught up with the archive, when that can be done now.

    When another process holds the writer lock (the daemon), it is the one
    that indexes; we read what is there. The usual case, an index already
    caught up, is told from the branch ref alone, without loading libgit2.
    """
    if config.index_path.exists():
        index = Index(config.index_path)
        last = index.last_commit()
        if last is not None and refs.quick_head(config.archive_path) == last:
            return index
        index.close()
    archive = open_archive(config)  # first: a missing archive creates nothing
    index = Index(config.index_path)
    if archive.head() != index.last_commit():
        from bot.store.archive import WriterLock

        try:
            with WriterLock(config.data_dir):
                catch_up(archive, index)
        except DigestError as err:
            log.info("not catching up the index: %s", err)
    return index


# -- subcommands ---------------------------------------------------------


def cmd_import(args: argparse.Namespace, config: Config) -> int:
    from bot.intake.importer import Counts, Importer
    from bot.intake.sources import open_source

    if config.is_mirror:
        raise DigestError(
            "the archive is a read-only mirror ([archive] path or follow); update it "
            "with `kvm-digest fetch` or `git fetch` instead of importing"
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


def cmd_fetch(args: argparse.Namespace, config: Config) -> int:
    """Fetch the followed inbox once and index what is new."""
    from bot.intake import follow
    from bot.store.archive import WriterLock
    from bot.store.inbox import open_mirror

    url = config.archive.follow
    if not url:
        raise ConfigError(
            "kvm-digest fetch needs [archive] follow, the inbox URL to follow "
            '(e.g. follow = "https://lore.kernel.org/kvm"); see the README, "Follow lore"'
        )
    with WriterLock(config.data_dir):
        fetched = follow.fetch(url, config.archive_path)
        index = Index(config.index_path)
        try:
            added = catch_up(open_mirror(config.archive_path), index)
        finally:
            index.close()
    print(f"{url}: {fetched}; {added} new messages indexed")
    return 0


def cmd_reindex(args: argparse.Namespace, config: Config) -> int:
    from bot.store.archive import WriterLock

    archive = open_archive(config)  # first: a missing archive creates nothing
    with WriterLock(config.data_dir):
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
    from bot.digest import build as digestmod

    if args.until and not args.since:
        raise DigestError("--until needs --since; give both dates")
    index = reader(config)
    try:
        rng = select_range(args, index)
        d = digestmod.build(
            index.conn,
            rng,
            config.list.title,
            config.digest.top,
            config.digest.abbrev,
            query=args.query,
            style=args.style or config.digest.style,
            archive_url=config.list.archive_url,
        )
    finally:
        index.close()
    text = digestmod.render(d, digestmod.environment(config.digest.templates or None))
    sys.stdout.write(text)
    return 0


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


def _state(config: Config, create: bool = False) -> Index:
    """The index for state commands (subscribers, outbox), without the lock.

    Commands that only read (`subscribers list`, `outbox`) must not create a
    data dir where the user mistyped one: they say so instead.
    """
    if not create and not config.index_path.exists():
        raise DigestError(
            f"there is no kvm-digest data in {config.data_dir} (no index.sqlite3); "
            "check --data-dir, $KVM_DIGEST_DATA or [data] dir (the service's is "
            "/var/lib/kvm-digest)"
        )
    config.data_dir.mkdir(parents=True, exist_ok=True)
    return Index(config.index_path)


def cmd_subscribers(args: argparse.Namespace, config: Config) -> int:
    from bot.delivery import subscribers

    index = _state(config, create=args.action != "list")
    try:
        with index.conn:
            if args.action == "list":
                for sub in subscribers.listing(index.conn):
                    print(
                        f"{sub.address}\t{sub.schedule}\t{sub.status}\t"
                        f"{sub.hard_failures} hard failures"
                        + (f"\ttopic {sub.topic}" if sub.topic else "")
                    )
            elif args.action == "add":
                from bot.delivery.address import problem
                from bot.digest.query import normal

                for address in args.addresses:
                    why = problem(address)
                    if why:
                        raise DigestError(
                            f"{address!r} is not a mail address ({why}); nobody was added"
                        )
                topic = normal(args.topic) if args.topic else ""
                for address in args.addresses:
                    subscribers.subscribe(index.conn, address, args.schedule, topic)
                    print(f"added {subscribers.canonical(address)} ({args.schedule})")
            else:
                for address in args.addresses:
                    if not subscribers.unsubscribe(index.conn, address):
                        raise DigestError(f"{address} is not subscribed")
                    print(f"removed {subscribers.canonical(address)}")
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
    from bot.delivery import outbox_admin

    if args.ids and args.action == "list":
        raise DigestError("mail ids go with `outbox retry` or `outbox purge`, not a listing")
    index = _state(config)
    try:
        if args.action == "retry":
            n = outbox_admin.retry(index.conn, args.ids)
            print(
                f"queued {n} failed mails again; a running daemon sends them within "
                "seconds (it polls the outbox)"
            )
            return 0
        if args.action == "purge":
            n = outbox_admin.purge(index.conn, args.ids)
            print(f"deleted {n} failed mails")
            return 0
        rows = outbox_admin.listing(index.conn, args.failed)
        # Command mail over a limit waits to be answered (issue 11): show it too.
        deferred = index.conn.execute(
            "SELECT id, limit_key, deferred_until FROM inbound"
            " WHERE NOT done AND deferred_until IS NOT NULL ORDER BY deferred_until, id"
        ).fetchall()
    finally:
        index.close()
    for row in rows:
        print(row.line())
    if not rows:
        print("the outbox is empty" if not args.failed else "no failed mail")
    for row_id, key, until in deferred:
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(until))
        print(f"command mail {row_id} from {key}\tdeferred until {when} (over a limit)")
    return 0


def cmd_fsck(args: argparse.Namespace, config: Config) -> int:
    """Check that the archive and the index agree (without changing either)."""
    from bot.store import fsck

    archive = open_archive(config)
    index = _state(config, create=True)  # the archive exists: its index may not yet
    try:
        if index.last_commit() is None and archive.head() is not None and not index.count():
            # A fresh mirror: nothing indexed is not a disagreement.
            print(
                f"not indexed yet: the archive holds {archive.count()} commits; any "
                "command that reads it (e.g. `kvm-digest digest --all`) indexes it"
            )
            return 0
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


def cmd_failed(args: argparse.Namespace, config: Config) -> int:
    """List mail that could not be taken, answered or sent, with the reasons."""
    from datetime import UTC, datetime

    if not config.index_path.exists():
        raise DigestError(f"there is no index at {config.index_path}; nothing has failed")
    index = Index(config.index_path)
    try:
        conn = index.conn
        rows = [
            ("list", *row)
            for row in conn.execute("SELECT id, created, source, reason FROM failures ORDER BY id")
        ]
        rows += [
            ("command", *row)
            for row in conn.execute(
                "SELECT id, COALESCE(handled, received), sender || ' -> ' || rcpt, error"
                " FROM inbound WHERE error IS NOT NULL ORDER BY id"
            )
        ]
        rows += [
            ("outgoing", *row)
            for row in conn.execute(
                "SELECT id, created, recipient, last_error FROM outbox"
                " WHERE status = 'failed' ORDER BY id"
            )
        ]
    finally:
        index.close()
    for kind, row_id, when, where, reason in rows:
        stamp = datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%d %H:%M")
        print(f"{kind} {row_id}\t{stamp}\t{where}\t{reason}")
    if not rows:
        print("nothing has failed")
    return 0


def cmd_check_config(args: argparse.Namespace, config: Config) -> int:
    """Every problem in one run, "valid" only without any (bot/checkconfig.py)."""
    from bot import checkconfig

    return checkconfig.run(config, args.connect, args.credentials)


class VersionAction(argparse.Action):
    """`--version`: the version, found only when asked for."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # type: ignore[override]
        print(f"{parser.prog} {_version()}")
        parser.exit()


def _version() -> str:
    """The installed package's version (the source tree's when not installed)."""
    from importlib import metadata

    try:
        return metadata.version("kvm-digest")
    except metadata.PackageNotFoundError:
        import bot

        return bot.__version__


def _command(
    sub: argparse._SubParsersAction, name: str, summary: str, description: str
) -> argparse.ArgumentParser:
    """A subcommand whose --help says what it does, not only its options."""
    return sub.add_parser(name, help=summary, description=f"{summary}. {description}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvm-digest",
        description="Archive a mailing list, thread its patch series and mail digests.",
        epilog="Each command has its own --help. The README explains the whole bot.",
    )
    # Looked up only when asked: importlib.metadata costs more than a digest's parse.
    parser.add_argument("--version", action=VersionAction, nargs=0, help="print the version")
    parser.add_argument(
        "--config",
        type=Path,
        help=f"config file (default {configmod.DEFAULT_PATH} if present, "
        f"or ${configmod.ENV_CONFIG})",
    )
    parser.add_argument("--data-dir", help=f"data directory (or ${configmod.ENV_DATA})")
    parser.add_argument(
        "--archive",
        help="index this public-inbox epoch or v2 inbox directory in place "
        "(mirror mode) instead of the data dir's own archive",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _command(
        sub,
        "import",
        "import mail: mbox, Maildir, .eml, public-inbox git or bundle",
        "Appends new messages to the data dir's archive and indexes them; a message "
        "already there is counted as a duplicate, so importing again is harmless.",
    )
    p.add_argument("sources", nargs="+", metavar="SOURCE")
    p.set_defaults(func=cmd_import)

    p = _command(
        sub,
        "digest",
        "print the digest for a range",
        "Reads the index only; the range is archive commit ids, as digest headers "
        "print them, or a window of arrival times.",
    )
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
    p.add_argument(
        "--query",
        metavar="QUERY",
        help="only series matching a lei-style query, e.g. 'dfn:arch/arm64/kvm/ OR s:arm64'",
    )
    p.add_argument(
        "--style",
        choices=configmod.STYLES,
        help="full (links, reviews, versions, applied, earlier series) or classic "
        "(the documented layout only); default [digest] style",
    )
    p.set_defaults(func=cmd_digest)

    p = _command(
        sub,
        "fetch",
        "fetch the followed inbox ([archive] follow) once",
        "Clones or fetches its epochs (git/0.git, git/1.git, ...) and indexes the "
        "new messages; `kvm-digest run` does this on a schedule.",
    )
    p.set_defaults(func=cmd_fetch)

    p = _command(
        sub,
        "reindex",
        "rebuild the index from the archive",
        "Subscribers, schedules and the outbox are kept; digests come out the same.",
    )
    p.set_defaults(func=cmd_reindex)

    p = _command(
        sub,
        "listen",
        "consume the list's mailbox live (IMAP IDLE)",
        "Stores list mail as it arrives until SIGTERM or Ctrl-C; `run` includes this.",
    )
    p.set_defaults(func=cmd_listen)

    p = _command(
        sub,
        "run",
        "the daemon: intake, commands, schedule, delivery",
        "Runs until SIGTERM: follows the inbox or listens on IMAP, answers command "
        "mail, sends scheduled digests and works through the outbox.",
    )
    p.set_defaults(func=cmd_run)

    p = _command(
        sub,
        "subscribers",
        "list, add or remove digest subscribers",
        "Adding here skips the confirmation mail: the operator vouches for the address.",
    )
    p.add_argument("action", choices=["list", "add", "remove"])
    p.add_argument("addresses", nargs="*", metavar="ADDRESS")
    p.add_argument("--schedule", choices=["daily", "weekly"], default="daily")
    p.add_argument("--topic", metavar="QUERY", help="only series matching it (see --query)")
    p.set_defaults(func=cmd_subscribers)

    p = _command(
        sub,
        "send-now",
        "queue a schedule's next digest now",
        "The digest covers the archive since that schedule's last one; a running "
        "daemon sends the queued mail.",
    )
    p.add_argument("--schedule", choices=["daily", "weekly"], default="daily")
    p.set_defaults(func=cmd_send_now)

    p = _command(
        sub,
        "outbox",
        "show queued and failed outgoing mail; retry or purge failed mail",
        "`outbox` lists mail with when it was queued and its next try; `outbox retry "
        "[ID...]` queues failed mail again and `outbox purge [ID...]` deletes it "
        "(all failed mail when no id is given).",
    )
    p.add_argument("action", nargs="?", choices=["list", "retry", "purge"], default="list")
    p.add_argument("ids", nargs="*", type=int, metavar="ID", help="outbox ids, as listed")
    p.add_argument("--failed", action="store_true", help="list only failed mail")
    p.set_defaults(func=cmd_outbox)

    p = _command(
        sub,
        "failed",
        "list mail that could not be stored, answered or sent, with reasons",
        "List mail that could not be parsed or stored, command mail whose handling "
        "failed, and outgoing mail given up on, each with its reason; nothing is lost "
        "silently.",
    )
    p.set_defaults(func=cmd_failed)

    p = _command(
        sub,
        "fsck",
        "check that the archive and the index agree",
        "Changes nothing; `kvm-digest reindex` repairs what it reports.",
    )
    p.set_defaults(func=cmd_fsck)

    p = _command(
        sub,
        "check-config",
        "validate the configuration",
        "Reads the config file and lists every problem it finds, each in one sentence; "
        'prints "valid" only when there is none. --connect also talks to each server.',
    )
    p.add_argument(
        "--connect",
        action="store_true",
        help="also log in to IMAP, say EHLO/STARTTLS/AUTH to the relay, bind the LMTP port",
    )
    p.add_argument(
        "--credentials",
        metavar="DIR",
        help="resolve ${CREDENTIALS_DIRECTORY} in password files to DIR, as systemd would",
    )
    p.set_defaults(func=cmd_check_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    # The data directory holds subscribers' addresses and raw command mail:
    # whatever the caller's umask, what we create is ours alone. (Restored on
    # return, for callers that run us in-process, such as the tests.)
    umask = os.umask(0o077)
    try:
        return _main(argv)
    finally:
        os.umask(umask)


def _main(argv: list[str] | None) -> int:
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
