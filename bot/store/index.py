"""The SQLite index over the archive (WAL mode, next to the archive).

public-inbox's rule: git is the truth, the index is a cache of it. The index
remembers the last archive commit it has seen (`meta.last_commit`) and on
every open catches up with the archive, so a crash between appending to the
archive and updating the index heals itself; `reindex` rebuilds it whole.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from bot.digest import series
from bot.errors import DigestError

if TYPE_CHECKING:  # a reader of the index needs neither libgit2 nor the parser
    from bot.parse.message import ParsedMessage
    from bot.store.archive import Archive

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DERIVED_TABLES = ("refs", "messages")
BATCH = 1000


class Index:
    """The message index: rows the digest reads, threads and series."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(path, timeout=30)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = NORMAL")
        self.conn.execute("PRAGMA foreign_keys = ON")
        self._migrate()

    def _migrate(self) -> None:
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise DigestError(
                f"the index {self.path} was written by a newer kvm-digest; "
                "upgrade kvm-digest or run `kvm-digest reindex`"
            )
        # Beside this file in a checkout and in an installed wheel alike; read
        # directly, as importlib.resources costs more to import than the read.
        schema = (Path(__file__).parent / "schema.sql").read_text(encoding="utf-8")
        with self.conn:
            self.conn.executescript(schema)
            self.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        self.conn.close()

    # -- meta ------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        """Set a meta key (inside the caller's transaction, if any)."""
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def last_commit(self) -> str | None:
        return self.meta("last_commit")

    # -- writing ---------------------------------------------------------

    def has(self, message_id: str, content_hash: str) -> bool:
        """True when this exact message (same id, same content) is indexed."""
        return (
            self.conn.execute(
                "SELECT 1 FROM messages WHERE message_id = ? AND content_hash = ?",
                (message_id, content_hash),
            ).fetchone()
            is not None
        )

    def add(self, commits: Iterable[tuple[str, ParsedMessage | None]]) -> int:
        """Index archive commits in order, in the caller's transaction.

        A None message is a commit without a message (a public-inbox
        deletion): it only moves `last_commit`. Returns the number indexed.
        """
        added = 0
        last = None
        for commit_id, parsed in commits:
            last = commit_id
            if parsed is not None:
                self._insert(commit_id, parsed)
                added += 1
        if last is not None:
            self.set_meta("last_commit", last)
        return added

    def _insert(self, commit_id: str, p: ParsedMessage) -> None:
        s = p.subject
        from_key = p.from_addr.lower()
        is_dup = (
            p.is_entry
            and self.conn.execute(
                "SELECT 1 FROM messages WHERE is_entry AND subject = ? AND from_key = ?",
                (s.full, from_key),
            ).fetchone()
            is not None
        )
        parents = p.parent_ids
        row = {
            "commit_id": commit_id,
            "message_id": p.message_id,
            "content_hash": p.content_hash,
            "subject": s.full,
            "base_subject": s.base,
            "title": s.title,
            "tags": " ".join(s.tags),
            "version": s.version,
            "counter": s.counter,
            "total": s.total,
            "from_name": p.from_name,
            "from_addr": p.from_addr,
            "from_key": from_key,
            "author_name": p.author_name,
            "author_addr": p.author_addr,
            "date": p.date,
            "received": p.received,
            "list_id": p.list_id,
            "kind": p.kind,
            "is_entry": int(p.is_entry),
            "is_dup": int(is_dup),
            "parent_id": parents[0] if parents else None,
            # The first References id is the thread's root, as mail clients see it.
            "thread_id": p.references[0]
            if p.references
            else (parents[0] if parents else p.message_id),
            "body": p.commit_message,
        }
        columns = ", ".join(row)
        values = ", ".join(f":{name}" for name in row)
        cur = self.conn.execute(f"INSERT INTO messages ({columns}) VALUES ({values})", row)
        seq = cur.lastrowid
        self.conn.executemany(
            "INSERT INTO refs (seq, pos, ref) VALUES (?, ?, ?)",
            [(seq, pos, ref) for pos, ref in enumerate(parents)],
        )
        series.place(self.conn, seq)

    def catch_up(self, archive: Archive, progress: Callable[[int], None] | None = None) -> int:
        """Index archive commits the index has not seen; return how many.

        When the archive's history no longer holds the last indexed commit
        (a mirror whose history was rewritten), the index is rebuilt.
        """
        last = self.last_commit()
        if last and not archive.contains(last):
            log.warning("archive history no longer contains %s; rebuilding the index", last)
            self.clear()
            last = None
        if archive.head() == last:
            return 0
        total = 0
        from bot.parse.message import parse_lenient

        batch: list[tuple[str, ParsedMessage | None]] = []
        for commit_id, raw in archive.walk(last):
            batch.append((commit_id, parse_lenient(raw) if raw is not None else None))
            if len(batch) >= BATCH:
                total += self._commit(batch, progress)
                batch = []
        if batch:
            total += self._commit(batch, progress)
        return total

    def _commit(
        self,
        batch: list[tuple[str, ParsedMessage | None]],
        progress: Callable[[int], None] | None,
    ) -> int:
        with self.conn:
            added = self.add(batch)
        if progress:
            progress(len(batch))
        return added

    def clear(self) -> None:
        """Forget every derived row; state tables are kept."""
        with self.conn:
            for table in DERIVED_TABLES:
                self.conn.execute(f"DELETE FROM {table}")
            self.conn.execute("DELETE FROM meta WHERE key = 'last_commit'")

    # -- reading ---------------------------------------------------------

    def count(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0]

    # -- import sources (state) ------------------------------------------

    def source_position(self, key: str) -> str | None:
        row = self.conn.execute("SELECT position FROM sources WHERE source = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_source_position(self, key: str, position: str) -> None:
        """Record how far a source was read (in the caller's transaction)."""
        self.conn.execute(
            "INSERT INTO sources (source, position) VALUES (?, ?) "
            "ON CONFLICT(source) DO UPDATE SET position = excluded.position",
            (key, position),
        )
