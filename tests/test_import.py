"""Import from every kind of source; resumable, idempotent, crash-safe."""

from __future__ import annotations

import mailbox
import subprocess

from bot.store.archive import Archive
from bot.store.index import Index
from tests.conftest import archive_ids
from tests.mailfactory import DATA, PATCH_BODY, mail

SLICE = DATA / "kvmarm-slice.mbox"


def indexed(data_dir) -> int:
    index = Index(data_dir / "index.sqlite3")
    try:
        return index.count()
    finally:
        index.close()


def test_mboxrd_quoting_is_undone(cli, tmp_path, data_dir):
    body = "Text.\n>From here it is quoted.\n\n" + PATCH_BODY
    box = tmp_path / "in.mbox"
    raw = mail("[PATCH] quoted", "q@x", body=body).decode()
    box.write_text(
        "From mboxrd@z Thu Jan  1 00:00:00 1970\n" + raw.replace("\n>From ", "\n>>From ") + "\n"
    )
    assert cli("import", box).code == 0
    stored = subprocess.run(
        ["git", "-C", str(data_dir / "archive.git"), "show", "master:m"],
        capture_output=True,
        check=True,
    ).stdout
    assert b"\n>From here it is quoted." in stored


def test_maildir_and_eml(cli, tmp_path, data_dir):
    md = mailbox.Maildir(tmp_path / "md", create=True)
    for n in range(3):
        md.add(mail(f"[PATCH] maildir {n}", f"md{n}@x", minutes=n))
    eml = tmp_path / "one.eml"
    eml.write_bytes(mail("[PATCH] single", "eml@x", minutes=10))
    assert (
        cli("import", tmp_path / "md").out.strip().endswith("3 imported, 0 duplicates, 0 rejected")
    )
    assert cli("import", eml).out.strip().endswith("1 imported, 0 duplicates, 0 rejected")
    assert indexed(data_dir) == 4


def test_public_inbox_git_and_v2_inbox_dir(cli, tmp_path, data_dir, kvmarm_git):
    # A v2 inbox holds epochs under git/N.git; read them in order.
    inbox = tmp_path / "inbox"
    (inbox / "git").mkdir(parents=True)
    subprocess.run(
        [
            "git",
            "clone",
            "--quiet",
            "--bare",
            "--depth",
            "40",
            f"file://{kvmarm_git}",
            str(inbox / "git" / "0.git"),
        ],
        check=True,
    )
    result = cli("import", inbox)
    assert result.code == 0, result.err
    assert result.out.strip().endswith("40 imported, 0 duplicates, 0 rejected")


def test_reimport_is_idempotent_and_dedupes_copies(cli, tmp_path, data_dir):
    assert cli("import", SLICE).code == 0
    head = archive_ids(data_dir)
    again = cli("import", SLICE)
    # The mbox is read again (its position is a message number) and every
    # message is found to be present already.
    assert again.out.strip().endswith("0 imported, 27 duplicates, 0 rejected")
    assert archive_ids(data_dir) == head
    # The same message with other transport headers is the same message...
    copy = tmp_path / "copy.eml"
    first = mailbox.mbox(SLICE)[0].as_bytes()
    copy.write_bytes(b"Received: from elsewhere; Mon, 1 Jan 2024 00:00:00 +0000\n" + first)
    assert cli("import", copy).out.strip().endswith("0 imported, 1 duplicates, 0 rejected")
    # ...but the same Message-ID with other content is another message.
    other = tmp_path / "other.eml"
    other.write_bytes(first.replace(b"\n\n", b"\n\nAn edited copy.\n", 1))
    assert cli("import", other).out.strip().endswith("1 imported, 0 duplicates, 0 rejected")


def test_resumes_a_git_source_where_it_stopped(cli, data_dir, kvmarm_git, tmp_path):
    partial = tmp_path / "partial.git"
    subprocess.run(
        [
            "git",
            "clone",
            "--quiet",
            "--bare",
            "--depth",
            "1",
            f"file://{kvmarm_git}",
            str(partial),
        ],
        check=True,
    )
    head = subprocess.run(
        ["git", "-C", str(kvmarm_git), "rev-list", "--reverse", "master"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    ids = head.split()

    def grow_to(count: int) -> None:  # upstream gains commits, as after a git fetch
        subprocess.run(
            [
                "git",
                "-C",
                str(partial),
                "fetch",
                "--quiet",
                str(kvmarm_git),
                f"+{ids[count - 1]}:refs/heads/master",
            ],
            check=True,
        )

    # A source that has 10 commits, then later 25: the second run reads 15.
    grow_to(10)
    assert cli("import", partial).out.strip().endswith("10 imported, 0 duplicates, 0 rejected")
    grow_to(25)
    assert cli("import", partial).out.strip().endswith("15 imported, 0 duplicates, 0 rejected")
    assert indexed(data_dir) == 25


def test_crash_between_archive_and_index_heals_on_next_open(cli, data_dir):
    assert cli("import", SLICE).code == 0
    archive = Archive.open(data_dir / "archive.git", writable=True)
    from bot.parse.message import parse_message

    raw = mail("[PATCH] appended, then the process died", "crash@x", minutes=99)
    archive.append([(raw, parse_message(raw))])  # archive written, index not
    assert indexed(data_dir) == 27
    out = cli("digest", "--all").out
    assert "New:  appended, then the process died" in out
    assert indexed(data_dir) == 28


def test_reindex_rebuilds_the_same_index(cli, data_dir):
    cli("import", SLICE)
    before = cli("digest", "--all").out
    (data_dir / "index.sqlite3").unlink()
    assert cli("reindex").out.strip() == "indexed 27 messages"
    assert cli("digest", "--all").out == before


def test_mirror_mode_indexes_a_public_inbox_epoch_in_place(cli, tmp_path, data_dir):
    # Build an epoch (as lore would have it), then mirror it read-only.
    upstream = tmp_path / "upstream"
    assert cli("import", SLICE).code == 0
    (data_dir / "archive.git").rename(upstream)
    mirror_data = tmp_path / "mirror-data"
    out = cli("--archive", upstream, "digest", "--all")
    assert out.code == 0, out.err
    ids = subprocess.run(
        ["git", "-C", str(upstream), "rev-parse", "master"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out.out.startswith(f"From 000000000 to {ids[:9]}\n")
    # New commits after a fetch are picked up.
    epoch = Archive.open(upstream, writable=True)
    from bot.parse.message import parse_message

    raw = mail("[PATCH] fetched later", "later@x", minutes=500)
    epoch.append([(raw, parse_message(raw))])
    assert "New:  fetched later" in cli("--archive", upstream, "digest", "--all").out
    # Mirrors are read-only for kvm-digest.
    refused = cli("--archive", upstream, "import", SLICE)
    assert refused.code == 1
    assert "read-only mirror" in refused.err
    assert not mirror_data.exists()


def test_a_bulk_import_copies_its_wal_back_before_the_daemon_writes_again(tmp_path):
    """While indexing in bulk the WAL may grow to BULK_CHECKPOINT_PAGES; when
    the bulk ends, every page of it is in the index file already, so the next
    small commit elsewhere (an LMTP delivery on the event loop) copies nothing."""
    import sqlite3

    from bot.store.index import BULK_CHECKPOINT_PAGES
    from tests.mailfactory import Store

    store = Store(tmp_path)
    during: list[int] = []

    def progress(_count: int) -> None:
        during.append(store.index.conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0])

    raws = [mail(f"[PATCH] KVM: change {i}", f"bulk{i}@example.org") for i in range(2100)]
    store.importer.run([(str(i), raw) for i, raw in enumerate(raws)], "test", progress=progress)
    assert during and set(during) == {BULK_CHECKPOINT_PAGES}
    conn = store.index.conn
    assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000
    other = sqlite3.connect(tmp_path / "index.sqlite3")
    busy, frames, copied = other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    assert busy == 0 and frames > 0 and copied == frames
    assert other.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 2100
    other.close()
