"""A damaged index is named and repaired: garbage over a page, a file cut short, a bad header.

The index is a real one, built through the CLI (subscribers, imports, a
queued digest), then damaged on disk the way disks and careless copies
damage files. fsck must say what is damaged, every other command must say
to run `kvm-digest repair`, and repair must give back an index that reads
as before, with every state row that can still be read.
"""

from __future__ import annotations

import mailbox
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.mailfactory import DATA, mail

ROOT = Path(__file__).resolve().parents[1]
STATE = ("subscribers", "schedules", "digests", "outbox", "sources", "tokens", "bounces")


@pytest.fixture
def built(cli: Callable, data_dir: Path, tmp_path: Path) -> dict[str, object]:
    """A data dir with state and derived rows; what reads back from it.

    The last import only adds derived rows, at the end of the file: where
    a copy cut short loses them.
    """
    assert cli("subscribers", "add", "a@example.org", "b@example.org", "c@example.org").code == 0
    assert cli("import", DATA / "kvmarm-slice.mbox").code == 0
    assert cli("send-now").code == 0  # the schedule starts at the head
    assert cli("import", ROOT / "samples" / "kvm-sample.mbox").code == 0
    assert "queued for 3 subscribers" in cli("send-now").out
    index = data_dir / "index.sqlite3"
    before = index.stat().st_size
    later = tmp_path / "later.mbox"
    box = mailbox.mbox(later)
    for n in range(300):
        box.add(mail(f"[PATCH] KVM: later fix {n}", f"later-{n}@example.org", minutes=n))
    box.close()
    assert cli("import", later).code == 0
    return {
        "state": state_rows(index),
        "digest": cli("digest", "--all").out,
        "cut": (before + index.stat().st_size) // 2,
    }


def state_rows(path: Path) -> dict[str, list[tuple]]:
    conn = sqlite3.connect(path)
    try:
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY rowid").fetchall() for t in STATE}
    finally:
        conn.close()


def page_of(path: Path, table: str, nth: int = 0) -> int:
    """The number of a leaf page of `table` (SQLite's dbstat says where it is)."""
    conn = sqlite3.connect(path)
    try:
        pages = [
            row[0]
            for row in conn.execute(
                "SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf' ORDER BY pageno",
                (table,),
            )
        ]
    finally:
        conn.close()
    return pages[nth]


def garbage_over_page(path: Path, page: int) -> None:
    with path.open("r+b") as f:
        f.seek((page - 1) * 4096)
        f.write(os.urandom(4096))


def bad_header(path: Path) -> None:
    with path.open("r+b") as f:
        f.write(b"this is not a database at all, it was overwritten by a log line\n"[:100])


@pytest.mark.parametrize("damage", ["page", "truncated", "header"])
def test_a_damaged_index_is_named_and_repaired(
    built: dict, cli: Callable, data_dir: Path, damage: str
) -> None:
    index = data_dir / "index.sqlite3"
    assert not index.with_name("index.sqlite3-wal").exists()  # all of it is in the file
    if damage == "page":
        garbage_over_page(index, page_of(index, "messages", 3))
    elif damage == "truncated":
        os.truncate(index, built["cut"])
    else:
        bad_header(index)

    check = cli("fsck")
    assert check.code == 1
    assert "problem: " in check.out and "run `kvm-digest repair`" in check.out
    if damage == "header":
        assert "does not start with SQLite's header" in check.out
    else:
        assert "quick_check" in check.out
    # Every other command names the cure, not the disk.
    for command in (("digest", "--all"), ("reindex",)):
        result = cli(*command)
        assert result.code == 1
        assert "is damaged" in result.err and "run `kvm-digest repair`" in result.err, result.err
        assert "free some disk space" not in result.err

    fixed = cli("repair")
    assert fixed.code == 0, fixed.out + fixed.err
    assert "3 subscribers" in fixed.out and "rebuilt the index: 390 messages" in fixed.out
    assert state_rows(index) == built["state"]
    assert cli("digest", "--all").out == built["digest"]
    assert cli("fsck").out.startswith("ok: 390 messages")
    kept = [p for p in data_dir.iterdir() if ".before-repair-" in p.name]
    assert len(kept) == 1 and kept[0].stat().st_mode & 0o077 == 0


def test_a_damaged_page_of_a_state_table_loses_only_that_page(
    cli: Callable, data_dir: Path
) -> None:
    many = [f"reader{n:04d}@example.org" for n in range(2000)]
    assert cli("subscribers", "add", *many).code == 0
    assert cli("import", DATA / "kvmarm-slice.mbox").code == 0
    index = data_dir / "index.sqlite3"
    garbage_over_page(index, page_of(index, "subscribers", 5))
    fixed = cli("repair")
    assert fixed.code == 1  # something was lost, and it says what
    assert "lost: subscribers: rows on damaged pages" in fixed.out
    kept = [a for (a,) in sqlite3.connect(index).execute("SELECT address FROM subscribers")]
    assert 1800 < len(kept) < 2000
    assert set(kept) < set(many)
    assert cli("fsck").out.startswith("ok: 27 messages")


def test_repair_refuses_while_the_daemon_writes(cli: Callable, data_dir: Path) -> None:
    assert cli("import", DATA / "kvmarm-slice.mbox").code == 0
    from bot.store.archive import WriterLock

    before = (data_dir / "index.sqlite3").read_bytes()
    with WriterLock(data_dir):
        result = cli("repair")
    assert result.code == 1 and "another kvm-digest process" in result.err
    assert (data_dir / "index.sqlite3").read_bytes() == before
    assert not list(data_dir.glob("*.new*"))
