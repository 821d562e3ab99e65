"""An import from a git epoch copies its blobs as stored, with the same result.

The donor here is a real public-inbox-shaped epoch written by git and then
repacked by git, so its blobs are deltas: fast-import (run with --depth=0)
never writes one, so a delta in our archive is a blob that was copied.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest

from bot.parse.message import parse_within
from bot.store.archive import FAST_IMPORT_BATCH, Archive
from tests.mailfactory import mail

BATCH = FAST_IMPORT_BATCH  # the smallest batch that goes through git fast-import


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
    ).stdout


def batches(count: int, start: int = 0) -> list[list[tuple[bytes, object]]]:
    """`count` batches of similar patches (so that git deltas them), parsed."""
    out = []
    for b in range(count):
        raws = [
            mail(f"[PATCH {i + 1}/{BATCH}] KVM: change {start + b}.{i}", f"c{start + b}.{i}@x")
            for i in range(BATCH)
        ]
        out.append([(raw, parse_within(raw, 1 << 20)) for raw in raws])
    return out


def written(path: Path, parts: list[list[tuple[bytes, object]]], donors=()) -> Archive:
    """An archive with `parts` appended through one bulk writer, a batch at a time."""
    archive = Archive.create(path)
    with archive.bulk(donors):
        for batch in parts:
            archive.start_append(batch).wait()
    return archive


@pytest.fixture
def donor(tmp_path: Path) -> tuple[Path, list[list[tuple[bytes, object]]]]:
    """A repacked epoch of two batches, and the batches."""
    parts = batches(2)
    path = tmp_path / "donor.git"
    written(path, parts)
    git(path, "repack", "-adfq")
    assert "blob" in git(path, "verify-pack", "-v", *_idx(path))
    return path, parts


def _idx(repo: Path) -> list[str]:
    return [str(p) for p in sorted((repo / "objects" / "pack").glob("*.idx"))]


def deltas(repo: Path) -> int:
    """Blobs stored as deltas in the repository's packs."""
    lines = git(repo, "verify-pack", "-v", *_idx(repo)).splitlines()
    return sum(1 for line in lines if " blob " in line and len(line.split()) >= 7)


def test_blobs_come_as_stored_and_the_history_is_the_same(tmp_path, donor):
    path, parts = donor
    before = sorted(p.name for p in (path / "objects").rglob("*"))
    copied = written(tmp_path / "copied.git", parts, [path])
    sent = written(tmp_path / "sent.git", parts)
    # The same commits, trees and blobs, whichever way the blobs came...
    assert copied.head() == sent.head() == Archive.open(path).head()
    objects = git(copied.path, "rev-list", "--objects", "master")
    assert objects == git(sent.path, "rev-list", "--objects", "master")
    assert len(objects.splitlines()) == 3 * 2 * BATCH
    # ...but these were copied (deltas, which fast-import does not write)...
    assert deltas(copied.path) > 0
    assert deltas(sent.path) == 0
    # ...into the archive, which needs nothing of the donor: no alternates,
    # and git finds every object of its history in it alone.
    assert not (copied.path / "objects" / "info" / "alternates").exists()
    git(copied.path, "fsck", "--strict", "--no-dangling")
    # The donor was only read.
    assert sorted(p.name for p in (path / "objects").rglob("*")) == before


def test_a_second_batch_finds_the_pack_copied_after_git_started(tmp_path, donor):
    path, parts = donor
    # Each batch's blobs are copied just before its commits are sent, into
    # a pack fast-import did not see when it started.
    archive = written(tmp_path / "archive.git", parts, [path])
    assert int(git(archive.path, "rev-list", "--count", "master")) == 2 * BATCH
    packs = list((archive.path / "objects" / "pack").glob("*.pack"))
    assert len(packs) == 4  # per batch: the copied blobs, and fast-import's commits


def test_only_what_a_donor_holds_is_copied(tmp_path, donor):
    path, parts = donor
    mixed = [parts[0][: BATCH // 2] + batches(1, start=9)[0][: BATCH // 2]]
    archive = written(tmp_path / "archive.git", mixed, [path])
    assert archive.head() == written(tmp_path / "sent.git", mixed).head()
    # Two packs: the donor's half of the blobs copied, then fast-import's
    # (the other half, and the commits and trees).
    listed = git(archive.path, "verify-pack", "-v", *_idx(archive.path)).splitlines()
    blobs = [line.split()[0] for line in listed if " blob " in line]
    assert len(_idx(archive.path)) == 2 and len(blobs) == BATCH
    git(archive.path, "fsck", "--strict", "--no-dangling")


def test_a_git_dir_in_the_environment_does_not_move_the_copy(tmp_path, donor, monkeypatch):
    path, parts = donor
    elsewhere = Archive.create(tmp_path / "elsewhere.git").path
    monkeypatch.setenv("GIT_DIR", str(elsewhere))
    monkeypatch.setenv("GIT_OBJECT_DIRECTORY", str(elsewhere / "objects"))
    archive = written(tmp_path / "archive.git", parts, [path])
    assert archive.head() == Archive.open(path).head()
    assert deltas(archive.path) > 0
    assert not list((elsewhere / "objects" / "pack").glob("*.pack"))
    # Reading goes to the archive too (rev-list and cat-file), not to GIT_DIR's.
    assert [raw for _, raw in archive.walk()] == [raw for batch in parts for raw, _ in batch]


def test_a_batch_that_cannot_be_sent_fails_with_its_reason(tmp_path, donor, monkeypatch):
    import threading

    from bot.errors import DigestError
    from bot.store import archive as module

    path, parts = donor

    def broken(self, blobs, archive):
        raise MemoryError("no room for the batch")

    monkeypatch.setattr(module.Donors, "copy", broken)
    archive = Archive.create(tmp_path / "archive.git")
    raised: list[BaseException] = []

    def run() -> None:
        try:
            with archive.bulk([path]):
                archive.start_append(parts[0]).wait()
        except DigestError as err:
            raised.append(err)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(60)  # a bound on a failure, not a synchronisation: it returns at once
    assert not worker.is_alive(), "waited for git's progress line for ever"
    assert len(raised) == 1
    assert "could not be sent to git fast-import (MemoryError: no room" in str(raised[0])
    assert archive.head() is None


def test_a_users_glibc_tunables_come_after_ours():
    from bot.store.archive import _padded_heap

    env = _padded_heap({"GLIBC_TUNABLES": "glibc.malloc.top_pad=0", "PATH": "/bin"})
    assert env == {
        "GLIBC_TUNABLES": "glibc.malloc.top_pad=16777216:glibc.malloc.top_pad=0",
        "PATH": "/bin",
    }
    assert _padded_heap({})["GLIBC_TUNABLES"] == "glibc.malloc.top_pad=16777216"


def test_a_copy_that_fails_is_said_once_and_the_blobs_are_sent(tmp_path, donor, caplog):
    path, parts = donor
    # The donor's index still names every blob, but its pack cannot give
    # them: git pack-objects fails on the first.
    (pack,) = (path / "objects" / "pack").glob("*.pack")
    pack.chmod(0o644)
    data = bytearray(pack.read_bytes())
    data[12 : len(data) - 20] = bytes(len(data) - 32)
    pack.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="bot.store.archive"):
        archive = written(tmp_path / "archive.git", parts, [path])
    said = [r.getMessage() for r in caplog.records if "could not copy" in r.getMessage()]
    assert len(said) == 1, said
    assert "git fast-import packs them instead" in said[0]
    assert archive.head() == written(tmp_path / "sent.git", parts).head()
    assert deltas(archive.path) == 0
    git(archive.path, "fsck", "--strict", "--no-dangling")


def test_a_donor_that_is_not_a_repository_is_passed_over(tmp_path):
    parts = batches(1)
    archive = written(tmp_path / "archive.git", parts, [tmp_path / "nothing-here"])
    assert archive.head() == written(tmp_path / "sent.git", parts).head()


def test_kvm_digest_import_of_an_epoch_copies_it(cli, data_dir, donor):
    path, _ = donor
    result = cli("import", path)
    assert result.code == 0, result.err
    assert result.out.strip().endswith(f"{2 * BATCH} imported, 0 duplicates, 0 rejected")
    archive = data_dir / "archive.git"
    assert Archive.open(archive).head() == Archive.open(path).head()
    assert deltas(archive) > 0
    git(archive, "fsck", "--strict", "--no-dangling")
