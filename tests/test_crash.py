"""SIGKILL at random points, restart, and nothing is lost or doubled.

The importer is killed again and again while it imports real kvmarm mail
(git fast-import may be mid-pack, the index mid-transaction); every restart
resumes, and at the end `kvm-digest fsck` finds the archive and the index in
agreement, with every message exactly once.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys

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
    from bot.index import Index

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
    from bot.index import Index

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
