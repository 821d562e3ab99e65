"""Running it for years: `kvm-digest health` and `kvm-digest backup` against a live daemon.

The daemon runs as a process with real parts (Dovecot, an aiosmtpd relay,
LMTP), with systemd's notify socket and watchdog emulated by a datagram
socket of the test's own. The health checks' thresholds are also tested on
a real index at chosen times (`now`), since no test can wait an hour.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import smtplib
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bot import config as configmod
from bot import healthcheck
from bot.delivery.mail import Identity
from bot.delivery.outbox import Outbox
from bot.health import Problems
from bot.store.index import Index
from tests.dovecot import PASSWORD, USER, Dovecot
from tests.netcut import NetCut
from tests.sandbox import kvm_digest
from tests.smtpsink import Sink
from tests.test_daemon import BOT, SLICE, DaemonProcess, lmtp_port, subscribe, write_config


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    server = Dovecot().start()
    yield server
    server.cleanup()


@pytest.fixture
def config(tmp_path: Path, dovecot: Dovecot, sink: Sink, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TEST_IMAP_PASSWORD", PASSWORD)
    return write_config(tmp_path, dovecot, sink)


class Systemd:
    """The daemon's NOTIFY_SOCKET: records READY=1 and WATCHDOG=1 as they come."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.path = path
        self.pings: list[float] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while not self.done.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            if b"WATCHDOG=1" in data:
                self.pings.append(time.monotonic())

    def pinged_since(self, when: float) -> int:
        return sum(t > when for t in self.pings)

    def close(self) -> None:
        self.done.set()
        self.thread.join()
        self.sock.close()


def health(config: Path) -> tuple[int, list[str], dict]:
    """`kvm-digest health` as a monitoring system runs it: text, then --json."""
    text = subprocess.run(
        kvm_digest("--config", config, "health"), capture_output=True, text=True, timeout=60
    )
    as_json = subprocess.run(
        kvm_digest("--config", config, "health", "--json"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    said = json.loads(as_json.stdout)
    assert said["code"] == as_json.returncode and said["status"] in healthcheck.WORDS
    return text.returncode, text.stdout.splitlines(), {c["check"]: c for c in said["checks"]}


def until(condition: Callable[[], object], what: str, timeout: float = 60) -> object:
    """Poll `condition` until it is true (no sleeps as synchronisation: a deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_health_through_an_intake_outage_and_a_killed_daemon(
    config: Path, dovecot: Dovecot, sink: Sink, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    network = NetCut(dovecot.port).start()  # the daemon reaches Dovecot through it
    config.write_text(
        config.read_text().replace(f"port = {dovecot.port}\n", f"port = {network.port}\n", 1)
    )
    systemd = Systemd(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", str(systemd.path))
    monkeypatch.setenv("WATCHDOG_USEC", "600000")  # a ping every 0.3 s
    subscribe(config, "reader@example.org")
    daemon = DaemonProcess(config)
    try:
        daemon.wait_log("kvm-digest is running")
        dovecot.append(*SLICE[:3])
        daemon.expect(sink.wait_for, 1)

        code, lines, checks = until(lambda: (h := health(config))[0] == 0 and h, "healthy")
        assert lines[0] == f"kvm-digest OK: {len(checks)} checks ok"
        assert f"ok       daemon: running (pid {daemon.proc.pid})" in lines
        intake = next(line for line in lines if " intake: " in line)
        assert intake.startswith(f"ok       intake: IMAP {USER}@127.0.0.1: last success ")
        assert checks["daily digest"]["status"] == "ok" and checks["daily digest"]["last_run"]
        assert checks["outbox"]["summary"] == "empty" and checks["failures"]["status"] == "ok"

        # The IMAP server is cut off: degraded, said once in the log, counted.
        network.cut()
        outage = time.monotonic()
        until(
            lambda: health(config)[2]["intake"].get("failures", 0) >= 3,
            "three failed reconnections",
        )
        code, lines, checks = health(config)
        assert code == 1 and lines[0] == "kvm-digest DEGRADED: intake"
        assert checks["intake"]["status"] == "degraded"
        assert "failing for " in checks["intake"]["summary"]
        said = [line for line in daemon.log.splitlines() if "intake: IMAP session ended" in line]
        assert len(said) == 1, daemon.log
        # ...and the watchdog goes on: a restart would not bring Dovecot back.
        assert systemd.pinged_since(outage) >= 3

        network.restore()
        daemon.wait_log("intake works again, after")
        until(lambda: health(config)[0] == 0, "healthy again")
        assert daemon.log.count("intake works again") == 1

        # SIGKILL: the lock file stays behind, but nobody holds the lock.
        daemon.proc.kill()
        daemon.proc.wait()
        assert (tmp_path / "var" / "lock").exists()
        code, lines, checks = health(config)
        assert code == 2 and lines[0] == "kvm-digest FAILING: daemon"
        assert checks["daemon"]["summary"].startswith("not running")
    finally:
        daemon.proc.kill()
        systemd.close()
        network.stop()


def test_health_thresholds_on_a_real_index(tmp_path: Path) -> None:
    """What an hour, a day and a week later look like, on rows the real code wrote."""
    data = tmp_path / "var"
    path = tmp_path / "kvm-digest.toml"
    path.write_text(
        f'[data]\ndir = "{data}"\n[imap]\nhost = "imap.example.org"\nuser = "bot"\n'
        'password = "x"\n[schedule]\nweekly = ""\n'
    )
    path.chmod(0o600)
    config = configmod.load(path)
    index = Index(config.index_path)
    start = time.time()
    problems = Problems(index.path)
    problems.working("intake")
    outbox = Outbox(index.conn, Identity(BOT))
    outbox.enqueue("a@example.org", b"Subject: x\r\n\r\nx\r\n", "<m@x>")
    # Ages count from what the row says, whole seconds: a second may have
    # ticked over since `start`.
    (start,) = index.conn.execute("SELECT created FROM outbox").fetchone()
    with index.conn:
        index.conn.execute(
            "INSERT INTO schedules (name, end_seq, end_id, last_run) VALUES ('daily', 0, '', ?)",
            (int(start),),
        )

    def at(seconds: float) -> dict[str, healthcheck.Check]:
        return {c.name: c for c in healthcheck.run(config, now=start + seconds)}

    soon = at(60)
    assert soon["intake"].status == healthcheck.OK
    assert soon["outbox"].status == healthcheck.OK
    assert soon["outbox"].summary == "1 queued, the oldest for 60 s"
    assert soon["daemon"].status == healthcheck.FAILING  # nothing holds the lock
    later = at(2 * 3600)
    assert later["outbox"].status == healthcheck.DEGRADED
    assert later["intake"].status == healthcheck.DEGRADED  # not confirmed for 2 h
    assert "is the daemon stuck?" in later["intake"].summary
    days = at(3 * 86400)
    assert days["outbox"].status == healthcheck.FAILING
    assert days["daily digest"].status == healthcheck.FAILING
    assert "is late" in days["daily digest"].summary
    # A relay outage: degraded at first, failing once it lasts.
    problems.failing("relay", "421 4.3.2 try again later")
    problems.failing("relay", "421 4.3.2 try again later")
    assert at(60)["relay"].status == healthcheck.DEGRADED
    assert at(healthcheck.FAILING_AFTER + 60)["relay"].status == healthcheck.FAILING
    assert "2 times; last: 421 4.3.2" in at(60)["relay"].summary
    problems.close()
    index.close()


def backup(config: Path, dest: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        kvm_digest("--config", config, "backup", dest), capture_output=True, text=True, timeout=60
    )


def rows(db: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_backup_while_the_daemon_writes_and_restore(
    config: Path, dovecot: Dovecot, sink: Sink, tmp_path: Path
) -> None:
    data = tmp_path / "var"
    subscribe(config, "reader@example.org")
    daemon = DaemonProcess(config)
    busy = threading.Event()
    stored = threading.Condition()
    answered = [0]  # command mails the desk said 250 to: on disk
    try:
        daemon.wait_log("kvm-digest is running")

        def write_all_the_time() -> None:
            """Command mail over LMTP and list mail over IMAP, as fast as it goes."""
            n = 0
            while not busy.is_set():
                with smtplib.LMTP("127.0.0.1", lmtp_port(config)) as client:
                    client.sendmail(
                        f"u{n}@example.org",
                        [BOT],
                        f"From: u{n}@example.org\r\nTo: {BOT}\r\nSubject: help\r\n"
                        f"Message-ID: <b{n}@example.org>\r\n\r\n".encode(),
                    )
                with stored:
                    answered[0] += 1
                    stored.notify_all()
                dovecot.append(SLICE[n % len(SLICE)])
                n += 1

        writer = threading.Thread(target=write_all_the_time, daemon=True)
        writer.start()
        # An unsubscribe a moment ago, still in the write-ahead log the daemon keeps.
        subscribe(config, "gone@example.org")
        assert (
            subprocess.run(
                kvm_digest("--config", config, "subscribers", "remove", "gone@example.org"),
                capture_output=True,
            ).returncode
            == 0
        )
        assert (data / "index.sqlite3-wal").stat().st_size > 0
        seen = []
        for n in range(5):
            with stored:  # one more command mail on disk since the last copy, however slow
                since = answered[0]
                assert stored.wait_for(lambda since=since: answered[0] > since, timeout=60)
            dest = tmp_path / "backups" / f"index-{n}.sqlite3"
            dest.parent.mkdir(exist_ok=True)
            result = backup(config, dest)
            assert result.returncode == 0, result.stderr
            assert result.stdout.startswith(f"backed up {data / 'index.sqlite3'} to {dest}")
            assert not dest.with_name(dest.name + "-wal").exists()
            assert rows(dest, "PRAGMA integrity_check") == [("ok",)]
            assert rows(dest, "PRAGMA journal_mode") == [("delete",)]
            status = dict(rows(dest, "SELECT address, status FROM subscribers"))
            assert status == {"reader@example.org": "active", "gone@example.org": "unsubscribed"}
            seen.append(rows(dest, "SELECT COUNT(*) FROM inbound")[0][0])
        busy.set()
        writer.join(timeout=30)
        assert seen == sorted(seen) and seen[-1] > seen[0], seen  # it kept writing
        assert daemon.stop() == 0
    finally:
        busy.set()
        daemon.proc.kill()
    # Restore, as the README says: stopped, the copy in place, the WAL gone.
    kept = tmp_path / "backups" / "index-4.sqlite3"
    for side in ("index.sqlite3-wal", "index.sqlite3-shm"):
        (data / side).unlink(missing_ok=True)
    shutil.copyfile(kept, data / "index.sqlite3")
    os.chmod(data / "index.sqlite3", 0o600)
    fsck = subprocess.run(kvm_digest("--config", config, "fsck"), capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout  # the index catches up with the archive
    restarted = DaemonProcess(config)
    try:
        restarted.wait_log("kvm-digest is running")
        listed = subprocess.run(
            kvm_digest("--config", config, "subscribers", "list"), capture_output=True, text=True
        ).stdout
        assert "gone@example.org\tdaily\tunsubscribed" in listed
        assert restarted.stop(signal.SIGTERM) == 0
    finally:
        restarted.proc.kill()


def test_backup_refuses_to_overwrite_the_index(cli, data_dir: Path) -> None:
    from tests.mailfactory import DATA

    assert cli("import", DATA / "reference" / "000.mbox").code == 0
    result = cli("backup", data_dir / "index.sqlite3")
    assert result.code == 1 and "is the index itself" in result.err
    missing = cli("--data-dir", data_dir / "nowhere", "backup", data_dir / "b.sqlite3")
    assert missing.code == 1 and "nothing to back up" in missing.err
