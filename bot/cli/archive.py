"""Commands on the archive and its index: import, fetch, reindex, fsck, failed."""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

from bot import config as configmod
from bot.cli.common import Subparsers, add_command, catch_up, open_archive, progress_bar, state
from bot.config import Config
from bot.errors import ConfigError, DigestError
from bot.store.index import Index


def cmd_import(args: argparse.Namespace, config: Config) -> int:
    from bot.cli.common import writer
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
    with writer(config, "import") as (archive, index):
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
    from bot.store.inbox import is_inbox, open_mirror

    url = config.archive.follow
    if not url:
        raise ConfigError(
            "kvm-digest fetch needs [archive] follow, the inbox URL to follow "
            '(e.g. follow = "https://lore.kernel.org/kvm"); see the README, "Follow lore"'
        )
    since = configmod.parse_day(args.since, "--since") if args.since else config.archive.since
    if args.since and is_inbox(config.archive_path):
        print(
            f"note: {config.archive_path} holds a mirror already; a since date shapes the "
            "first fetch only (to start again from another day, stop the service, remove "
            "that directory, fetch, then `kvm-digest reindex`)"
        )
    with WriterLock(config.data_dir, "fetch"):
        fetched = follow.fetch(url, config.archive_path, since)
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
    with WriterLock(config.data_dir, "reindex"):
        index = Index(config.index_path)
        index.clear()
        with progress_bar(archive.count, "reindexing") as bar:
            count = index.catch_up(archive, bar)
        index.close()
    print(f"indexed {count} messages")
    return 0


def cmd_fsck(args: argparse.Namespace, config: Config) -> int:
    """Check that the archive and the index agree (without changing either)."""
    from bot import healthcheck
    from bot.store import fsck

    archive = open_archive(config)
    index = state(config, create=True)  # the archive exists: its index may not yet
    try:
        if index.last_commit() is None and archive.head() is not None and not index.count():
            # A fresh mirror: nothing indexed is not a disagreement.
            print(
                f"not indexed yet: the archive holds {archive.count()} commits; any "
                "command that reads it (e.g. `kvm-digest digest --all`) indexes it"
            )
            return 0
        report = fsck.check(archive, index)
        gap = healthcheck.mirror(config, index.conn)
    finally:
        index.close()
    if gap:
        print(f"note: {gap}")
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


def register(sub: Subparsers) -> None:
    p = add_command(
        sub,
        "import",
        "import mail: mbox, Maildir, .eml, public-inbox git or bundle",
        "Appends new messages to the data dir's archive and indexes them; a message "
        "already there is counted as a duplicate, so importing again is harmless.",
    )
    p.add_argument("sources", nargs="+", metavar="SOURCE")
    p.set_defaults(func=cmd_import)

    p = add_command(
        sub,
        "fetch",
        "fetch the followed inbox ([archive] follow) once",
        "Clones or fetches its epochs (git/0.git, git/1.git, ...) and indexes the "
        "new messages; `kvm-digest run` does this on a schedule.",
    )
    p.add_argument(
        "--since",
        metavar="YYYY-MM-DD",
        help="on the first fetch, only mail from that day on (shallow; default "
        "[archive] follow_since); digests of earlier ranges cannot be made",
    )
    p.set_defaults(func=cmd_fetch)

    p = add_command(
        sub,
        "reindex",
        "rebuild the index from the archive",
        "Subscribers, schedules and the outbox are kept; digests come out the same.",
    )
    p.set_defaults(func=cmd_reindex)

    p = add_command(
        sub,
        "failed",
        "list mail that could not be stored, answered or sent, with reasons",
        "List mail that could not be parsed or stored, command mail whose handling "
        "failed, and outgoing mail given up on, each with its reason; nothing is lost "
        "silently.",
    )
    p.set_defaults(func=cmd_failed)

    p = add_command(
        sub,
        "fsck",
        "check that the archive and the index agree",
        "Changes nothing; `kvm-digest reindex` repairs what it reports.",
    )
    p.set_defaults(func=cmd_fsck)
