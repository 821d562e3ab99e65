"""What the command groups share: opening the archive and the index.

Imports are kept to what every command needs: each command imports its own
machinery (IMAP, SMTP, the scheduler, libgit2, Jinja2) in its function, so a
digest from the command line starts in a few interpreter start-ups' time. A
test (tests/test_startup.py) keeps it that way; benchmarks/run.py measures it.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from bot import redact
from bot.config import Config
from bot.errors import DigestError
from bot.store import refs
from bot.store.index import Index

if TYPE_CHECKING:
    from bot.store.archive import Archive
    from bot.store.inbox import Inbox

log = logging.getLogger("kvm-digest")

Subparsers = argparse._SubParsersAction


def add_command(
    sub: Subparsers, name: str, summary: str, description: str
) -> argparse.ArgumentParser:
    """A subcommand whose --help says what it does, not only its options."""
    return sub.add_parser(name, help=summary, description=f"{summary}. {description}")


def open_archive(config: Config) -> Archive | Inbox:
    """The archive to read: the configured mirror (an epoch or a v2 inbox), or our own."""
    from bot.store.archive import Archive
    from bot.store.inbox import is_inbox, open_mirror

    path = config.archive_path
    if config.archive.follow and not is_inbox(path):
        raise DigestError(
            f"nothing has been fetched from {redact.text(config.archive.follow)} yet; run "
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
def writer(config: Config, command: str = "") -> Iterator[tuple[Archive | Inbox, Index]]:
    """Hold the data dir's writer lock with an archive and a caught-up index."""
    from bot.store.archive import Archive, WriterLock

    with WriterLock(config.data_dir, command):
        archive = open_archive(config) if config.is_mirror else Archive.create(config.archive_path)
        index = Index(config.index_path)
        try:
            catch_up(archive, index, config)
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


def catch_up(archive: Archive | Inbox, index: Index, config: Config) -> int:
    """Index what is new in the archive, with a progress bar on a terminal.

    The first indexing of a large mirror takes a while; the bar says so.
    """
    limit = config.import_.max_message_size
    if archive.head() == index.last_commit():
        return index.catch_up(archive, max_size=limit)  # nothing to read; a refusal is said
    with progress_bar(lambda: archive.count(index.last_commit()), "indexing") as bar:
        return index.catch_up(archive, bar, max_size=limit, workers=config.import_.workers)


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

        lock = WriterLock(config.data_dir)
        try:
            lock.__enter__()
        except DigestError as err:
            if index.last_commit() is None and archive.head() is not None:
                # Rebuilding (a first indexing, an upgrade): an empty answer would lie.
                index.close()
                raise DigestError(
                    f"the index is being built by the process writing to {config.data_dir} "
                    "(the daemon, after a start or an upgrade); try again when it is done, "
                    "or stop it and run `kvm-digest reindex`"
                ) from err
            log.info("not catching up the index: %s", err)
            return index
        try:
            catch_up(archive, index, config)  # a damaged archive is an error, not a digest
        except BaseException:
            index.close()
            raise
        finally:
            lock.__exit__()
    return index


def state(config: Config, create: bool = False) -> Index:
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
