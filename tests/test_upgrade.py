"""Upgrades migrate: an index written by the previous release, opened by today's code.

The previous release's code is this repository's own history (the commit
before topics and the full digest were merged, which added the paths,
trailers, applied and works tables). Its `bot/` package is shipped in
tests/data/upgrade (80 KB, made by `git archive --prefix=previous/ 42a822d
bot | xz -9`), so the test runs in a shallow or fresh clone too; it is
unpacked into a temporary directory and run as it was. Its index must read,
with today's code, exactly as an index built by today's code does.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "kvm-sample.mbox"
PREVIOUS_RELEASE = ROOT / "tests" / "data" / "upgrade" / "kvm-digest-42a822d.tar.xz"
"""main at 42a822d, before "Merge issue14" (topics) and "Merge issue13" (the full digest)."""


def unpack(tarball: Path, dest: Path) -> Path:
    """The previous release's source tree, as its `bot/` package was."""
    with tarfile.open(tarball) as archive:
        archive.extractall(dest, filter="data")
    return dest / "previous"


def kvm_digest(code: Path, config: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """`kvm-digest --config CONFIG ARGS` run with the bot package found at `code`.

    Every run has a config of its own, so the checkout's config/kvm-digest.toml
    (whatever an admin put there) is never read.
    """
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", "--config", str(config), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=code,  # `python -m` puts the working directory first on sys.path
        timeout=300,
    )


def test_an_index_of_the_previous_release_reads_as_a_fresh_one(tmp_path: Path) -> None:
    old = unpack(PREVIOUS_RELEASE, tmp_path)
    config = tmp_path / "empty.toml"
    config.write_text("# the defaults\n")
    upgraded, fresh = tmp_path / "upgraded", tmp_path / "fresh"
    result = kvm_digest(old, config, "--data-dir", upgraded, "import", SAMPLE)
    assert result.returncode == 0, result.stderr
    assert "63 imported" in result.stdout
    assert (
        kvm_digest(
            old, config, "--data-dir", upgraded, "subscribers", "add", "a@example.org"
        ).returncode
        == 0
    )
    # The same archive, indexed from scratch by today's code.
    shutil.copytree(upgraded / "archive.git", fresh / "archive.git")

    def today(data: Path, *args: str) -> str:
        result = kvm_digest(ROOT, config, "--data-dir", data, *args)
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
