"""Upgrades migrate: an index written by the previous release, opened by today's code.

The previous release's code is this repository's own history (the commit
before topics and the full digest were merged, which added the paths,
trailers, applied and works tables), unpacked with `git archive` into a
temporary directory and run as it was. Its index must read, with today's
code, exactly as an index built by today's code does.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "kvm-sample.mbox"
PREVIOUS_RELEASE = "42a822d"
"""main before "Merge issue14" (topics) and "Merge issue13" (the full digest)."""


def checkout(commit: str, dest: Path) -> Path:
    """The source tree of `commit`, read from git without touching this checkout."""
    tar = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", commit, "bot"],
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(tar)) as archive:
        archive.extractall(dest, filter="data")
    return dest


def kvm_digest(code: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """`kvm-digest ARGS` run with the bot package found at `code`."""
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=code,  # `python -m` puts the working directory first on sys.path
        timeout=300,
    )


def test_an_index_of_the_previous_release_reads_as_a_fresh_one(tmp_path: Path) -> None:
    old = checkout(PREVIOUS_RELEASE, tmp_path / "previous")
    upgraded, fresh = tmp_path / "upgraded", tmp_path / "fresh"
    result = kvm_digest(old, "--data-dir", upgraded, "import", SAMPLE)
    assert result.returncode == 0, result.stderr
    assert "63 imported" in result.stdout
    assert (
        kvm_digest(old, "--data-dir", upgraded, "subscribers", "add", "a@example.org").returncode
        == 0
    )
    # The same archive, indexed from scratch by today's code.
    shutil.copytree(upgraded / "archive.git", fresh / "archive.git")

    def today(data: Path, *args: str) -> str:
        result = kvm_digest(ROOT, "--data-dir", data, *args)
        assert result.returncode == 0, result.stderr
        return result.stdout

    for query in ("dfn:arch/arm64/", "dfn:target/ OR dfn:drivers/"):
        topic = today(upgraded, "digest", "--all", "--query", query)
        assert topic == today(fresh, "digest", "--all", "--query", query)
        assert "===== Patch list" in topic and "[PATCH" in topic  # the topic matched
    full = today(upgraded, "digest", "--all")
    assert full == today(fresh, "digest", "--all")
    assert "Reviewed-by" in full  # the full digest's review lines
    assert today(upgraded, "subscribers", "list").startswith("a@example.org")
    assert today(upgraded, "fsck").startswith("ok: 63 messages")
