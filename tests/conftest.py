"""Shared fixtures: a data directory, the CLI run in-process, a test store."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import settings

from bot.cli import main
from tests.mailfactory import BUNDLE, Store, need_shared
from tests.smtpsink import Sink

# In CI, property tests are derandomized: a failure there reproduces anywhere.
settings.register_profile("ci", derandomize=True, deadline=None)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture(autouse=True)
def away_from_the_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs in its own empty directory, with no kvm-digest settings
    from the environment: the checkout's config/kvm-digest.toml and var/ (which
    a user edits and fills) are found by no test, in-process or in a subprocess.
    A test that wants a config writes its own and passes --config."""
    monkeypatch.chdir(tmp_path)
    for name in ("KVM_DIGEST_CONFIG", "KVM_DIGEST_DATA"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "var"


@pytest.fixture
def cli(
    tmp_path: Path,
    data_dir: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[..., Result]:
    """Run `kvm-digest --data-dir <tmp> ARGS...` in-process, from an empty cwd."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KVM_DIGEST_DATA", raising=False)
    monkeypatch.delenv("KVM_DIGEST_CONFIG", raising=False)

    def run(*args: str) -> Result:
        capsys.readouterr()
        code = main(["--data-dir", str(data_dir), *map(str, args)])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture
def sink() -> Iterator[Sink]:
    """A real SMTP relay (aiosmtpd) on 127.0.0.1 that records what it accepts."""
    s = Sink().start()
    yield s
    s.stop()


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


@pytest.fixture(scope="session")
def kvmarm_git(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The kvmarm bundle as a bare public-inbox epoch (read-only, shared)."""
    path = tmp_path_factory.mktemp("kvmarm") / "0.git"
    bundle = need_shared(BUNDLE)
    subprocess.run(["git", "clone", "--quiet", "--bare", str(bundle), str(path)], check=True)
    return path


def archive_ids(data_dir: Path) -> list[str]:
    """Every commit of the data dir's archive, oldest first."""
    out = subprocess.run(
        ["git", "-C", str(data_dir / "archive.git"), "rev-list", "--reverse", "master"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.split()
