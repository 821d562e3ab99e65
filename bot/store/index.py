"""The SQLite index over the archive (WAL mode, next to the archive).

public-inbox's rule: git is the truth, the index is a cache of it. The index
remembers the last archive commit it has seen (`meta.last_commit`) and on
every open catches up with the archive, so a crash between appending to the
archive and updating the index heals itself; `reindex` rebuilds it whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from bot.digest import series, versions, waiting
from bot.errors import ArchiveError, DigestError
from bot.store.gitread import Unread
from bot.text import visible

if TYPE_CHECKING:  # a reader of the index needs neither libgit2 nor the parser
    from bot.parse.message import ParsedMessage
    from bot.store.archive import Archive
    from bot.store.inbox import Inbox

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
RULES_VERSION = 3
"""Bump when parsing or threading rules change: derived rows are rebuilt.
3 (this release): control characters are kept out of every stored text
(bot/text.py); a Date outside the arrival window is stored as unknown;
patches' and cover letters' recipients are indexed; a message without a
diff is no patch; the in-body From counts only for submissions; copies join
their original's series; series grouping; applied notes with who and where;
every patch is a work (a title for versions)."""
DERIVED_TABLES = (
    "recipients",
    "mailboxes",
    "trailers",
    "applied",
    "works",
    "paths",
    "refs",
    "messages",
)
"""Rebuilt from the archive whenever their shape or the rules change."""
BATCH = 512
"""Commits per transaction of a catch-up or reindex. The last batch is
written after the last parse, with nothing left for the other core to do,
so a smaller one ends the run sooner; each commit writes the pages it
dirtied again, so a smaller one costs more. Mirror indexing, medians of 3
alternating runs: 4.17 s, against 4.24 s with 256 and 4.23 s with 1,000
(as close as this machine's runs are to each other)."""
BULK_CACHE_KB = 8 * 1024
"""SQLite's page cache while indexing in bulk (Index.bulk)."""
BULK_CHECKPOINT_PAGES = 16384
"""WAL pages (64 MB of 4 KB pages) before SQLite copies them into the index
file, while indexing in bulk, against its default of 1,000. Each batch
dirties the same index pages again (a Message-ID B-tree is written all
over): copied back after every batch, they are copied once per batch;
left in the WAL a little longer, most copies fall away. Commits of a mirror
indexing of 15,000 messages took 0.15 s rather than 0.40 s."""
READ_INDEXES = (
    "messages_received",
    "messages_thread",
    "messages_series_patchy",
    "messages_series_replies",
    "messages_replies",
    "works_title",
    "works_change_id",
)
"""Indexes (schema.sql) that digests read and the indexing itself never
does. An index built from nothing creates them once, at the end (Index.bulk):
one sort of the finished table, not a B-tree insert for every row in a
random place. Indexing the kvmarm epoch's 15,000 parsed messages: 1.9-2.0 s
rather than 2.0-2.1 s, index creation included. The rows, the catalogue
and the digests' query plans are the same either way."""
_CREATE_INDEX = re.compile(r"CREATE INDEX IF NOT EXISTS (\w+)\b[^;]*;")
_MESSAGE_COLUMNS = (
    *("commit_id", "message_id", "content_hash", "subject", "base_subject", "title", "tags"),
    *("version", "counter", "total", "from_name", "from_addr", "from_key", "author_name"),
    *("author_addr", "date", "received", "list_id", "kind", "is_entry", "is_dup", "dup_of"),
    *("text_hash", "redelivered", "parent_id", "thread_id", "body"),
)
# Built once: the statement cache keys on the text, and building it for each
# message cost more than the statement. _insert's row names each column.
_INSERT_MESSAGE = (
    f"INSERT INTO messages ({', '.join(_MESSAGE_COLUMNS)})"
    f" VALUES ({', '.join(':' + name for name in _MESSAGE_COLUMNS)})"
)
EARLIEST = 631152000
"""1990-01-01 UTC: no list mail is older; an earlier Date is a broken clock."""
AHEAD = 86400
"""A time more than this far ahead of now is a broken clock too."""


def plausible(when: int | None) -> bool:
    """True for a time list mail can have: from 1990 to a day ahead of now.

    Every time the index keeps (arrival, Date) passes this, so nothing a
    digest shows can be a year 10000 or a 1970 that no date format handles.
    """
    return when is not None and EARLIEST <= when <= time.time() + AHEAD


class Index:
    """The message index: rows the digest reads, threads and series."""

    def __init__(self, path: Path) -> None:
        self.path = path
        private_dir(path.parent)
        self.conn = sqlite3.connect(path, timeout=30)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = NORMAL")
        self.conn.execute("PRAGMA foreign_keys = ON")
        self._migrate()
        private_files(path)

    @contextlib.contextmanager
    def bulk(self) -> Iterator[None]:
        """A larger page cache while many messages are indexed (an import, a catch-up).

        Every message updates a dozen B-trees in random places (its
        Message-ID, its thread); with SQLite's default 2 MB cache those pages
        are read again and again. The daemon's cache is the default again
        after it, so a long-lived process stays small.
        """
        (previous,) = self.conn.execute("PRAGMA cache_size").fetchone()
        (checkpoint,) = self.conn.execute("PRAGMA wal_autocheckpoint").fetchone()
        self.conn.execute(f"PRAGMA cache_size = {-BULK_CACHE_KB}")
        self.conn.execute(f"PRAGMA wal_autocheckpoint = {BULK_CHECKPOINT_PAGES}")
        fresh = not self._has_rows("messages")
        try:
            # Inside: a drop that waits out the lock timeout still gives the
            # connection its own cache and checkpoint sizes back.
            if fresh:
                with self.conn:
                    for name in READ_INDEXES:
                        self.conn.execute(f"DROP INDEX IF EXISTS {name}")
            else:
                # A build from nothing that was killed left them out: here, in
                # the bulk writer's time, not in an open on the daemon's loop.
                self._create_read_indexes()
            yield
        finally:
            self.conn.execute(f"PRAGMA cache_size = {int(previous)}")
            self.conn.execute(f"PRAGMA wal_autocheckpoint = {int(checkpoint)}")
            if fresh:
                self._create_read_indexes()
        # Here, in the bulk writer's own time (the daemon's catch-up thread):
        # else the next commit anywhere, an LMTP delivery on the event loop,
        # would copy up to BULK_CHECKPOINT_PAGES. Not after a failure: on a
        # full disk the copy would fail too, or free room in the WAL for the
        # next round while the disk is still full.
        with contextlib.suppress(sqlite3.OperationalError):  # the WAL keeps them meanwhile
            self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _create_read_indexes(self) -> None:
        """Create whichever of READ_INDEXES the index lacks (see Index.bulk).

        When SQLite cannot (a full disk, a writer holding the lock past the
        timeout), digests still read right, only slower: said, and left to
        the next catch-up, rather than failing the command or the catch-up.
        """
        have = {
            name
            for (name,) in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
        }
        if have.issuperset(READ_INDEXES):
            return
        try:
            with self.conn:
                for m in _CREATE_INDEX.finditer(_schema()):
                    if m.group(1) in READ_INDEXES and m.group(1) not in have:
                        self.conn.execute(m.group(0))
        except sqlite3.OperationalError as err:
            log.warning(
                "could not build the index's digest indexes in %s (%s); digests are "
                "slower until the next catch-up builds them (free some disk space "
                "if it is full)",
                self.path,
                err,
            )

    def _migrate(self) -> None:
        """Bring an index written by any earlier version up to this one.

        State tables gain their new columns in place (nothing a user did is
        lost); derived tables whose shape changed are dropped and, like all
        derived rows after a rules change, rebuilt from the archive by the
        next catch-up. So an upgrade never needs a manual step.
        """
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise DigestError(
                f"the index {self.path} was written by a newer kvm-digest; "
                "upgrade kvm-digest or run `kvm-digest reindex`"
            )
        schema = _schema()
        stamp = f"{SCHEMA_VERSION}/{RULES_VERSION}/{hashlib.sha256(schema.encode()).hexdigest()}"
        if self._stamp() == stamp:
            # Already this version: no scratch schema, no write transaction,
            # so a reader never waits behind the daemon's writes to open.
            return
        wanted = _tables_of(schema)
        with self.conn:
            current = dict(
                self.conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'")
            )
            indexed = "messages" in current and self._has_rows("messages")
            # A derived table whose definition changed (a column, a CHECK on
            # the kinds) is dropped and rebuilt: it holds nothing git does not.
            stale = any(
                table in current and current[table] != wanted[table][0] for table in DERIVED_TABLES
            )
            for table, (_sql, columns) in wanted.items():
                if table in DERIVED_TABLES or table not in current:
                    continue
                have = self._columns(table)
                for name, ddl in columns.items():
                    if name not in have:
                        self.conn.execute(f"ALTER TABLE {table} ADD COLUMN {ddl}")
            if stale:
                for (view,) in self.conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'view'"
                ).fetchall():
                    self.conn.execute(f'DROP VIEW IF EXISTS "{view}"')
                for table in DERIVED_TABLES:
                    self.conn.execute(f"DROP TABLE IF EXISTS {table}")
            self.conn.executescript(schema)
            # A derived table this version added (or one left empty by an
            # earlier one) while messages are indexed would stay empty: the
            # catch-up only indexes what is new. So it is all rebuilt.
            unfilled = [t for t in DERIVED_TABLES if t not in current or not self._has_rows(t)]
            rules_changed = self.meta("rules_version") != str(RULES_VERSION)
            if indexed and unfilled:
                log.warning(
                    "the index has no rows in %s (built by an earlier version); "
                    "rebuilding it from the archive",
                    ", ".join(unfilled),
                )
            elif (stale or rules_changed) and self.meta("last_commit") is not None:
                log.warning("the index predates this version's rules; rebuilding it")
            if stale or rules_changed or (indexed and unfilled):
                self._clear_derived()
                self.set_meta("rules_version", str(RULES_VERSION))
            self.set_meta("schema_stamp", stamp)
            self.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _stamp(self) -> str | None:
        """The schema this index was last migrated to (None when new or older)."""
        try:
            return self.meta("schema_stamp")
        except sqlite3.OperationalError:  # no meta table yet: a new index
            return None

    def _has_rows(self, table: str) -> bool:
        return self.conn.execute(f"SELECT EXISTS (SELECT 1 FROM {table})").fetchone()[0] == 1

    def _columns(self, table: str) -> list[str]:
        return [row[1] for row in self.conn.execute(f"PRAGMA table_info({table})")]

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

    def add(self, commits: Iterable[tuple[str, ParsedMessage | Unread | None]]) -> int:
        """Index archive commits in order, in the caller's transaction.

        A None message is a commit without a message (a public-inbox
        deletion): it only moves `last_commit`. An Unread one (too large,
        not a file) is recorded in `failures` and moves it too. Returns the
        number indexed.
        """
        added = 0
        last = None
        for commit_id, parsed in commits:
            last = commit_id
            if isinstance(parsed, Unread):
                self._record_unread(parsed)
            elif parsed is not None:
                self._insert(commit_id, parsed)
                added += 1
        if last is not None:
            self.set_meta("last_commit", last)
        return added

    def _record_unread(self, unread: Unread) -> None:
        """Keep a message the archive holds but we will not read, for `kvm-digest failed`."""
        log.warning("skipped %s: %s", unread.where, unread.reason)
        self.conn.execute(
            "INSERT OR IGNORE INTO failures (created, source, reason, raw, raw_hash)"
            " VALUES (?, ?, ?, ?, ?)",
            (int(time.time()), unread.where, unread.reason, b"", f"git:{unread.commit_id}"),
        )

    def _insert(self, commit_id: str, p: ParsedMessage) -> None:
        s = p.subject
        from_key = p.from_addr.lower()
        # A re-delivery (the archive holds this very message again, as a
        # mirror may) keeps its row, so archive positions stay whole, but
        # counts nowhere: no entry, no series, no statistics.
        redelivered = self.has(p.message_id, p.content_hash)
        is_entry = p.is_entry and not redelivered
        dup_of = None if redelivered else self._original(p, from_key)
        parents = p.parent_ids
        row = {
            "commit_id": commit_id,
            "message_id": p.message_id,
            "content_hash": p.content_hash,
            # Everything a digest shows is stored without control characters.
            "subject": visible(s.full),
            "base_subject": visible(s.base),
            "title": visible(s.title),
            "tags": " ".join(s.tags),
            "version": s.version,
            "counter": s.counter,
            "total": s.total,
            "from_name": visible(p.from_name),
            "from_addr": visible(p.from_addr),
            "from_key": from_key,
            "author_name": visible(p.author_name),
            "author_addr": visible(p.author_addr),
            # A Date outside the window is a broken clock (or a hostile
            # one): unknown, so the arrival time stands in wherever it is used.
            "date": p.date if plausible(p.date) else None,
            "received": self._arrival(p.received),
            "list_id": p.list_id,
            "kind": p.kind,
            "is_entry": int(is_entry),
            "is_dup": int(dup_of is not None),
            "dup_of": dup_of,
            "text_hash": p.text_hash,
            "redelivered": int(redelivered),
            "parent_id": parents[0] if parents else None,
            # The first References id is the thread's root, as mail clients see it.
            "thread_id": p.references[0]
            if p.references
            else (parents[0] if parents else p.message_id),
            "body": visible(p.commit_message),
        }
        cur = self.conn.execute(_INSERT_MESSAGE, row)
        seq = cur.lastrowid
        # Only when there are rows: an empty executemany still costs a statement.
        if parents:
            self.conn.executemany(
                "INSERT INTO refs (seq, pos, ref) VALUES (?, ?, ?)",
                [(seq, pos, ref) for pos, ref in enumerate(parents)],
            )
        if p.paths:
            self.conn.executemany(
                "INSERT INTO paths (seq, path) VALUES (?, ?)", [(seq, path) for path in p.paths]
            )
        node = series.Node(
            seq,
            row["message_id"],
            row["kind"],
            row["version"],
            row["counter"],
            row["total"],
            from_key,
            row["parent_id"],
            row["base_subject"],
            row["date"] if row["date"] is not None else row["received"],
            None,  # series_id: resolved by place()
            row["redelivered"],
            dup_of,
        )
        series.place(self.conn, seq, node)
        self._insert_notes(seq, p)
        self._insert_recipients(seq, p)

    def _insert_recipients(self, seq: int, p: ParsedMessage) -> None:
        """Whom a patch or cover letter went to, canonical (see schema.sql)."""
        if not p.addressees:
            return
        keys = json.dumps(sorted({waiting.canonical(a) for a in p.addressees}))
        self.conn.execute(
            "INSERT OR IGNORE INTO mailboxes (key) SELECT value FROM json_each(?)", (keys,)
        )
        self.conn.execute(
            "INSERT INTO recipients (seq, mailbox) SELECT ?, id FROM mailboxes"
            " WHERE key IN (SELECT value FROM json_each(?))",
            (seq, keys),
        )

    def _original(self, p: ParsedMessage, from_key: str) -> int | None:
        """The archive position of the message `p` is a copy of, if any.

        A patch, cover letter or pull request that repeats an earlier one's
        subject, sender and text (a resend, a copy with another Message-ID)
        is a duplicate: an "Exist:" entry, nothing in the patch list, and a
        member of its original's series, so the replies it gets count there.
        The same subject with changed text is a new posting.
        """
        if p.kind not in ("patch", "cover", "pull"):
            return None
        row = self.conn.execute(
            """SELECT seq FROM messages
                WHERE kind IN ('patch', 'cover', 'pull') AND subject = ? AND from_key = ?
                  AND text_hash = ? AND NOT redelivered
                ORDER BY seq LIMIT 1""",
            (visible(p.subject.full), from_key, p.text_hash),
        ).fetchone()
        return row[0] if row else None

    def _insert_notes(self, seq: int, p: ParsedMessage) -> None:
        """Keep the message's review, applied and version facts (see schema.sql)."""
        notes = p.notes
        if notes.trailers:
            self.conn.executemany(
                "INSERT OR IGNORE INTO trailers (seq, kind, who_key, who_name) VALUES (?, ?, ?, ?)",
                [(seq, kind, key, visible(name)) for kind, name, key in notes.trailers],
            )
        if notes.applied:
            self.conn.execute(
                "INSERT INTO applied (seq, who_name, dest) VALUES (?, ?, ?)",
                (seq, notes.applied_by, notes.applied_to),
            )
        if p.kind in ("patch", "cover"):
            self.conn.execute(
                "INSERT INTO works (seq, from_key, title_key, change_id) VALUES (?, ?, ?, ?)",
                (seq, p.from_addr.lower(), versions.title_key(p.subject.title), notes.change_id),
            )

    def _arrival(self, when: int | None) -> int | None:
        """The time a message counts at in ranges: when it reached the list.

        That is its Received stamp (else its Date). A time before 1990 or
        more than a day ahead of now is a sender's clock gone wrong: the
        message takes the time of the one before it in the archive, so it
        can never widen a time range or fall outside every one.
        """
        if plausible(when):
            return when
        row = self.conn.execute(
            "SELECT received FROM messages WHERE received IS NOT NULL ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        return row[0] if row else None

    def catch_up(
        self,
        archive: Archive | Inbox,
        progress: Callable[[int], None] | None = None,
        *,
        max_size: int | None,
        stop: Callable[[], bool] | None = None,
        batch: int = BATCH,
        workers: int = 1,
    ) -> int:
        """Index archive commits the index has not seen; return how many.

        When the archive's history no longer holds the last indexed commit
        (a mirror whose history was rewritten), the index is rebuilt. A
        mirror's messages over `max_size` bytes are recorded in `failures`
        and skipped (our own archive's passed the limit when imported).
        Each `batch` commits are one transaction, so a writer elsewhere (the
        daemon's LMTP queue) never waits long; `stop` is asked between
        them. A git failure (ArchiveError) is raised after the commits read
        before it are committed: the position stays before the damage.
        `workers` processes parse ahead of the writer ([import] workers).
        """
        last = self.last_commit()
        if last and not archive.contains(last):
            log.warning("archive history no longer contains %s; rebuilding the index", last)
            self.clear()
            last = None
        refused = archive.refusals()  # said every time: it lasts until the inbox is fixed
        limit = None if archive.writable else max_size
        if last is None and archive.head() is not None:
            # From the start: where the archive's history continues before its
            # first commit (a shallow mirror), for ranges that start there.
            base = archive.base()
            with self.conn:
                if base:
                    self.set_meta("base_commit", base)
                else:
                    self.conn.execute("DELETE FROM meta WHERE key = 'base_commit'")
        total = 0
        if archive.head() != last:
            with (
                self.bulk(),
                contextlib.closing(
                    # From the start, the whole archive is to come: start the workers now.
                    parsed_batches(archive.walk(last, limit), batch, workers, early=last is None)
                ) as batches,
            ):
                for items in batches:
                    total += self._commit(items, progress)
                    if stop is not None and stop():
                        return total  # the workers are stopped on the way out
        else:
            self._create_read_indexes()  # as bulk() would (a build killed at its very end)
        if self.rebuilding():
            with self.conn:
                self.conn.execute("DELETE FROM meta WHERE key = 'rebuilding'")
        if refused:
            raise DigestError("; ".join(refused))
        return total

    def _commit(
        self,
        batch: list[tuple[str, ParsedMessage | Unread | None]],
        progress: Callable[[int], None] | None,
    ) -> int:
        try:
            with self.conn:
                added = self.add(batch)
        except sqlite3.IntegrityError as err:
            raise DigestError(
                f"commits {batch[0][0][:12]}..{batch[-1][0][:12]} include one that is indexed "
                f"already ({err}): the archive holds a history twice; run `kvm-digest fsck`"
            ) from err
        if progress:
            progress(len(batch))
        return added

    def clear(self) -> None:
        """Forget every derived row; state tables are kept."""
        with self.conn:
            self._clear_derived()

    def _clear_derived(self) -> None:
        if self.last_commit() is not None:
            # Until a catch-up reaches the archive's head again, positions name
            # a part of it only: periodic digests wait (bot/delivery/periodic.py).
            self.set_meta("rebuilding", "1")
        for table in DERIVED_TABLES:
            self.conn.execute(f"DELETE FROM {table}")
        self.conn.execute("DELETE FROM meta WHERE key IN ('last_commit', 'base_commit')")

    def rebuilding(self) -> bool:
        """True while the index is rebuilt from the archive and not yet at its head."""
        return rebuilding(self.conn)

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


def parsed_batches(
    commits: Iterable[tuple[str, bytes | Unread | None]],
    size: int,
    workers: int = 1,
    *,
    early: bool = False,
) -> Iterator[list[tuple[str, ParsedMessage | Unread | None]]]:
    """The catch-up's producer: archive commits, parsed, in batches, in order.

    One writer (Index._commit) takes each batch as one transaction; the
    parsing may run in `workers` processes ahead of it (bot/parse/pool.py).
    When reading the archive fails, the commits read before the failure come
    out first, then the error is raised. `early`: as for parse_ahead.
    """
    from bot.parse.message import WIRE, lenient, parse_message
    from bot.parse.pool import parse_ahead

    batch: list[tuple[str, ParsedMessage | Unread | None]] = []
    try:
        for commit_id, raw, result in parse_ahead(
            commits, parse_message, workers, early=early, wire=WIRE
        ):
            batch.append((commit_id, lenient(raw, result) if isinstance(raw, bytes) else raw))
            if len(batch) >= size:
                yield batch
                batch = []
    except ArchiveError:
        if batch:
            yield batch
        raise
    if batch:
        yield batch


def rebuilding(conn: sqlite3.Connection) -> bool:
    """True while the index is rebuilt from the archive and not yet at its head.

    A digest made meanwhile would start or end at a place the rebuild has
    not reached: it would repeat mail, or move a schedule backwards.
    """
    return conn.execute("SELECT 1 FROM meta WHERE key = 'rebuilding'").fetchone() is not None


def _schema() -> str:
    """schema.sql's text.

    Beside this file in a checkout and in an installed wheel alike; read
    directly, as importlib.resources costs more to import than the read.
    """
    return (Path(__file__).parent / "schema.sql").read_text(encoding="utf-8")


def _tables_of(schema: str) -> dict[str, tuple[str, dict[str, str]]]:
    """Each table's definition and columns (name -> ALTER TABLE text) in `schema`.

    SQLite itself reads the schema, into a scratch in-memory database, so
    no SQL is parsed here.
    """
    scratch = sqlite3.connect(":memory:")
    try:
        scratch.executescript(schema)
        tables = dict(scratch.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'"))
        out: dict[str, tuple[str, dict[str, str]]] = {}
        for table, sql in tables.items():
            out[table] = (sql, {})
            for _cid, name, kind, notnull, default, _pk in scratch.execute(
                f"PRAGMA table_info({table})"
            ):
                ddl = f"{name} {kind}"
                if default is not None:
                    ddl += f" DEFAULT {default}"
                if notnull and default is not None:
                    ddl += " NOT NULL"
                out[table][1][name] = ddl
        return out
    finally:
        scratch.close()


def private_dir(path: Path) -> None:
    """Create the data directory readable by its owner only (0700).

    It holds subscribers' addresses and raw command mail: whatever the umask
    of whoever creates it, nobody else may read it.
    """
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)


def private_files(db: Path) -> None:
    """Make the index and its WAL and shared-memory files 0600."""
    for file in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        if file.exists() and file.stat().st_mode & 0o077:
            file.chmod(0o600)
