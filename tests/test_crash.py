"""SIGKILL at random points, restart, and nothing is lost or doubled.

The importer is killed again and again while it imports real kvmarm mail
(git fast-import may be mid-pack, the index mid-transaction); every restart
resumes, and at the end `kvm-digest fsck` finds the archive and the index in
agreement, with every message exactly once.
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import sys
from pathlib import Path

from bot.cli import main
from tests.mailfactory import first_commits

SEED = int(os.environ.get("KVM_DIGEST_CRASH_SEED", "20261121"))


def test_sigkill_the_importer_at_random_points(tmp_path, kvmarm_git, capsys):
    source = first_commits(kvmarm_git, tmp_path / "source.git", 6000)
    data = tmp_path / "var"
    rng = random.Random(SEED)
    command = [sys.executable, "-m", "bot.cli", "--data-dir", str(data), "import", str(source)]
    kills = 0
    for _ in range(40):
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=rng.uniform(0.3, 1.5))  # the random point of the kill
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            kills += 1
            continue
        assert proc.returncode == 0
        break  # it finished between kills
    assert kills >= 3, f"seed {SEED}: only {kills} kills; the test proved little"
    # The last run, uninterrupted.
    assert subprocess.run(command, capture_output=True).returncode == 0
    capsys.readouterr()
    assert main(["--data-dir", str(data), "fsck"]) == 0
    assert "ok: 6000 messages; the archive and the index agree" in capsys.readouterr().out
    from bot.store.index import Index

    index = Index(data / "index.sqlite3")
    try:
        unique = index.conn.execute(
            "SELECT COUNT(DISTINCT message_id || content_hash) FROM messages"
        ).fetchone()[0]
    finally:
        index.close()
    assert unique == 6000, f"seed {SEED}"


def test_fsck_reports_an_index_that_disagrees(cli, data_dir):
    from tests.mailfactory import DATA

    assert cli("import", DATA / "kvmarm-slice.mbox").code == 0
    assert cli("fsck").out.strip() == "ok: 27 messages; the archive and the index agree"
    from bot.store.index import Index

    index = Index(data_dir / "index.sqlite3")
    with index.conn:
        index.conn.execute("DELETE FROM messages WHERE seq = 5")
    index.close()
    result = cli("fsck")
    assert result.code == 1
    assert "problem: 1 archived messages are not in the index" in result.out
    assert "kvm-digest reindex" in result.out
    assert cli("reindex").code == 0
    assert cli("fsck").code == 0


def test_fsck_calls_an_index_behind_the_archive_no_damage(cli, data_dir):
    """A restored backup, or a daemon still catching up: behind, not broken."""
    from tests.mailfactory import DATA

    assert cli("import", DATA / "kvmarm-slice.mbox").code == 0
    from bot.store.index import Index

    index = Index(data_dir / "index.sqlite3")
    with index.conn:
        (last,) = index.conn.execute("SELECT commit_id FROM messages WHERE seq = 24").fetchone()
        index.conn.execute("DELETE FROM messages WHERE seq > 24")
        index.set_meta("last_commit", last)
    index.close()
    result = cli("fsck")
    assert result.code == 0, result.out
    assert "note: the index is 3 messages behind the archive" in result.out
    assert "ok: 24 of 27 messages indexed; so far they agree" in result.out
    assert "problem" not in result.out and "the archive and the index agree" not in result.out
    assert cli("digest", "--all").code == 0  # which indexes them
    assert cli("fsck").out.strip() == "ok: 27 messages; the archive and the index agree"


def run_limited(command: list[str], fsize: int) -> subprocess.CompletedProcess:
    """Run a command that may not write any file past `fsize` bytes (a full disk)."""
    import resource
    import signal

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.run(command, capture_output=True, text=True, preexec_fn=limit)


def test_a_full_disk_is_a_clear_error_and_corrupts_nothing(tmp_path, kvmarm_git, capsys):
    source = first_commits(kvmarm_git, tmp_path / "source.git", 3000)
    data = tmp_path / "var"
    command = [sys.executable, "-m", "bot.cli", "--data-dir", str(data), "import", str(source)]
    # No file may grow past 2 MB: the first pack of 1,000 messages (~3 MB) fails.
    full = run_limited(command, 2 * 1024 * 1024)
    assert full.returncode == 1
    errors = [line for line in full.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, full.stderr
    assert "free some disk space" in errors[0]
    # Space again: the import resumes and everything agrees.
    assert subprocess.run(command, capture_output=True).returncode == 0
    capsys.readouterr()
    assert main(["--data-dir", str(data), "fsck"]) == 0
    assert "ok: 3000 messages" in capsys.readouterr().out


@contextlib.contextmanager
def read_only(path: Path):
    """Make a directory read-only: a read-only bind mount as root (root ignores
    permission bits), plain permissions otherwise."""
    if os.getuid() == 0:
        subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
        try:
            subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True)
            yield
        finally:
            subprocess.run(["umount", str(path)], check=True)
    else:
        paths = [path, *path.rglob("*")]
        for p in paths:
            p.chmod(0o555 if p.is_dir() else 0o444)
        try:
            yield
        finally:
            for p in paths:
                p.chmod(0o755 if p.is_dir() else 0o644)


def test_a_read_only_data_dir_is_a_clear_error(tmp_path):
    from tests.mailfactory import DATA

    data = tmp_path / "var"
    command = [sys.executable, "-m", "bot.cli", "--data-dir", str(data)]
    assert (
        subprocess.run(
            [*command, "import", str(DATA / "kvmarm-slice.mbox")], capture_output=True
        ).returncode
        == 0
    )
    before = subprocess.run([*command, "digest", "--all"], capture_output=True).stdout
    with read_only(data):
        result = subprocess.run(
            [*command, "import", str(DATA / "reference" / "000.mbox")],
            capture_output=True,
            text=True,
        )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvm-digest: error: "), result.stderr
    if os.getuid() == 0:  # a read-only mount, as ProtectSystem=strict makes one
        assert "read-only file system" in lines[0]
        assert f"add ReadWritePaths={data} to the unit" in lines[0]
    else:
        assert "may not write" in lines[0] and "fix its owner or permissions" in lines[0]
    after = subprocess.run([*command, "digest", "--all"], capture_output=True).stdout
    assert after == before  # nothing changed
