"""Errors that name their cause, and the fix that goes with it.

What an admin meets deploying the unit: files that belong to another user
(git refuses them), a path outside the sandbox's writable paths (a read-only
file system, not a full disk), and a command that needs the writer lock the
running daemon holds. Each is produced for real: files chowned to another
uid, commands run as another user, the unit's ProtectSystem=strict rebuilt
with a private mount namespace, a daemon process holding the lock.
"""

from __future__ import annotations

import mailbox
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.parse.message import parse_lenient
from bot.store.archive import Archive
from tests.mailfactory import DATA
from tests.sandbox import NOBODY, as_user, kvm_digest, need_root, sandboxed
from tests.test_daemon import DaemonProcess

SLICE = [m.as_bytes() for m in mailbox.mbox(DATA / "kvmarm-slice.mbox")]
OTHER = 12345


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvm-digest: error: "), result.stderr
    return lines[0]


def run(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(kvm_digest(*args), capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture
def upstream(tmp_path: Path) -> Path:
    """A public-inbox v2 inbox on disk with one epoch of real mail."""
    root = tmp_path / "lore" / "kvm"
    Archive.create(root / "git" / "0.git").append((r, parse_lenient(r)) for r in SLICE[:10])
    return root


# -- another owner ------------------------------------------------------------


def test_root_on_another_users_archive_is_told_safe_directory_or_chown(tmp_path: Path) -> None:
    """The service's files belong to its dynamic user; root running a command on
    them used to hear "is not a git repository"."""
    need_root("chown to another uid")
    data = tmp_path / "var"
    assert run("--data-dir", data, "import", DATA / "reference" / "000.mbox").returncode == 0
    subprocess.run(["chown", "-R", f"{OTHER}:{OTHER}", str(data)], check=True)
    archive = (data / "archive.git").absolute()
    for command in (["fsck"], ["import", DATA / "reference" / "002.mbox"]):
        line = one_line_error(run("--data-dir", data, *command))
        assert f"git refuses to open {archive}: it belongs to uid {OTHER}" in line
        assert f"`git config --global --add safe.directory {archive}`" in line
        assert f"`chown -R 0 {archive}`" in line
        assert "is not a git repository" not in line
    # The first fix it names works, for libgit2 as for git.
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home)}
    subprocess.run(
        ["git", "config", "--global", "--add", "safe.directory", str(archive)], env=env, check=True
    )
    fixed = run("--data-dir", data, "fsck", env=env)
    assert fixed.returncode == 0 and fixed.stdout.startswith("ok: 7 messages"), fixed.stderr


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory other users can enter (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="kvm-digest-shared-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def test_a_user_on_a_mirror_someone_else_fetched_is_told_whose_it_is(
    upstream: Path, shared_dir: Path
) -> None:
    """A login (here nobody) reading root's mirror: git's dubious-ownership refusal."""
    mirror = shared_dir / "kvm"
    shutil.copytree(upstream, mirror)
    subprocess.run(["chmod", "-R", "a+rX", str(mirror)], check=True)
    data = shared_dir / "var"
    data.mkdir()
    os.chown(data, NOBODY, NOBODY)
    result = as_user(NOBODY, kvm_digest("--data-dir", data, "--archive", mirror, "fsck"), cwd="/")
    line = one_line_error(result)
    epoch = mirror / "git" / "0.git"
    assert f"git refuses to open {epoch}: it belongs to uid 0, not to this user" in line
    assert f"(uid {NOBODY})" in line and "safe.directory" in line


def test_a_followed_mirror_of_another_owner_is_not_a_network_error(
    upstream: Path, tmp_path: Path
) -> None:
    need_root("chown to another uid")
    config = tmp_path / "follow.toml"
    config.write_text(
        f'[archive]\nfollow = "{upstream.as_uri()}"\n[data]\ndir = "{tmp_path / "var"}"\n'
    )
    assert run("--config", config, "fetch").returncode == 0
    subprocess.run(
        ["chown", "-R", f"{OTHER}:{OTHER}", str(tmp_path / "var" / "mirror")], check=True
    )
    line = one_line_error(run("--config", config, "fetch"))
    assert "git refuses to open" in line and "0.git" in line and "safe.directory" in line
    assert "check the network" not in line


# -- the unit's sandbox -------------------------------------------------------


def test_an_archive_path_outside_the_units_writable_paths(upstream: Path, tmp_path: Path) -> None:
    """[archive] path outside ReadWritePaths=: check-config says so, and fetch's
    error names the read-only file system and the setting, not a full disk."""
    state, outside = tmp_path / "state", tmp_path / "srv" / "lore"
    outside.mkdir(parents=True)
    config = tmp_path / "kvm-digest.toml"
    config.write_text(
        f'[data]\ndir = "{state}"\n[archive]\nfollow = "{upstream.as_uri()}"\npath = "{outside}"\n'
    )
    checked = sandboxed(kvm_digest("--config", config, "check-config"), [state])
    assert checked.returncode == 1, checked.stdout
    (problem,) = [line for line in checked.stdout.splitlines() if line.startswith("problem:")]
    assert f"the archive {outside} cannot be created or written" in problem
    assert "read-only file system" in problem and f"ReadWritePaths={outside}" in problem
    line = one_line_error(sandboxed(kvm_digest("--config", config, "fetch"), [state]))
    assert "read-only file system" in line.lower() and f"ReadWritePaths={outside}" in line
    assert "free some disk space" not in line
    assert not (outside / "git" / "0.git").exists()
    # With the path among the writable ones, as the unit's comment says to do.
    fetched = sandboxed(kvm_digest("--config", config, "fetch"), [state, outside])
    assert fetched.returncode == 0, fetched.stderr
    assert fetched.stdout.strip().endswith("10 new messages indexed")
    valid = sandboxed(kvm_digest("--config", config, "check-config"), [state, outside])
    assert valid.returncode == 0 and valid.stdout.strip().endswith("is valid"), valid.stdout


def test_a_data_dir_outside_the_sandbox_is_named_in_check_config(tmp_path: Path) -> None:
    data = tmp_path / "elsewhere" / "var"
    config = tmp_path / "kvm-digest.toml"
    config.write_text(f'[data]\ndir = "{data}"\n')
    checked = sandboxed(kvm_digest("--config", config, "check-config"), [tmp_path / "state"])
    assert checked.returncode == 1
    assert f"the data directory {data} cannot be created or written" in checked.stdout
    assert f"ReadWritePaths={data}" in checked.stdout


# -- the daemon's lock --------------------------------------------------------


def test_commands_that_need_the_lock_say_stop_the_service_first(
    upstream: Path, tmp_path: Path
) -> None:
    data = tmp_path / "var"
    config = tmp_path / "kvm-digest.toml"
    config.write_text(
        f'[data]\ndir = "{data}"\n[archive]\npath = "{upstream}"\nfetch_interval = 1\n'
        '[schedule]\ndaily = ""\nweekly = ""\n'
    )
    daemon = DaemonProcess(config)
    try:
        daemon.wait_log("kvm-digest is running")
        pid = daemon.proc.pid
        # fetch needs [archive] follow: the same data dir, the lock comes first.
        follow = tmp_path / "follow.toml"
        follow.write_text(f'[data]\ndir = "{data}"\n[archive]\nfollow = "{upstream.as_uri()}"\n')
        for config_file, command in ((config, "reindex"), (follow, "fetch")):
            line = one_line_error(run("--config", config_file, command))
            assert f"the daemon (`kvm-digest run`, pid {pid}) holds the writer lock" in line
            assert f"`kvm-digest {command}` needs it: stop the service first" in line
        # A reader does not need it: the digest is read while the daemon runs.
        assert run("--config", config, "digest", "--all").returncode == 0
        assert daemon.stop() == 0
    finally:
        daemon.proc.kill()
    assert run("--config", config, "reindex").stdout == "indexed 10 messages\n"
