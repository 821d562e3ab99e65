"""Following a public-inbox v2 inbox by git: mirror mode over epochs, `fetch`, the daemon.

The "remote" is a real local inbox directory served by file URL, written by
our own archive code as public-inbox writes it (one commit per message, blob
`m`, each epoch its own history), growing between fetches, with a new epoch
appearing mid-test.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import http.server
import mailbox
import os
import pty
import sqlite3
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from bot import config as configmod
from bot import record
from bot.daemon import Daemon
from bot.parse.message import parse_lenient
from bot.store.archive import Archive
from tests.mailfactory import DATA

SLICE = [m.as_bytes() for m in mailbox.mbox(DATA / "kvmarm-slice.mbox")]


class Upstream:
    """A public-inbox v2 inbox on disk: git/0.git, git/1.git, ..."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.heads: list[str] = []

    @property
    def url(self) -> str:
        return self.root.as_uri()

    def add(self, epoch: int, raws: list[bytes]) -> list[str]:
        archive = Archive.create(self.root / "git" / f"{epoch}.git")
        ids = archive.append((raw, parse_lenient(raw)) for raw in raws)
        self.heads = [*self.heads[:epoch], ids[-1]]
        return ids


@pytest.fixture
def upstream(tmp_path: Path) -> Upstream:
    up = Upstream(tmp_path / "lore" / "kvm")
    up.add(0, SLICE[:10])
    return up


def header_range(digest: str) -> str:
    return digest.splitlines()[0]


def test_mirror_mode_reads_a_whole_v2_inbox(upstream: Upstream, cli: Callable) -> None:
    epoch0 = upstream.heads[0]
    upstream.add(1, SLICE[10:20])
    # Before: "is not a git repository". Now every epoch, in order.
    result = cli("--archive", upstream.root, "digest", "--all")
    assert result.code == 0, result.err
    assert header_range(result.out) == f"From 000000000 to {upstream.heads[1][:9]}"
    # A range across the epoch boundary is commit ids, as on lore.
    result = cli(
        "--archive", upstream.root, "digest", "--range", f"{epoch0[:9]}..{upstream.heads[1][:9]}"
    )
    assert result.code == 0, result.err
    assert header_range(result.out) == f"From {epoch0[:9]} to {upstream.heads[1][:9]}"
    assert cli("--archive", upstream.root, "fsck").out.startswith("ok: 20 messages")


def test_fsck_on_a_fresh_mirror_says_not_indexed_yet(upstream: Upstream, cli: Callable) -> None:
    result = cli("--archive", upstream.root, "fsck")
    assert result.code == 0
    assert result.out.startswith("not indexed yet: the archive holds 10 commits")
    assert "problem" not in result.out


def follow_config(tmp_path: Path, url: str, extra: str = "") -> Path:
    path = tmp_path / "follow.toml"
    path.write_text(f'[archive]\nfollow = "{url}"\n{extra}')
    return path


def test_fetch_follows_a_growing_inbox_and_its_new_epochs(
    upstream: Upstream, cli: Callable, tmp_path: Path, data_dir: Path
) -> None:
    config = follow_config(tmp_path, upstream.url)
    # Before any fetch, reading says what to do.
    early = cli("--config", config, "digest", "--all")
    assert early.code == 1 and "run `kvm-digest fetch` first" in early.err

    first = cli("--config", config, "fetch")
    assert first.code == 0, first.err
    assert first.out.strip() == f"{upstream.url}: new epochs 0; 10 new messages indexed"
    assert (data_dir / "mirror" / "git" / "0.git").is_dir()
    assert not (data_dir / "lock").exists()

    upstream.add(0, SLICE[10:15])  # the epoch grows
    grown = cli("--config", config, "fetch")
    assert grown.out.strip() == f"{upstream.url}: fetched epochs 0; 5 new messages indexed"

    upstream.add(1, SLICE[15:27])  # lore starts a new epoch
    third = cli("--config", config, "fetch")
    assert third.out.strip() == (
        f"{upstream.url}: new epochs 1; fetched epochs 0; 12 new messages indexed"
    )
    again = cli("--config", config, "fetch")
    assert again.out.strip().endswith("; 0 new messages indexed")

    digest = cli("--config", config, "digest", "--all")
    assert header_range(digest.out) == f"From 000000000 to {upstream.heads[1][:9]}"
    assert cli("--config", config, "fsck").out.startswith("ok: 27 messages")
    # Import would write to the mirror: refused in one line.
    assert "read-only mirror" in cli("--config", config, "import", DATA / "kvmarm-slice.mbox").err


def test_fetch_from_a_wrong_url_says_so(tmp_path: Path, cli: Callable, data_dir: Path) -> None:
    config = follow_config(tmp_path, (tmp_path / "nowhere").as_uri())
    result = cli("--config", config, "fetch")
    assert result.code == 1
    assert result.err.startswith("kvm-digest: error: cannot clone file://")
    assert "check [archive] follow" in result.err
    assert not (data_dir / "mirror" / "git" / "0.git").exists()


def test_follow_and_imap_together_are_refused(tmp_path: Path, cli: Callable) -> None:
    config = follow_config(tmp_path, "https://lore.kernel.org/kvm", '[imap]\nhost = "h"\n')
    result = cli("--config", config, "check-config")
    assert result.code == 1 and "choose one intake" in result.err
    config = follow_config(tmp_path, "https://lore.kernel.org/kvm", "fetch_interval = 5\n")
    assert "at least 60 seconds" in cli("--config", config, "check-config").err


def test_run_without_any_intake_says_what_to_set(cli: Callable) -> None:
    result = cli("run")
    assert result.code == 1
    assert "set [archive] follow" in result.err
    assert "intake: none; `run` needs [archive] follow" in cli("check-config").out


def test_check_config_names_the_intake(tmp_path: Path, cli: Callable) -> None:
    config = follow_config(tmp_path, "https://lore.kernel.org/kvm")
    out = cli("--config", config, "check-config").out.splitlines()
    assert "intake: following https://lore.kernel.org/kvm by git every 300 s" in out
    assert "imap: not configured" in out


def _indexed_head(index: Path) -> str | None:
    if not index.exists():
        return None
    conn = sqlite3.connect(index)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'last_commit'").fetchone()
    except sqlite3.OperationalError:
        return None
    finally:
        conn.close()
    return row[0] if row else None


@pytest.mark.parametrize("intake", ["follow", "path"])
async def test_the_daemon_fetches_on_its_interval(
    upstream: Upstream, tmp_path: Path, data_dir: Path, intake: str
) -> None:
    """`follow`: the daemon fetches; `path`: someone else fetches, it re-reads."""
    where = upstream.url if intake == "follow" else str(upstream.root)
    path = tmp_path / "daemon.toml"
    path.write_text(
        f'[archive]\n{intake} = "{where}"\nfetch_interval = 1\n[data]\ndir = "{data_dir}"\n'
    )
    config = configmod.load(path)
    config = record.replace(config, schedule=record.replace(config.schedule, daily="", weekly=""))
    stop = asyncio.Event()
    task = asyncio.create_task(Daemon(config).run(stop))
    index = data_dir / "index.sqlite3"

    async def indexed(head: str) -> None:
        while _indexed_head(index) != head:
            assert not task.done(), task.exception()
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(indexed(upstream.heads[0]), 30)  # fetched at start
        upstream.add(1, SLICE[10:20])  # a new epoch while the daemon runs
        await asyncio.wait_for(indexed(upstream.heads[1]), 30)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    if intake == "follow":
        assert (data_dir / "mirror" / "git" / "1.git").is_dir()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Keep test output clean."""


@pytest.fixture
def web(upstream: Upstream, tmp_path: Path):
    """The inbox served over (dumb) HTTP the way lore lays it out: <url>/N."""
    root = tmp_path / "www"
    (root / "kvm").mkdir(parents=True)
    handler = functools.partial(_Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def publish() -> str:
        for epoch in sorted((upstream.root / "git").iterdir()):
            subprocess.run(["git", "-C", str(epoch), "update-server-info"], check=True)
            link = root / "kvm" / epoch.name.removesuffix(".git")
            if not link.exists():
                link.symlink_to(epoch)
        return f"http://127.0.0.1:{server.server_address[1]}/kvm"

    yield publish
    server.shutdown()
    thread.join()


def test_fetch_over_http_uses_the_web_layout(
    upstream: Upstream, web: Callable[[], str], cli: Callable, tmp_path: Path
) -> None:
    url = web()
    config = follow_config(tmp_path, url)
    first = cli("--config", config, "fetch")
    assert first.out.strip() == f"{url}: new epochs 0; 10 new messages indexed", first.err
    upstream.add(0, SLICE[10:12])
    upstream.add(1, SLICE[12:20])
    web()
    second = cli("--config", config, "fetch")
    assert second.out.strip() == (
        f"{url}: new epochs 1; fetched epochs 0; 10 new messages indexed"
    ), second.err
    digest = cli("--config", config, "digest", "--all")
    assert header_range(digest.out) == f"From 000000000 to {upstream.heads[1][:9]}"


def test_first_indexing_of_a_mirror_shows_a_progress_bar(
    upstream: Upstream, tmp_path: Path
) -> None:
    """On a terminal (a real pty here), as import does; silent in logs."""
    upstream.add(1, SLICE[10:27])
    command = [sys.executable, "-m", "bot.cli", "--data-dir", str(tmp_path / "var")]
    command += ["--archive", str(upstream.root), "digest", "--all"]
    primary, secondary = pty.openpty()
    # A terminal 80 columns wide (a fresh pty has none: tqdm would draw nothing).
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=secondary)
    os.close(secondary)
    seen = b""
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(primary)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert out.startswith(b"From 000000000 to ")
    assert b"indexing: 100%" in seen and b"27/27" in seen
    # Indexed once: the next command has nothing to show.
    again = subprocess.run(command, capture_output=True, timeout=60)
    assert again.returncode == 0 and again.stderr == b""
