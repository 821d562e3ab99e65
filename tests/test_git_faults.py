"""The git doors: a damaged pack is an error, not deletions; sizes are checked before reads.

Every archive here is real git (packs written by git fast-import, as our
importer and public-inbox write them), damaged the way disks damage files:
bytes overwritten in the middle of a pack.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from bot.parse.message import parse_lenient
from bot.store.archive import Archive
from tests.mailfactory import mail

ROOT = Path(__file__).resolve().parents[1]


def messages(count: int, start: int = 0) -> list[bytes]:
    """Distinct small patches, each with text of its own (so packs hold real data)."""
    return [
        mail(
            f"[PATCH] KVM: fix number {n}",
            f"fix-{n}@example.org",
            body=f"Fix {n}.\n\n"
            + "".join(f"line {n}.{i} {os.urandom(8).hex()}\n" for i in range(40)),
            minutes=n,
        )
        for n in range(start, start + count)
    ]


def mirror(path: Path, raws: list[bytes]) -> Archive:
    archive = Archive.create(path)
    archive.append((raw, parse_lenient(raw)) for raw in raws)
    return archive


def revs(repo: Path) -> list[str]:
    out = subprocess.run(
        ["git", "-C", str(repo), "rev-list", "--reverse", "master"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split()


def indexed(data_dir: Path) -> list[str]:
    conn = sqlite3.connect(data_dir / "index.sqlite3")
    try:
        return [r[0] for r in conn.execute("SELECT commit_id FROM messages ORDER BY seq")]
    finally:
        conn.close()


def last_commit(data_dir: Path) -> str | None:
    conn = sqlite3.connect(data_dir / "index.sqlite3")
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'last_commit'").fetchone()
    finally:
        conn.close()
    return row[0] if row else None


def damage_blob(repo: Path, commit: str) -> None:
    """Overwrite bytes inside the packed message of `commit`, as a bad sector would."""
    blob = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", f"{commit}:m"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (index,) = (repo / "objects" / "pack").glob("*.idx")
    listing = subprocess.run(
        ["git", "-C", str(repo), "verify-pack", "-v", str(index)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # "<oid> <type> <size> <size-in-pack> <offset>"
    offset = next(int(line.split()[4]) for line in listing.splitlines() if line.startswith(blob))
    pack = index.with_suffix(".pack")
    pack.chmod(0o644)
    with pack.open("r+b") as f:
        f.seek(offset + 8)
        f.write(b"\xa5" * 64)


def test_a_damaged_pack_stops_the_catch_up_where_it_is(tmp_path: Path, cli: Callable) -> None:
    repo = tmp_path / "mirror.git"
    mirror(repo, messages(400))
    pristine = tmp_path / "pristine.git"
    shutil.copytree(repo, pristine)
    order = revs(pristine)
    damage_blob(repo, order[250])

    result = cli("--archive", repo, "digest", "--all")
    assert result.code == 1
    assert "is damaged at commit" in result.err and "git -C" in result.err
    data_dir = tmp_path / "var"
    done = indexed(data_dir)
    # Before the damage everything, from it nothing: no commit read as a deletion.
    assert done == order[:250]
    assert last_commit(data_dir) == order[249]
    assert order[250] in result.err

    # fsck says what git says, and which commit; it never crashes.
    check = cli("--archive", repo, "fsck")
    assert check.code == 1
    assert "problem: git fsck finds" in check.out and "damaged" in check.out
    assert "restore the damaged archive from a backup" in check.out
    assert "Traceback" not in check.out + check.err

    # The archive restored, the next command reads the rest, and all agree.
    shutil.rmtree(repo)
    shutil.copytree(pristine, repo)
    result = cli("--archive", repo, "digest", "--all")
    assert result.code == 0, result.err
    assert indexed(data_dir) == order
    assert cli("--archive", repo, "fsck").out.startswith("ok: 400 messages")


def test_a_missing_object_is_not_a_deletion(tmp_path: Path, cli: Callable) -> None:
    """A loose blob gone (a half-copied mirror): the catch-up stops before it."""
    repo = tmp_path / "mirror.git"
    archive = mirror(repo, messages(10))  # small batches are written loose
    order = revs(repo)
    blob = archive.repo.revparse_single(f"{order[6]}:m").id
    loose = repo / "objects" / str(blob)[:2] / str(blob)[2:]
    loose.unlink()
    result = cli("--archive", repo, "digest", "--all")
    assert result.code == 1 and "is damaged at commit" in result.err
    assert indexed(tmp_path / "var") == order[:6]
    check = cli("--archive", repo, "fsck")
    assert check.code == 1 and "problem: " in check.out


def test_a_real_deletion_still_moves_the_position(tmp_path: Path, cli: Callable) -> None:
    """public-inbox's deletion: a commit whose tree has no m (here: an empty tree)."""
    repo = tmp_path / "mirror.git"
    mirror(repo, messages(3))
    empty = subprocess.run(
        ["git", "-C", str(repo), "hash-object", "-t", "tree", "-w", "--stdin"],
        input="",
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    deletion = subprocess.run(
        ["git", "-C", str(repo), "commit-tree", empty, "-p", "master", "-m", "delete"],
        capture_output=True,
        text=True,
        check=True,
        env={
            **os.environ,
            "GIT_AUTHOR_NAME": "a",
            "GIT_AUTHOR_EMAIL": "a@b",
            "GIT_COMMITTER_NAME": "a",
            "GIT_COMMITTER_EMAIL": "a@b",
        },
    ).stdout.strip()
    subprocess.run(
        ["git", "-C", str(repo), "update-ref", "refs/heads/master", deletion], check=True
    )
    Archive.open(repo)  # still an archive
    later = Archive.open(repo, writable=True)
    later.append((raw, parse_lenient(raw)) for raw in messages(2, start=3))
    result = cli("--archive", repo, "digest", "--all")
    assert result.code == 0, result.err
    assert len(indexed(tmp_path / "var")) == 5
    assert last_commit(tmp_path / "var") == revs(repo)[-1]
    assert cli("--archive", repo, "fsck").out.startswith("ok: 5 messages")


def peak_rss_kb(args: list[str], cwd: Path) -> tuple[int, subprocess.CompletedProcess[str]]:
    """Run `kvm-digest ARGS` in a child that reports its own peak RSS."""
    # VmHWM, not getrusage: ru_maxrss survives exec, so it would count the
    # memory of the test process the child was forked from.
    code = (
        "import re, sys\n"
        "from bot.cli import main\n"
        "status = main(sys.argv[1:])\n"
        "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)\n"
        "print('RSS', hwm, file=sys.stderr)\n"
        "sys.exit(status)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )
    rss = next(
        int(line.split()[1]) for line in result.stderr.splitlines() if line.startswith("RSS")
    )
    return rss, result


def test_an_oversized_message_in_a_mirror_is_recorded_and_never_read(tmp_path: Path) -> None:
    repo = tmp_path / "mirror.git"
    head = mail("[PATCH] a 200 MB patch", "huge@example.org", body="", minutes=1)
    huge = head + b"x" * (200 * 1024 * 1024)
    archive = Archive.create(repo)
    archive.append((raw, parse_lenient(raw)) for raw in messages(2))
    archive.append([(huge, parse_lenient(head))])  # its own commit, as a list would send it
    del huge
    archive.append((raw, parse_lenient(raw)) for raw in messages(2, start=5))
    config = tmp_path / "kvm-digest.toml"
    config.write_text(f'[archive]\npath = "{repo}"\n[import]\nmax_message_size = 1048576\n')
    data = tmp_path / "var"
    base = ["--config", str(config), "--data-dir", str(data)]
    rss, result = peak_rss_kb([*base, "digest", "--all"], ROOT)
    assert result.returncode == 0, result.stderr
    assert rss < 150 * 1024, f"peak RSS {rss} KB: the 200 MB blob was read"
    assert "skipped" in result.stderr and "more than the limit of 1048576" in result.stderr
    # Recorded where other doors record what they cannot take; the position moved on.
    assert len(indexed(data)) == 4
    assert last_commit(data) == revs(repo)[-1]
    failed = subprocess.run(
        [sys.executable, "-m", "bot.cli", *base, "failed"], capture_output=True, text=True, cwd=ROOT
    )
    (line,) = [line for line in failed.stdout.splitlines() if line.startswith("list ")]
    assert f"commit {revs(repo)[2]}" in line and "more than the limit of 1048576" in line
    # Agreement counts it as skipped, not missing.
    check = subprocess.run(
        [sys.executable, "-m", "bot.cli", *base, "fsck"], capture_output=True, text=True, cwd=ROOT
    )
    assert check.stdout.startswith("ok: 4 messages"), check.stdout


def test_an_m_that_is_not_a_file_is_recorded_and_passed(tmp_path: Path, cli: Callable) -> None:
    """A hostile mirror's commit whose m is a directory: skipped with its reason."""
    repo = tmp_path / "mirror.git"
    mirror(repo, messages(2))
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "a",
        "GIT_AUTHOR_EMAIL": "a@b",
        "GIT_COMMITTER_NAME": "a",
        "GIT_COMMITTER_EMAIL": "a@b",
    }

    def git(*args: str, stdin: str = "") -> str:
        return subprocess.run(
            ["git", "-C", str(repo), *args],
            input=stdin,
            capture_output=True,
            text=True,
            check=True,
            env=env,
        ).stdout.strip()

    inner = git(
        "mktree", stdin=f"100644 blob {git('hash-object', '-w', '--stdin', stdin='x')}\tf\n"
    )
    tree = git("mktree", stdin=f"040000 tree {inner}\tm\n")
    odd = git("commit-tree", tree, "-p", "master", "-m", "odd")
    git("update-ref", "refs/heads/master", odd)
    Archive.open(repo, writable=True).append(
        (raw, parse_lenient(raw)) for raw in messages(1, start=9)
    )
    result = cli("--archive", repo, "digest", "--all")
    assert result.code == 0, result.err
    assert len(indexed(tmp_path / "var")) == 3
    assert "its m is a git tree, not a message" in cli("--archive", repo, "failed").out


def test_git_answers_into_a_pipe_a_hundred_messages_deep(tmp_path: Path) -> None:
    """git runs ahead of the indexer: its answer pipe holds 1 MB, not 64 KB.

    Where the system allows a pipe that big (Linux's default limit, and
    always for root); a smaller limit leaves the pipe as it is, and the
    reading works the same.
    """
    import fcntl

    from bot.store import gitread

    raws = messages(3)
    archive = mirror(tmp_path / "git", raws)
    cat = gitread.CatFile(archive.path, "--batch")
    try:
        assert cat.proc.stdout is not None
        size = fcntl.fcntl(cat.proc.stdout.fileno(), fcntl.F_GETPIPE_SZ)
        limit = int(Path("/proc/sys/fs/pipe-max-size").read_text())
        if limit >= gitread.ANSWER_PIPE or os.geteuid() == 0:  # root passes the limit
            assert size == gitread.ANSWER_PIPE
        else:
            assert size <= limit
        (first, *_) = revs(archive.path)
        cat.ask([f"{first}:m".encode()])
        _oid, kind, length = cat.line(first).split()
        assert kind == b"blob"
        assert cat.content(int(length), first) == raws[0]
    finally:
        cat.close()
