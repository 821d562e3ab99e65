"""`kvm-digest run` end to end, as a process, with real parts all round.

Dovecot holds the list mail, an aiosmtpd sink is the relay, commands arrive
over LMTP, and the daily schedule fires every two seconds. Waiting is on the
daemon's own log lines and on the sink's condition variable.
"""

from __future__ import annotations

import mailbox
import re
import resource
import signal
import smtplib
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from bot.cli import main
from tests.dovecot import PASSWORD, Dovecot, free_port
from tests.mailfactory import DATA
from tests.smtpsink import Sink

SLICE = [m.as_bytes() for m in mailbox.mbox(DATA / "kvmarm-slice.mbox")]
BOT = "kvm-digest@example.org"
RANGE = re.compile(r"update from ([0-9a-f]+) to ([0-9a-f]+)")


class DaemonProcess:
    """`kvm-digest run` in a subprocess; its log lines are collected."""

    def __init__(
        self,
        config: Path,
        max_files: int | None = None,
        prefix: tuple[str, ...] = (),
        verbose: bool = False,
        max_file_size: int | None = None,
    ) -> None:
        """`max_files` lowers the daemon's RLIMIT_NOFILE (soft and hard);
        `prefix` runs it under another command (strace); `verbose` logs DEBUG;
        `max_file_size` is its RLIMIT_FSIZE (a full disk: a write past it
        fails with EFBIG, as SIGXFSZ is ignored, also for a limit set later)."""

        def limit() -> None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            if max_files is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (max_files, max_files))
            if max_file_size is not None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_size, resource.RLIM_INFINITY))

        command = [sys.executable, "-m", "bot.cli", "--config", str(config)]
        self.proc = subprocess.Popen(
            [*prefix, *command, *(["-v"] if verbose else []), "run"],
            stderr=subprocess.PIPE,
            text=True,
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
        self.proc.wait()
        with self.cond:  # the end of the log: whoever waits sees the exit too
            self.cond.notify_all()

    def wait_log(self, text: str, count: int = 1, timeout: float = 30) -> None:
        with self.cond:
            ok = self.cond.wait_for(
                lambda: (
                    sum(text in line for line in self.lines) >= count
                    or self.proc.poll() is not None
                ),
                timeout,
            )
            assert ok and self.proc.poll() is None, f"no {text!r} in the daemon's log:\n" + "".join(
                self.lines
            )

    def wait_log_or_exit(self, text: str, timeout: float = 60) -> bool:
        """Wait for `text` in the log or for the daemon to end; True if it still runs."""
        with self.cond:
            self.cond.wait_for(
                lambda: any(text in line for line in self.lines) or self.proc.poll() is not None,
                timeout,
            )
        return self.proc.poll() is None

    def expect(self, wait, *args, **kwargs):
        """Run a sink wait; on failure, show the daemon's log too."""
        try:
            return wait(*args, **kwargs)
        except AssertionError as err:
            raise AssertionError(f"{err}\n--- daemon log ---\n{self.log}") from None

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 15) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    @property
    def log(self) -> str:
        with self.cond:
            return "".join(self.lines)


@pytest.fixture
def dovecot():
    server = Dovecot().start()
    yield server
    server.cleanup()


def write_config(tmp_path: Path, dovecot: Dovecot, sink: Sink, connections: int = 4) -> Path:
    config = tmp_path / "kvm-digest.toml"
    lmtp_port = free_port()
    imap = dovecot.config_toml(tmp_path / "var", 'password_env = "TEST_IMAP_PASSWORD"')
    config.write_text(
        imap
        + f"""
[commands]
address = "{BOT}"
listen = "127.0.0.1:{lmtp_port}"
[smtp]
host = "127.0.0.1"
port = {sink.port}
security = "none"
connections = {connections}
[schedule]
daily = "*/2 * * * * *"
weekly = ""
seconds = true
"""
    )
    return config


@pytest.fixture
def config(tmp_path, dovecot, sink, monkeypatch):
    monkeypatch.setenv("TEST_IMAP_PASSWORD", PASSWORD)
    return write_config(tmp_path, dovecot, sink)


def lmtp_port(config: Path) -> int:
    return int(re.search(r'listen = "127.0.0.1:(\d+)"', config.read_text()).group(1))


def subscribe(config: Path, *addresses: str) -> None:
    assert main(["--config", str(config), "subscribers", "add", *addresses]) == 0


def digests_to(sink: Sink, address: str) -> list[tuple[str, str]]:
    return [
        RANGE.search(r.message["Subject"]).groups()
        for r in sink.to(address)
        if r.message["Subject"].startswith("KVM mailing list update")
    ]


def test_schedule_commands_adjacent_digests_and_sigterm(config, dovecot, sink):
    subscribe(config, "reader@example.org")
    daemon = DaemonProcess(config)
    try:
        daemon.wait_log("kvm-digest is running")
        dovecot.append(*SLICE[:3])
        daemon.expect(sink.wait_for, 1)
        dovecot.append(*SLICE[3:5])
        daemon.expect(sink.wait_for, 2)
        # A command over LMTP, answered through the relay.
        with smtplib.LMTP("127.0.0.1", lmtp_port(config)) as client:
            client.sendmail(
                "una@example.org",
                [BOT],
                b"From: una@example.org\r\nTo: "
                + BOT.encode()
                + b"\r\nSubject: help\r\nMessage-ID: <h@example.org>\r\n\r\n",
            )
        daemon.expect(sink.wait_for, 3)
        # A command that reaches the bot's mailbox is answered the same way.
        by_imap = (
            f"From: Vera <vera@example.org>\r\nTo: {BOT}\r\nSubject: status\r\n"
            "Message-ID: <s@example.org>\r\n\r\n"
        ).encode()
        dovecot.append(by_imap)
        daemon.expect(sink.wait_for, 4)
        # Delivered a second time (here by LMTP): dropped as a copy before the
        # server's 250, so still one answer.
        with smtplib.LMTP("127.0.0.1", lmtp_port(config)) as client:
            client.sendmail("vera@example.org", [BOT], by_imap)
        assert daemon.stop(signal.SIGTERM) == 0
    finally:
        daemon.proc.kill()
    (first, second) = digests_to(sink, "reader@example.org")
    assert first[1] == second[0]  # adjacent: the second starts where the first ended
    assert [r.message["Subject"] for r in sink.to("una@example.org")] == ["Re: help"]
    assert [r.message["Subject"] for r in sink.to("vera@example.org")] == ["Re: status"]
    assert "stopped; outbox: 4 sent" in daemon.log


def test_relay_outage_the_digest_arrives_once_when_it_returns(config, dovecot, sink):
    readers = [f"reader{i}@example.org" for i in range(6)]
    subscribe(config, *readers)
    sink.stop()
    daemon = DaemonProcess(config)
    try:
        daemon.wait_log("kvm-digest is running")
        dovecot.append(SLICE[0])
        daemon.wait_log("ERROR kvm-digest.health: relay: the relay takes no mail")
        sink.start()
        daemon.expect(sink.wait_for, 6)
        daemon.wait_log("relay works again")
        daemon.wait_log("daily digest: 0 messages")  # later runs find nothing new
        assert daemon.stop() == 0
    finally:
        daemon.proc.kill()
    assert all(len(sink.to(reader)) == 1 for reader in readers)
    # A lasting outage is two lines, however many mails and retries it meets.
    relay = [line for line in daemon.log.splitlines() if " relay" in line]
    assert len(relay) == 2, relay
    assert "will retry" not in daemon.log
    assert "disabled" not in daemon.log


def test_sigkill_mid_send_then_restart(config, dovecot, sink):
    readers = [f"reader{i:03d}@example.org" for i in range(300)]
    subscribe(config, *readers)
    daemon = DaemonProcess(config)
    try:
        daemon.wait_log("kvm-digest is running")
        dovecot.append(SLICE[0])
        daemon.expect(sink.wait_for, 30, timeout=30)  # mid-send
        daemon.stop(signal.SIGKILL)
    finally:
        daemon.proc.kill()
    assert len(sink.received) < 300, "the kill came too late to test anything"
    assert len(sink.received) >= 30
    again = DaemonProcess(config)
    try:
        again.wait_log("kvm-digest is running")
        again.expect(
            sink.wait_until, lambda got: {r.recipients[0] for r in got} >= set(readers), 60
        )
        again.wait_log("daily digest: 0 messages")
        assert again.stop() == 0
    finally:
        again.proc.kill()
    copies = Counter(r.recipients[0] for r in sink.received)
    assert set(copies) == set(readers)  # everyone got the digest
    # SMTP cannot tell us about a 250 that a kill interrupted before we
    # recorded it: at most the message in flight on each connection can
    # arrive twice, with the same Message-ID. Everything else, exactly once.
    twice = [r for r, n in copies.items() if n > 1]
    assert max(copies.values()) <= 2 and len(twice) <= 4, f"duplicates: {twice}"
    for reader in twice:
        ids = {r.message["Message-ID"] for r in sink.to(reader)}
        assert len(ids) == 1
    subjects = {r.message["Subject"] for r in sink.received}
    assert len(subjects) == 1  # one digest, not a second one for the same range


def test_systemd_unit_verifies(tmp_path):
    unit = Path(__file__).resolve().parents[1] / "systemd" / "kvm-digest.service"
    text = unit.read_text()
    for needed in (
        "Type=notify",
        "Restart=on-failure",
        "DynamicUser=yes",
        "StateDirectory=kvm-digest",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ProtectHome=yes",
        "RestrictAddressFamilies=",
        "CapabilityBoundingSet=\n",
        "WatchdogSec=",
    ):
        assert needed in text
    # verify checks that ExecStart exists: point it at this checkout's script.
    local = tmp_path / "kvm-digest.service"
    local.write_text(
        text.replace(
            "/opt/kvm-digest/.venv/bin/kvm-digest", str(Path(sys.executable).parent / "kvm-digest")
        )
    )
    result = subprocess.run(
        ["systemd-analyze", "verify", str(local)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""


def test_sigkill_the_daemon_at_random_points(tmp_path, dovecot, sink, config, kvmarm_git):
    """Kill the daemon again and again while mail arrives and digests go out."""
    import os
    import random
    import time

    from bot.parse.message import parse_message
    from bot.store.archive import Archive

    rng = random.Random(int(os.environ.get("KVM_DIGEST_CRASH_SEED", "20261121")))
    raws = [raw for _, raw in Archive.open(kvmarm_git).walk() if raw is not None][:240]
    unique = {(p.message_id, p.content_hash) for p in map(parse_message, raws)}
    readers = [f"r{i:02d}@example.org" for i in range(20)]
    subscribe(config, *readers)
    for start in range(0, len(raws), 40):
        dovecot.append(*raws[start : start + 40])
        daemon = DaemonProcess(config)
        try:
            daemon.wait_log("kvm-digest is running")
            time.sleep(rng.uniform(0.1, 2.5))  # the random point of the kill
        finally:
            daemon.stop(signal.SIGKILL)
    head = None
    final = DaemonProcess(config)
    try:
        final.wait_log("kvm-digest is running")
        final.wait_log("waiting for new mail", timeout=60)  # the backlog is stored
        head = subprocess.run(
            ["git", "-C", str(tmp_path / "var" / "archive.git"), "rev-parse", "master"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

        def done(got) -> bool:  # every reader has the digest that ends at the head
            return all(
                any(head[:9] in r.message["Subject"] for r in got if reader in r.recipients)
                for reader in readers
            )

        final.expect(sink.wait_until, done, 60)
        assert final.stop() == 0
    finally:
        final.proc.kill()
    assert main(["--config", str(config), "fsck"]) == 0
    from bot.store.index import Index

    index = Index(tmp_path / "var" / "index.sqlite3")
    try:
        assert index.count() == len(unique)
    finally:
        index.close()
    for reader in readers:
        copies = {r.message["Message-ID"]: r.message["Subject"] for r in sink.to(reader)}
        spans = [RANGE.search(s).groups() for s in copies.values()]
        by_start = dict(spans)
        assert len(by_start) == len(spans), f"{reader}: two digests start at one place"
        # Follow A..B, B..C, ... from the beginning of the archive to its head.
        at, steps = "000000000", 0
        while at != head[:9]:
            assert at in by_start, f"{reader}: no digest starts at {at}: a gap"
            at, steps = by_start[at], steps + 1
        assert steps == len(spans) >= 3, f"{reader}: {spans}"


def test_send_now_wakes_the_running_daemon_within_seconds(tmp_path, sink):
    """send-now queues in another process; the daemon's outbox poll finds it."""
    mirror = tmp_path / "mirror.git"  # an intake is required: an empty mirror will do
    subprocess.run(["git", "init", "--quiet", "--bare", str(mirror)], check=True)
    config = tmp_path / "kvm-digest.toml"
    config.write_text(
        f"""
[data]
dir = "{tmp_path / "var"}"
[archive]
path = "{mirror}"
[list]
archive_url = "https://lore.kernel.org/kvm/"
[commands]
address = "{BOT}"
listen = "127.0.0.1:{free_port()}"
[smtp]
host = "127.0.0.1"
port = {sink.port}
security = "none"
poll_interval = 1
[schedule]
daily = "0 6 1 1 *"
weekly = ""
send_empty = true
"""
    )
    subscribe(config, "reader@example.org")
    daemon = DaemonProcess(config)
    try:
        daemon.wait_log("kvm-digest is running")
        started = time.monotonic()
        assert main(["--config", str(config), "send-now"]) == 0
        (digest,) = daemon.expect(sink.wait_for, 1, timeout=10)
        elapsed = time.monotonic() - started
        daemon.wait_log("sent digest 1 to reader@example.org")
        assert daemon.stop() == 0
    finally:
        daemon.proc.kill()
    assert elapsed < 5, f"the digest took {elapsed:.1f}s to go out"
    assert digest.sender.startswith("kvm-digest+bounce-")
    assert digest.message["List-Post"] == "NO"
    assert digest.message["List-Archive"] == "<https://lore.kernel.org/kvm/>"
