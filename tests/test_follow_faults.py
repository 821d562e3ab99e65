"""Following an inbox when the remote, the disk or the size of the work goes wrong.

The remote is a real git server over HTTP (git's dumb protocol from a
static server, as test_follow.py serves it), one that can drop an epoch,
answer every epoch number, or repeat an epoch's history; the disk fills
through RLIMIT_FSIZE on the daemon process, lifted again with prlimit
while it runs.
"""

from __future__ import annotations

import asyncio
import functools
import http.server
import itertools
import logging
import os
import re
import resource
import signal
import smtplib
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bot import config as configmod
from bot import record
from bot.daemon import Daemon
from bot.store.archive import Archive
from tests.dovecot import free_port
from tests.test_follow import SLICE, Upstream, follow_config
from tests.test_git_faults import messages

ROOT = Path(__file__).resolve().parents[1]


class Web:
    """A static HTTP server over `root`; `endless` makes up an epoch for any number asked."""

    def __init__(self, root: Path, endless: bool = False) -> None:
        self.root = root
        self.made = 0
        web = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                """Quiet."""

            def do_GET(self) -> None:
                if endless and (m := re.match(r"/kvm/(\d+)/", self.path)):
                    web.make_epoch(int(m.group(1)))
                super().do_GET()

        self.server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(root))
        )
        self.lock = threading.Lock()
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/kvm"

    def publish(self, upstream: Upstream) -> None:
        (self.root / "kvm").mkdir(parents=True, exist_ok=True)
        for epoch in sorted((upstream.root / "git").iterdir()):
            subprocess.run(["git", "-C", str(epoch), "update-server-info"], check=True)
            link = self.root / "kvm" / epoch.name.removesuffix(".git")
            if not link.exists():
                link.symlink_to(epoch)

    def make_epoch(self, number: int) -> None:
        """An epoch of one message of its own, made the first time it is asked for."""
        with self.lock:
            repo = self.root / "kvm" / str(number)
            if repo.exists():
                return
            archive = Archive.create(repo)
            raw = messages(1, start=number)[0]
            from bot.parse.message import parse_lenient

            archive.append([(raw, parse_lenient(raw))])
            subprocess.run(["git", "-C", str(repo), "update-server-info"], check=True)
            self.made += 1

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def web(tmp_path: Path) -> Iterator[Callable[..., Web]]:
    servers: list[Web] = []

    def start(endless: bool = False) -> Web:
        servers.append(Web(tmp_path / f"www{len(servers)}", endless))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def count(data_dir: Path) -> int:
    path = data_dir / "index.sqlite3"
    if not path.exists():
        return 0
    conn = sqlite3.connect(path, timeout=30)
    try:
        return conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def test_a_remote_that_drops_an_old_epoch_still_gives_the_later_ones(
    web: Callable[..., Web], tmp_path: Path, cli: Callable, data_dir: Path
) -> None:
    up = Upstream(tmp_path / "lore")
    up.add(0, SLICE[:5])
    up.add(1, SLICE[5:10])
    server = web()
    server.publish(up)
    config = follow_config(tmp_path, server.url)
    assert cli("--config", config, "fetch").code == 0
    up.add(1, SLICE[10:15])
    up.add(2, SLICE[15:20])
    server.publish(up)
    (server.root / "kvm" / "0").unlink()  # the server no longer serves epoch 0
    result = cli("--config", config, "fetch")
    assert result.code == 1
    assert (
        result.out.strip()
        == f"{server.url}: new epochs 2; fetched epochs 1; 10 new messages indexed"
    )
    (problem,) = result.err.splitlines()
    assert problem.startswith("kvm-digest: error: git cannot fetch ") and "0.git" in problem
    assert count(data_dir) == 20  # our copy of epoch 0 is still read


def test_a_server_that_answers_every_epoch_stops_at_max_epochs(
    web: Callable[..., Web], tmp_path: Path, cli: Callable, data_dir: Path
) -> None:
    server = web(endless=True)
    config = follow_config(tmp_path, server.url, "max_epochs = 4\n")
    result = cli("--config", config, "fetch")
    assert result.code == 1
    assert result.out.strip() == f"{server.url}: new epochs 0, 1, 2, 3; 4 new messages indexed"
    (problem,) = result.err.splitlines()
    assert "offers more than [archive] max_epochs = 4 epochs; stopped at epoch 3" in problem
    assert sorted(p.name for p in (data_dir / "mirror" / "git").iterdir()) == [
        "0.git",
        "1.git",
        "2.git",
        "3.git",
    ]
    again = cli("--config", config, "fetch")  # the next fetch does not go on either
    assert again.code == 1 and "new epochs" not in again.out
    assert len(list((data_dir / "mirror" / "git").iterdir())) == 4


async def test_the_daemon_stops_at_max_epochs_at_start(
    web: Callable[..., Web], tmp_path: Path, data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = web(endless=True)
    path = follow_config(tmp_path, server.url, f'max_epochs = 3\n[data]\ndir = "{data_dir}"\n')
    config = configmod.load(path)
    config = record.replace(config, schedule=record.replace(config.schedule, daily="", weekly=""))
    stop = asyncio.Event()
    caplog.set_level(logging.INFO)
    task = asyncio.create_task(Daemon(config).run(stop))
    try:
        deadline = time.monotonic() + 60
        while count(data_dir) < 3 or "kvm-digest is running" not in caplog.text:
            assert not task.done(), task.exception()
            assert time.monotonic() < deadline, caplog.text
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    said = [r for r in caplog.records if "max_epochs = 3" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.ERROR
    assert len(list((data_dir / "mirror" / "git").iterdir())) == 3
    assert server.made == 4  # epochs 0-2, and 3 only asked about


def test_one_fetch_brings_at_most_max_fetch_bytes(
    web: Callable[..., Web], tmp_path: Path, cli: Callable, data_dir: Path
) -> None:
    up = Upstream(tmp_path / "lore")
    up.add(0, SLICE[:5])
    big = SLICE[5] + os.urandom(3 * 1024 * 1024).hex().encode()  # 6 MB that does not compress
    up.add(1, [big])
    server = web()
    server.publish(up)
    config = follow_config(tmp_path, server.url, "max_fetch_bytes = 2097152\n")
    result = cli("--config", config, "fetch")
    assert result.code == 1
    assert result.out.strip() == f"{server.url}: new epochs 0; 5 new messages indexed"
    (problem,) = result.err.splitlines()
    assert "one fetch may bring at most [archive] max_fetch_bytes = 2097152 bytes" in problem
    left = sorted(p.name for p in (data_dir / "mirror" / "git").iterdir())
    assert left == ["0.git"]  # no half epoch left behind


def test_an_epoch_repeating_an_earlier_one_is_refused_and_the_rest_indexed(
    tmp_path: Path, cli: Callable, data_dir: Path
) -> None:
    up = Upstream(tmp_path / "lore")
    up.add(0, SLICE[:10])
    subprocess.run(
        [
            "git",
            "clone",
            "--quiet",
            "--bare",
            str(up.root / "git" / "0.git"),
            str(up.root / "git" / "1.git"),
        ],
        check=True,
    )
    up.heads.append(up.heads[0])
    up.add(1, SLICE[10:13])  # a copy of epoch 0 that grew: shares its history
    up.add(2, SLICE[13:20])
    config = follow_config(tmp_path, up.url)
    result = cli("--config", config, "fetch")
    assert result.code == 1
    (problem,) = result.err.splitlines()
    assert re.search(r"the epoch \S+/1\.git repeats the history of \S+/0\.git", problem)
    assert count(data_dir) == 17  # epochs 0 and 2, each message once
    again = cli("--config", config, "fetch")
    assert again.code == 1 and count(data_dir) == 17
    fsck = cli("--config", config, "fsck")
    assert "repeats the history of" in fsck.out


async def test_the_daemon_keeps_serving_past_a_refused_epoch(
    tmp_path: Path, data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    up = Upstream(tmp_path / "lore")
    up.add(0, SLICE[:10])
    subprocess.run(
        [
            "git",
            "clone",
            "--quiet",
            "--bare",
            str(up.root / "git" / "0.git"),
            str(up.root / "git" / "1.git"),
        ],
        check=True,
    )
    path = tmp_path / "daemon.toml"
    path.write_text(
        f'[archive]\npath = "{up.root}"\nfetch_interval = 1\n[data]\ndir = "{data_dir}"\n'
    )
    config = configmod.load(path)
    config = record.replace(config, schedule=record.replace(config.schedule, daily="", weekly=""))
    stop = asyncio.Event()
    task = asyncio.create_task(Daemon(config).run(stop))
    try:
        deadline = time.monotonic() + 60
        while count(data_dir) < 10:
            assert not task.done(), task.exception()
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        up.add(2, SLICE[10:20])  # a later epoch arrives while the daemon runs
        while count(data_dir) < 20:
            assert not task.done(), task.exception()
            assert time.monotonic() < deadline, caplog.text
            await asyncio.sleep(0.05)
        await asyncio.sleep(2.5)  # a few more rounds, each still refusing epoch 1
        assert not task.done()
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    said = [r for r in caplog.records if "repeats the history of" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.ERROR  # said once


class DaemonProcess:
    """`kvm-digest run` as a process, with its log and an optional file-size limit."""

    def __init__(self, config: Path, env: dict[str, str] | None = None, fsize: int | None = None):
        def limit() -> None:
            if fsize is not None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, resource.RLIM_INFINITY))

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "--config", str(config), "run"],
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            preexec_fn=limit,
        )
        self.lines: list[str] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self.cond:
                self.lines.append(line)
                self.cond.notify_all()

    def wait_log(self, text: str, timeout: float = 60) -> None:
        with self.cond:
            ok = self.cond.wait_for(
                lambda: any(text in line for line in self.lines) or self.proc.poll() is not None,
                timeout,
            )
            assert ok and self.proc.poll() is None, f"no {text!r} in:\n{self.log}"

    @property
    def log(self) -> str:
        with self.cond:
            return "".join(self.lines)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)


def wait_until(condition: Callable[[], bool], timeout: float, daemon: DaemonProcess) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert daemon.proc.poll() is None, daemon.log
        assert time.monotonic() < deadline, daemon.log
        time.sleep(0.1)


def test_a_full_disk_stops_intake_loudly_once_and_it_resumes_by_itself(tmp_path: Path) -> None:
    up = Upstream(tmp_path / "lore")
    up.add(0, messages(3100))
    data = tmp_path / "var"
    config = tmp_path / "kvm-digest.toml"
    config.write_text(
        f'[archive]\npath = "{up.root}"\nfetch_interval = 1\n[data]\ndir = "{data}"\n'
        '[schedule]\ndaily = ""\nweekly = ""\n'
    )
    daemon = DaemonProcess(config, fsize=1024 * 1024)  # the index cannot grow past 1 MB
    try:
        daemon.wait_log("intake: cannot index new mail")
        stuck = count(data)
        assert 0 <= stuck < 3100
        time.sleep(3)  # rounds go on failing, quietly
        assert daemon.log.count("intake: cannot index new mail") == 1
        assert count(data) == stuck
        # The disk is freed: the next round goes on from where it stopped.
        resource.prlimit(daemon.proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
        daemon.wait_log("intake works again")
        wait_until(lambda: count(data) == 3100, 120, daemon)
        assert daemon.stop() == 0
    finally:
        daemon.proc.kill()
    assert "Traceback" not in daemon.log


def test_lmtp_and_the_watchdog_answer_while_a_large_catch_up_runs(
    tmp_path: Path, kvmarm_git: Path
) -> None:
    """15,000 real messages indexed at start; not a benchmark, generous bounds."""
    data = tmp_path / "var"
    port = free_port()
    config = tmp_path / "kvm-digest.toml"
    config.write_text(
        f'[archive]\npath = "{kvmarm_git}"\nfetch_interval = 3600\n[data]\ndir = "{data}"\n'
        f'[commands]\naddress = "bot@example.org"\nlisten = "127.0.0.1:{port}"\n'
        '[schedule]\ndaily = ""\nweekly = ""\n'
    )
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    pings: list[float] = []

    def listen() -> None:
        while True:
            try:
                said = notify.recv(4096)
            except OSError:
                return
            if b"WATCHDOG=1" in said:
                pings.append(time.monotonic())

    threading.Thread(target=listen, daemon=True).start()
    env = {"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "1000000"}
    daemon = DaemonProcess(config, env=env)
    try:
        daemon.wait_log("kvm-digest is running")
        wait_until(lambda: count(data) > 0, 120, daemon)
        started = time.monotonic()
        with smtplib.LMTP("127.0.0.1", port, timeout=30) as client:
            greeted = time.monotonic() - started
            client.sendmail(
                "una@example.org",
                ["bot@example.org"],
                b"From: una@example.org\r\nTo: bot@example.org\r\nSubject: help\r\n"
                b"Message-ID: <h@example.org>\r\n\r\n",
            )
        answered = time.monotonic() - started
        during = count(data)
        assert during < 15000, "the catch-up ended before LMTP was tried: nothing shown"
        assert greeted < 2 and answered < 10, (greeted, answered)
        wait_until(lambda: count(data) == 15000, 600, daemon)
        done = time.monotonic()
        assert daemon.stop() == 0
    finally:
        daemon.proc.kill()
        notify.close()
    during_catch_up = [t for t in pings if started <= t <= done]
    gaps = [b - a for a, b in itertools.pairwise(during_catch_up)]
    assert len(during_catch_up) >= 2 and max(gaps) < 5, gaps
