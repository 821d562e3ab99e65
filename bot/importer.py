"""Import: mail from a source into the archive, then the index.

Resumable and idempotent: messages already present (same Message-ID and the
same content) are counted as duplicates, and each source's position is saved
with every batch. The archive is appended before the index is updated, so a
crash in between is healed by the index's catch-up on the next open.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from bot.archive import Archive
from bot.errors import MailError
from bot.index import Index
from bot.message import ParsedMessage, parse_message

log = logging.getLogger(__name__)

BATCH = 1000


@dataclass
class Counts:
    """What an import did."""

    imported: int = 0
    duplicates: int = 0
    rejected: int = 0

    def __str__(self) -> str:
        return (
            f"{self.imported} imported, {self.duplicates} duplicates, "
            f"{self.rejected} rejected"
        )


def check(raw: bytes, max_size: int) -> ParsedMessage:
    """Parse a message for the archive; raise MailError with the reason not to."""
    if len(raw) > max_size:
        raise MailError(
            f"it is {len(raw)} bytes, more than the limit of {max_size} "
            "([import] max_message_size)"
        )
    return parse_message(raw)


class Importer:
    """Append new messages to the archive and index them, in batches."""

    def __init__(self, archive: Archive, index: Index, max_size: int) -> None:
        self.archive = archive
        self.index = index
        self.max_size = max_size
        self.counts = Counts()

    def run(
        self,
        messages: Iterable[tuple[str, bytes]],
        where: str,
        save_position: Callable[[str], None] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> Counts:
        """Import (position, raw) pairs; positions are saved after each batch."""
        pending: list[tuple[bytes, ParsedMessage]] = []
        seen: set[tuple[str, str]] = set()
        read = 0
        position = None
        for position, raw in messages:
            read += 1
            self._take(raw, f"{where} #{position}", pending, seen)
            if read % BATCH == 0:
                self._flush(pending, position, save_position)
                seen.clear()
                if progress:
                    progress(BATCH)
        if position is not None:
            self._flush(pending, position, save_position)
            if progress:
                progress(read % BATCH)
        return self.counts

    def _take(
        self,
        raw: bytes,
        where: str,
        pending: list[tuple[bytes, ParsedMessage]],
        seen: set[tuple[str, str]],
    ) -> None:
        try:
            parsed = check(raw, self.max_size)
        except MailError as err:
            self.counts.rejected += 1
            log.warning("rejected %s: %s", where, err)
            return
        key = (parsed.message_id, parsed.content_hash)
        if key in seen or self.index.has(*key):
            self.counts.duplicates += 1
            return
        seen.add(key)
        pending.append((raw, parsed))

    def _flush(
        self,
        pending: list[tuple[bytes, ParsedMessage]],
        position: str,
        save_position: Callable[[str], None] | None,
    ) -> None:
        ids = self.archive.append(pending)
        with self.index.conn:
            self.index.add(zip(ids, (p for _, p in pending), strict=True))
            if save_position:
                save_position(position)
        self.counts.imported += len(pending)
        pending.clear()

    def add_one(self, raw: bytes, where: str) -> str | None:
        """Archive and index one message (live intake); return its commit id.

        Returns None when the message is a duplicate or is rejected; the reason
        is logged once.
        """
        pending: list[tuple[bytes, ParsedMessage]] = []
        self._take(raw, where, pending, set())
        if not pending:
            return None
        ids = self.archive.append(pending)
        with self.index.conn:
            self.index.add([(ids[0], pending[0][1])])
        self.counts.imported += 1
        return ids[0]
