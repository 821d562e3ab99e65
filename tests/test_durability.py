"""LMTP's 250 means the mail is on disk: fsynced, not only committed.

The daemon runs under strace, which records every fsync/fdatasync and every
write to a socket with the thread that made it; the order of those syscalls
in the loop's thread is the proof: between the 354 that asks for the
message and the 250 that takes responsibility for it, the index's WAL is
synced. With `synchronous = NORMAL` alone, it was not (a power cut lost mail
the MTA had already deleted).
"""

from __future__ import annotations

import re
import signal
import smtplib
import subprocess
from pathlib import Path

from tests.dovecot import free_port
from tests.test_daemon import BOT, DaemonProcess

SYSCALL = re.compile(r"^(\d+) +(\w+)\((.*)$")


def mirror_config(tmp_path: Path, sink_port: int, daily: str = "0 6 1 1 *") -> Path:
    """A daemon with an empty mirror as its intake (re-read every second), LMTP
    on a free port; `daily` has a seconds field."""
    mirror = tmp_path / "mirror.git"
    subprocess.run(["git", "init", "--quiet", "--bare", str(mirror)], check=True)
    config = tmp_path / "kvm-digest.toml"
    config.write_text(
        f"""
[data]
dir = "{tmp_path / "var"}"
[archive]
path = "{mirror}"
fetch_interval = 1
[commands]
address = "{BOT}"
listen = "127.0.0.1:{free_port()}"
[smtp]
host = "127.0.0.1"
port = {sink_port}
security = "none"
[schedule]
daily = "{daily if len(daily.split()) == 6 else "0 " + daily}"
weekly = ""
seconds = true
"""
    )
    return config


def lmtp_port(config: Path) -> int:
    return int(re.search(r'listen = "127.0.0.1:(\d+)"', config.read_text()).group(1))


def traced_children(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children]


def test_lmtp_250_comes_after_the_wal_is_synced(tmp_path, sink):
    config = mirror_config(tmp_path, sink.port)
    trace = tmp_path / "strace.out"
    strace = (
        "strace",
        "-f",
        "-y",
        "-s",
        "64",
        "-e",
        "trace=fsync,fdatasync,sendto,write",
        "-o",
        str(trace),
    )
    daemon = DaemonProcess(config, prefix=strace)
    try:
        daemon.wait_log("kvm-digest is running", timeout=60)
        with smtplib.LMTP("127.0.0.1", lmtp_port(config)) as client:
            refused = client.sendmail(
                "una@example.org",
                [BOT],
                f"From: una@example.org\r\nTo: {BOT}\r\nSubject: help\r\n"
                "Message-ID: <durable@example.org>\r\n\r\nhelp\r\n".encode(),
            )
        assert refused == {}
        (pid,) = traced_children(daemon.proc.pid)
        subprocess.run(["kill", "-TERM", str(pid)], check=True)
        assert daemon.proc.wait(timeout=30) == 0
    finally:
        daemon.proc.send_signal(signal.SIGKILL)
    calls = [m.groups() for m in map(SYSCALL.match, trace.read_text().splitlines()) if m]

    def said(args: str, code: str) -> bool:  # a reply written to the LMTP socket
        return args.split(", ", 1)[1].startswith(f'"{code}')

    asked = [i for i, (_, name, args) in enumerate(calls) if name == "sendto" and said(args, "354")]
    assert asked, "no 354 for the DATA in the trace"
    tid = calls[asked[-1]][0]
    after = [(name, args) for t, name, args in calls[asked[-1] :] if t == tid]
    ok = next(i for i, (name, args) in enumerate(after) if name == "sendto" and said(args, "250"))
    synced = [
        args
        for name, args in after[:ok]
        if name in ("fsync", "fdatasync") and "index.sqlite3-wal" in args
    ]
    assert synced, "the 250 was sent before the command mail's WAL was synced"
