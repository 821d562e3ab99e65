"""Import: mail from a source into the archive, then the index.

Resumable and idempotent: messages already present (same Message-ID and the
same content) are counted as duplicates, and each source's position is saved
with every batch. The archive is appended before the index is updated, so a
crash in between is healed by the index's catch-up on the next open.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bot.errors import DigestError, MailError
from bot.parse.message import WIRE, ParsedMessage, parse_within
from bot.parse.pool import parse_ahead
from bot.store.archive import Archive
from bot.store.gitread import Unread
from bot.store.index import Index

log = logging.getLogger(__name__)

BATCH = 1000


@dataclass
class Counts:
    """What an import did."""

    imported: int = 0
    duplicates: int = 0
    rejected: int = 0

    def __str__(self) -> str:
        return f"{self.imported} imported, {self.duplicates} duplicates, {self.rejected} rejected"


class Importer:
    """Append new messages to the archive and index them, in batches."""

    def __init__(self, archive: Archive, index: Index, max_size: int, workers: int = 1) -> None:
        self.archive = archive
        self.index = index
        self.max_size = max_size
        self.workers = workers
        """Processes that parse ahead of the writer in run() ([import] workers)."""
        self.counts = Counts()
        self.failed: list[tuple[int, str, str, bytes, str]] = []
        """Failures written to the index but not yet committed with a batch."""

    def run(
        self,
        messages: Iterable[tuple[str, bytes | Unread]],
        where: str,
        save_position: Callable[[str], None] | None = None,
        progress: Callable[[int], None] | None = None,
        *,
        early: bool = False,
        donors: Sequence[Path] = (),
    ) -> Counts:
        """Import (position, raw) pairs; positions are saved with each batch.

        Batches overlap: while git writes batch N and its index rows wait
        uncommitted, batch N+1 is parsed; N is committed before N+1 is written.
        With `workers` > 1 the parsing runs in that many processes, ahead of
        this loop (bot/parse/pool.py); the results come back in source order,
        so the archive and the index are written exactly as without them.
        `early`: the source is long; start them now (bot/parse/pool.py).
        `donors`: the git repositories the source reads, whose blobs the
        archive may copy as they are stored (Archive.bulk).
        """
        pending: list[tuple[bytes, ParsedMessage]] = []
        seen: set[tuple[str, str]] = set()
        read = 0
        position = None
        inflight: Callable[[], None] | None = None
        parse = functools.partial(parse_within, max_size=self.max_size)
        # Closed on any way out, so a failure here stops the workers at once.
        with (
            self.archive.bulk(donors),
            self.index.bulk(),
            contextlib.closing(
                parse_ahead(messages, parse, self.workers, early=early, wire=WIRE)
            ) as parsed_ahead,
        ):
            for position, raw, result in parsed_ahead:
                read += 1
                parsed = self.judged(raw, result, f"{where} #{position}")
                if parsed is not None and self.is_new(parsed, seen):
                    pending.append((raw, parsed))
                if read % BATCH == 0:
                    if inflight:
                        inflight()
                    inflight = self.begin(pending, _saver(save_position, position))
                    pending, seen = [], set()
                    if progress:
                        progress(BATCH)
            if inflight:
                inflight()
            if position is not None:
                self.store(pending, _saver(save_position, position))
                if progress:
                    progress(read % BATCH)
        return self.counts

    def accept(self, raw: bytes | Unread, where: str) -> ParsedMessage | None:
        """Parse a message for the archive, or count, log and keep why not."""
        return self.judged(raw, None if isinstance(raw, Unread) else self.parse(raw), where)

    def judged(
        self, raw: bytes | Unread, result: ParsedMessage | Exception | None, where: str
    ) -> ParsedMessage | None:
        """judge() for a message parsed anywhere; an Unread one is rejected with its reason."""
        if isinstance(raw, Unread):  # a git source's message not read: too large
            return self.judge(b"", where, MailError(raw.reason))
        assert result is not None
        return self.judge(raw, where, result)

    def parse(self, raw: bytes) -> ParsedMessage | Exception:
        """Parse without side effects (safe in a worker thread); errors are returned."""
        try:
            return parse_within(raw, self.max_size)
        except Exception as err:  # judged by judge(): rejected, or kept as a failure
            return err

    def judge(
        self, raw: bytes, where: str, result: ParsedMessage | Exception
    ) -> ParsedMessage | None:
        """The parsed message, or None after counting and logging why not.

        A message that is not mail is rejected; one the parser cannot read
        (a bug, on some hostile shape) is kept in `failures` with its reason,
        in the transaction of the batch it came in, so the worker goes on and
        nothing is lost.
        """
        if isinstance(result, MailError):
            self.counts.rejected += 1
            log.warning("rejected %s: %s", where, result)
            return None
        if isinstance(result, Exception):
            self.fail(raw, where, result)
            return None
        return result

    def fail(self, raw: bytes, where: str, err: BaseException) -> None:
        """Record a message that could not be parsed or stored; count it rejected."""
        self.counts.rejected += 1
        reason = f"{type(err).__name__}: {err}"[:500]
        log.error(
            "could not take %s: %s (kept for `kvm-digest failed`)", where, reason, exc_info=err
        )
        self.failed.append((int(time.time()), where, reason, raw, hashlib.sha256(raw).hexdigest()))
        self._write_failures()

    def refuse(self, raw: bytes, where: str, reason: str) -> None:
        """Keep a message that must not be archived in `failures`, with why.

        Not an error of ours (forged list mail, say): one WARNING line, no
        traceback, and the admin finds it with `kvm-digest failed`.
        """
        self.counts.rejected += 1
        log.warning("did not archive %s: %s (kept for `kvm-digest failed`)", where, reason)
        self.failed.append(
            (int(time.time()), where, reason[:500], raw, hashlib.sha256(raw).hexdigest())
        )
        self._write_failures()

    def _write_failures(self) -> None:
        """(Re)write the failures not yet committed, in the open transaction."""
        self.index.conn.executemany(
            "INSERT OR IGNORE INTO failures (created, source, reason, raw, raw_hash)"
            " VALUES (?, ?, ?, ?, ?)",
            self.failed,
        )

    def is_new(self, parsed: ParsedMessage, seen: set[tuple[str, str]]) -> bool:
        """False (and counted) when the archive or this batch has the message."""
        key = (parsed.message_id, parsed.content_hash)
        if key in seen or self.index.has(*key):
            self.counts.duplicates += 1
            return False
        seen.add(key)
        return True

    def store(
        self,
        batch: list[tuple[bytes, ParsedMessage]],
        on_commit: Callable[[], None] | None = None,
    ) -> list[str]:
        """Archive then index a batch; `on_commit` runs in the index transaction.

        That is where a source's position is saved, so a position is never
        ahead of what the archive and index hold.
        """
        ids: list[str] = []
        self.begin(batch, on_commit, ids)()
        return ids

    def begin(
        self,
        batch: list[tuple[bytes, ParsedMessage]],
        on_commit: Callable[[], None] | None = None,
        ids: list[str] | None = None,
    ) -> Callable[[], None]:
        """Start storing a batch; call the result to finish (and commit) it.

        The index rows are written at once but committed only after git has
        the commits on disk: the index is never ahead of the archive.
        """
        conn = self.index.conn
        try:
            pending = self.archive.start_append(batch)
            self.index.add(zip(pending.ids, (p for _, p in batch), strict=True))
            if on_commit:
                on_commit()
        except BaseException:
            conn.rollback()
            raise
        if ids is not None:
            ids.extend(pending.ids)

        def finish() -> None:
            try:
                pending.wait()
            except BaseException:
                conn.rollback()
                raise
            conn.commit()
            self.failed.clear()
            self.counts.imported += len(batch)

        return finish

    def store_each(
        self,
        batch: list[tuple[bytes, ParsedMessage]],
        on_commit: Callable[[], None],
        where: str,
    ) -> None:
        """Store a batch; if one message in it breaks storing, store the rest.

        Environmental failures (a full disk, a locked database) are raised:
        the caller retries the whole batch later. Anything else is taken to
        be the fault of one message: each is then stored alone, and the one
        that fails is kept in `failures`, so a poison message cannot stop
        the intake or be fetched again and again.
        """
        try:
            self.store(batch, on_commit)
            return
        except (DigestError, sqlite3.OperationalError, OSError):
            raise
        except Exception:
            log.warning("storing a batch from %s failed; storing its messages one by one", where)
            self._write_failures()  # the failed batch's rollback took them
        for raw, parsed in batch:
            try:
                self.store([(raw, parsed)])
            except (DigestError, sqlite3.OperationalError, OSError):
                raise
            except Exception as err:
                self.index.conn.rollback()
                self._write_failures()
                self.fail(raw, f"{where} {parsed.message_id}", err)
        self.store([], on_commit)

    def add_one(self, raw: bytes, where: str) -> str | None:
        """Archive and index one message; return its commit id, or None.

        None means a duplicate or a rejected message (the reason is logged).
        """
        parsed = self.accept(raw, where)
        if parsed is None or not self.is_new(parsed, set()):
            return None
        return self.store([(raw, parsed)])[0]


def _saver(save: Callable[[str], None] | None, position: str) -> Callable[[], None] | None:
    return (lambda: save(position)) if save else None
