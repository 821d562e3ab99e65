"""An index built from nothing: the digests' indexes come last, and always come.

Index.bulk leaves out the SQLite indexes only digests read (READ_INDEXES)
while it fills an empty index, and creates them when it ends. These tests
read the index's own catalogue (sqlite_master), not our code's idea of it.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

from bot.parse.message import parse_message
from bot.store import index as indexmod
from bot.store.archive import Archive
from bot.store.index import DERIVED_TABLES, READ_INDEXES, Index
from tests.mailfactory import mail

EVERY_INDEX = set(re.findall(r"CREATE (?:UNIQUE )?INDEX IF NOT EXISTS (\w+)", indexmod._schema()))


def thread_mail(count: int) -> list[bytes]:
    """Patches, each with a reply, so every table the digests read has rows."""
    out = []
    for i in range(count):
        out.append(mail(f"[PATCH {i % 3 + 1}/3] kvm: thing {i // 3}", f"p{i}@example.org"))
        out.append(
            mail(
                f"Re: [PATCH {i % 3 + 1}/3] kvm: thing {i // 3}",
                f"r{i}@example.org",
                frm="Rev Iewer <rev@example.org>",
                body="Looks right.\n\nReviewed-by: Rev Iewer <rev@example.org>\n",
                irt=f"p{i}@example.org",
                minutes=i + 1,
            )
        )
    return out


def archive_of(path: Path, raws: list[bytes]) -> Archive:
    archive = Archive.create(path)
    with archive.bulk():
        archive.append([(raw, parse_message(raw)) for raw in raws])
    return archive


def indexes(db: Path) -> set[str]:
    conn = sqlite3.connect(db)
    try:
        return {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    finally:
        conn.close()


def rows(db: Path) -> dict[str, list[tuple]]:
    conn = sqlite3.connect(db)
    try:
        return {
            t: conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall() for t in DERIVED_TABLES
        }
    finally:
        conn.close()


def test_every_deferred_index_is_one_of_the_schema() -> None:
    # A renamed index would otherwise be built row by row again, silently.
    assert set(READ_INDEXES) <= EVERY_INDEX


def test_a_build_from_nothing_leaves_the_digest_indexes_out_until_it_ends(
    tmp_path: Path,
) -> None:
    archive = archive_of(tmp_path / "archive.git", thread_mail(40))
    db = tmp_path / "index.sqlite3"
    index = Index(db)
    assert indexes(db) >= EVERY_INDEX  # a new index has them all
    during: list[set[str]] = []
    index.catch_up(archive, lambda _: during.append(indexes(db)), max_size=None, batch=16)
    index.conn.close()
    assert len(during) == 5
    assert all(not (found & set(READ_INDEXES)) for found in during)
    assert all(EVERY_INDEX - set(READ_INDEXES) <= found for found in during)
    assert indexes(db) >= EVERY_INDEX


def killed_at_the_end(tmp_path: Path) -> tuple[Archive, Path]:
    """An archive and an index as a SIGKILL after a build's last batch leaves them."""
    archive = archive_of(tmp_path / "archive.git", thread_mail(30))
    db = tmp_path / "index.sqlite3"
    index = Index(db)
    index.catch_up(archive, max_size=None)
    for name in READ_INDEXES:
        index.conn.execute(f"DROP INDEX {name}")
    index.conn.close()
    assert not indexes(db) & set(READ_INDEXES)
    return archive, db


def test_a_build_that_was_killed_gets_its_indexes_back(tmp_path: Path) -> None:
    archive, db = killed_at_the_end(tmp_path)
    index = Index(db)
    assert index.catch_up(archive, max_size=None) == 0  # nothing new to index
    index.conn.close()
    assert indexes(db) >= EVERY_INDEX


def test_indexes_that_cannot_be_built_now_are_said_and_left_for_later(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    archive, db = killed_at_the_end(tmp_path)
    before = rows(db)
    index = Index(db)
    # SQLite's own "database or disk is full", as on a full disk: no free
    # page left (the dropped indexes' are given back first), none to add.
    index.conn.execute("VACUUM")
    (pages,) = index.conn.execute("PRAGMA page_count").fetchone()
    index.conn.execute(f"PRAGMA max_page_count = {pages}")
    assert index.catch_up(archive, max_size=None) == 0
    index.conn.close()
    assert "could not build the index's digest indexes" in caplog.text
    assert "full" in caplog.text
    assert not indexes(db) & set(READ_INDEXES)
    assert rows(db) == before
    index = Index(db)
    index.catch_up(archive, max_size=None)
    index.conn.close()
    assert indexes(db) >= EVERY_INDEX


def test_a_build_from_nothing_indexes_as_one_message_after_the_other(tmp_path: Path) -> None:
    raws = thread_mail(60)
    archive = archive_of(tmp_path / "archive.git", raws)
    whole = tmp_path / "whole.sqlite3"
    index = Index(whole)
    index.catch_up(archive, max_size=None)
    index.conn.close()
    # The same archive indexed a few commits at a time, every index in place
    # from the second batch on, as a daemon indexes new mail.
    stepwise = tmp_path / "stepwise.sqlite3"
    partial = Archive.create(tmp_path / "partial.git")
    index = Index(stepwise)
    for start in range(0, len(raws), 8):
        partial.append([(raw, parse_message(raw)) for raw in raws[start : start + 8]])
        index.catch_up(partial, max_size=None)
    index.conn.close()
    assert rows(whole)["messages"]
    assert rows(whole) == rows(stepwise)
