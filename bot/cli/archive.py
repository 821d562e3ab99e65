"""Commands on the archive and its index: import, fetch, reindex, fsck, failed."""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

from bot import config as configmod
from bot import redact
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
    limit = config.import_.max_message_size
    sources = [open_source(Path(p), cache, limit) for p in args.sources]
    failed = False
    with writer(config, "import") as (archive, index):
        for source in sources:
            importer = Importer(
                archive, index, config.import_.max_message_size, config.import_.workers
            )
            start = index.source_position(source.key) if source.resumable else None
            with progress_bar(
                functools.partial(source.count, start), Path(source.label).name
            ) as bar:
                counts: Counts = importer.run(
                    source.read(start),
                    source.label,
                    save_position=lambda pos, key=source.key: index.set_source_position(key, pos),
                    progress=bar,
                    # An archive or a mailbox is long; one .eml is not worth a process.
                    early=source.kind != "eml",
                    donors=source.donors(),
                )
            print(f"{source.label}: {counts}")
            failed = failed or counts.rejected > 0
    return 1 if failed else 0


def cmd_fetch(args: argparse.Namespace, config: Config) -> int:
    """Fetch the followed inbox once and index what is new.

    An epoch that cannot be fetched or indexed does not stop the others:
    what could be done is done and said, then each problem in one line.
    """
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
        bounds = follow.Bounds.of(config.archive)
        fetched = follow.fetch(url, config.archive_path, bounds, since)
        index = Index(config.index_path)
        problems = list(fetched.problems)
        before = index.count()
        try:
            catch_up(open_mirror(config.archive_path), index, config)
        except DigestError as err:
            problems.append(str(err))
        finally:
            added = index.count() - before
            index.close()
    print(f"{redact.text(url)}: {fetched}; {added} new messages indexed")
    for problem in problems:
        print(f"kvm-digest: error: {redact.text(problem)}", file=sys.stderr)
    return 1 if problems else 0


def cmd_reindex(args: argparse.Namespace, config: Config) -> int:
    from bot.store.archive import WriterLock

    archive = open_archive(config)  # first: a missing archive creates nothing
    with WriterLock(config.data_dir, "reindex"):
        index = Index(config.index_path)
        index.clear()
        with progress_bar(archive.count, "reindexing") as bar:
            count = index.catch_up(
                archive,
                bar,
                max_size=config.import_.max_message_size,
                workers=config.import_.workers,
            )
        index.close()
    print(f"indexed {count} messages")
    return 0


def cmd_repair(args: argparse.Namespace, config: Config) -> int:
    """Rebuild a damaged index from the archive, keeping every state row SQLite can read."""
    from bot.store import repair
    from bot.store.archive import WriterLock

    archive = open_archive(config)  # first: the archive is what the index is rebuilt from
    with WriterLock(config.data_dir, "repair"), progress_bar(archive.count, "rebuilding") as bar:
        done = repair.repair(config.index_path, archive, config.import_.max_message_size, bar)
    kept = ", ".join(f"{n} {table}" for table, n in done.kept.items()) or "no state rows"
    print(f"kept {kept}")
    for lost in done.lost:
        print(f"lost: {lost}")
    print(f"rebuilt the index: {done.messages} messages from the archive")
    if done.old is not None:
        print(f"the old index is kept as {done.old}; remove it once all is well")
    return 1 if done.lost else 0


def cmd_fsck(args: argparse.Namespace, config: Config) -> int:
    """Check the index file, the archive, and that they agree (without changing either)."""
    from bot import healthcheck
    from bot.store import damage, fsck

    archive = open_archive(config)
    if config.index_path.exists() and (found := damage.problems(config.index_path)):
        for problem in found:
            print(f"problem: {problem}")
        print("run `kvm-digest repair` to rebuild the index and keep its state tables")
        return 1
    index = state(config, create=True)  # the archive exists: its index may not yet
    try:
        if index.last_commit() is None and archive.head() is not None and not index.count():
            # A fresh mirror: nothing indexed is not a disagreement.
            print(
                f"not indexed yet: the archive holds {archive.count()} commits; any "
                "command that reads it (e.g. `kvm-digest digest --all`) indexes it"
            )
            return 0
        report = fsck.check(archive, index, config.import_.max_message_size)
        gap = healthcheck.mirror(config, index.conn)
    finally:
        index.close()
    if gap:
        print(f"note: {gap}")
    if report.behind:
        print(
            f"note: the index is {report.behind} messages behind the archive; the daemon, "
            "or any command that reads the archive, indexes them"
        )
    if report.ok and report.behind:
        indexed = report.messages - report.behind
        print(f"ok: {indexed} of {report.messages} messages indexed; so far they agree")
        return 0
    if report.ok:
        print(f"ok: {report.messages} messages; the archive and the index agree")
        return 0
    for problem in report.problems:
        print(f"problem: {problem}")
    if report.archive_damaged:
        print(
            "restore the damaged archive from a backup (a followed inbox: move the damaged "
            "epoch aside and run `kvm-digest fetch`), then run `kvm-digest reindex`"
        )
    else:
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


COMMANDS = ("import", "fetch", "reindex", "repair", "failed", "fsck")
"""The commands register() adds (the CLI registers only the group a command line names)."""


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
        "repair",
        "rebuild a damaged index, keeping subscribers, schedules and the outbox",
        "Reads every row of the state tables that SQLite can still read from the old "
        "index, rebuilds the rest from the archive into a new file, and keeps the old "
        "file beside it; run it when a command says the index is damaged.",
    )
    p.set_defaults(func=cmd_repair)

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
