"""Does the daemon stay responsive while long work runs? (issue 25, "Responsiveness")

    .venv/bin/python benchmarks/responsive.py                    # both scenarios, full size
    .venv/bin/python benchmarks/responsive.py --commits 20000    # a quicker catch-up
    .venv/bin/python benchmarks/responsive.py periodic           # one scenario

Runs the real daemon, `kvm-digest run`, with a config of its own in a temp
dir: a mirror of a local public-inbox epoch as intake (re-read every
second), the LMTP desk on a free port, an aiosmtpd relay in a process of
its own. While the work runs, the benchmark

- opens an LMTP session every ~50 ms and times connect + the 220 greeting;
- is the daemon's systemd: NOTIFY_SOCKET is a unix datagram socket read
  here, WATCHDOG_USEC is set as systemd sets it (a ping every second), and
  the largest gap between two WATCHDOG=1 is reported.

Scenarios: `catchup`, the index catching up with 130,000 new commits (the
kvmarm bundle re-posted with suffixed ids, as `benchmarks/run.py scale`
does); `periodic`, one periodic run for 2,000 subscribers each with a topic
of their own (2,000 digests rendered, stored, queued and sent). Targets:
greeting p99 < 200 ms, no watchdog gap over 5 s. Writes
benchmarks/results/responsive.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from run import RESULTS, epoch, raw_messages, repost, save, table  # noqa: E402

from bot.delivery import periodic, subscribers  # noqa: E402
from bot.parse.message import parse_lenient  # noqa: E402
from bot.store.archive import Archive  # noqa: E402
from bot.store.inbox import open_mirror  # noqa: E402
from bot.store.index import Index  # noqa: E402
from tests.dovecot import free_port  # noqa: E402
from tests.mailfactory import commit_ids  # noqa: E402
from tests.smtpsink import relay_process  # noqa: E402

GREETING_P99_MS = 200
WATCHDOG_GAP_S = 5.0
PROBE_EVERY = 0.05
WATCHDOG_USEC = 2_000_000
"""As systemd sets it for WatchdogSec=2s: the daemon pings every second."""
BOT = "kvm-digest@example.org"


class Probe:
    """LMTP greetings every PROBE_EVERY seconds and the watchdog's pings, recorded."""

    def __init__(self, lmtp_port: int, notify: Path) -> None:
        self.port = lmtp_port
        self.greetings: list[float] = []
        self.when: list[tuple[float, float]] = []
        self.failures: list[str] = []
        self.pings: list[float] = []
        self.stop = threading.Event()
        self.recording = threading.Event()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(notify))
        self.sock.settimeout(0.2)
        self.threads = [
            threading.Thread(target=self._greet, daemon=True),
            threading.Thread(target=self._listen, daemon=True),
        ]
        for t in self.threads:
            t.start()

    def _listen(self) -> None:
        while not self.stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            if b"WATCHDOG=1" in data and self.recording.is_set():
                self.pings.append(time.monotonic())

    def _greet(self) -> None:
        while not self.stop.is_set():
            began = time.monotonic()
            if self.recording.is_set():
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=30) as s:
                        line = b""
                        while not line.endswith(b"\n"):
                            chunk = s.recv(512)
                            if not chunk:
                                break
                            line += chunk
                        took = time.monotonic() - began
                        s.sendall(b"QUIT\r\n")
                    if line.startswith(b"220"):
                        self.greetings.append(took)
                        self.when.append((began, took))
                    else:
                        self.failures.append(line.decode(errors="replace").strip())
                except OSError as err:
                    self.failures.append(str(err))
            self.stop.wait(max(0.0, PROBE_EVERY - (time.monotonic() - began)))

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()
        self.sock.close()

    def figures(self, seconds: float, began: float) -> dict:
        g = sorted(self.greetings)
        # Inclusive: a p99 of few samples is not extrapolated past the slowest.
        q = statistics.quantiles(g, n=100, method="inclusive") if len(g) >= 2 else g * 99
        gaps = [b - a for a, b in zip(self.pings, self.pings[1:], strict=False)]
        return {
            "seconds": seconds,
            "greetings": len(g),
            "greeting_failures": len(self.failures),
            "failure_examples": self.failures[:3],
            "greeting_p50_ms": statistics.median(g) * 1000 if g else None,
            "greeting_p99_ms": q[98] * 1000 if g else None,
            "greeting_max_ms": g[-1] * 1000 if g else None,
            "watchdog_pings": len(self.pings),
            "watchdog_interval_s": WATCHDOG_USEC / 2e6,
            "watchdog_max_gap_s": max(gaps) if gaps else None,
            "slowest": [
                {"at_s": round(at - began, 2), "ms": round(took * 1000, 1)}
                for at, took in sorted(self.when, key=lambda w: -w[1])[:5]
            ],
            "largest_gaps": [
                {"at_s": round(a - began, 2), "s": round(b - a, 2)}
                for a, b in sorted(
                    zip(self.pings, self.pings[1:], strict=False), key=lambda p: p[0] - p[1]
                )[:3]
            ],
        }


def config_file(tmp: Path, mirror: Path, relay: int, daily: str) -> tuple[Path, int]:
    lmtp = free_port()
    path = tmp / "kvm-digest.toml"
    path.write_text(
        f"""
[data]
dir = "{tmp / "var"}"
[archive]
path = "{mirror}"
fetch_interval = 1
[commands]
address = "{BOT}"
listen = "127.0.0.1:{lmtp}"
[smtp]
host = "127.0.0.1"
port = {relay}
security = "none"
[schedule]
daily = "{daily}"
weekly = ""
seconds = true
"""
    )
    return path, lmtp


class Daemon:
    """`kvm-digest run` as systemd would start it; its log in a file."""

    def __init__(self, config: Path, notify: Path, log: Path) -> None:
        env = {**os.environ, "NOTIFY_SOCKET": str(notify), "WATCHDOG_USEC": str(WATCHDOG_USEC)}
        self.log_path = log
        self.log_file = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "--config", str(config), "run"],
            stderr=self.log_file,
            stdout=subprocess.DEVNULL,
            env=env,
            cwd=ROOT,
        )

    def wait_log(self, text: str, timeout: float) -> float:
        """Wait until `text` is in the log; the time it was seen."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log_path.read_text(errors="replace"):
                return time.monotonic()
            if self.proc.poll() is not None:
                raise SystemExit(f"the daemon ended:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.05)
        raise SystemExit(f"no {text!r} in the daemon's log:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        """SIGTERM, as systemd stops it; its exit status is kept."""
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.code = self.proc.returncode
        self.log_file.close()
        kept = RESULTS / f"responsive-{self.log_path.parent.name}.log"
        RESULTS.mkdir(parents=True, exist_ok=True)
        kept.write_bytes(self.log_path.read_bytes())


def big_archive(cache: Path, commits: int) -> Path:
    """A public-inbox epoch of `commits` messages: the bundle re-posted, oldest round first.

    Kept in `cache` between runs (building it parses every message once).
    """
    path = cache / f"reposted-{commits}.git"
    if (path / "refs" / "heads" / "master").exists() or (path / "packed-refs").exists():
        return path
    source = raw_messages(epoch(cache))
    rounds = -(-commits // len(source))
    partial = cache / f"reposted-{commits}.partial.git"
    subprocess.run(["rm", "-rf", str(partial)], check=True)
    archive = Archive.create(partial)
    left = commits
    started = time.perf_counter()
    for k in reversed(range(rounds)):
        take = min(left, len(source))
        batch = [repost(raw, k) for raw in source[len(source) - take :]]
        for i in range(0, len(batch), 5000):
            archive.append((raw, parse_lenient(raw)) for raw in batch[i : i + 5000])
        left -= take
        print(
            f"  building the archive: {commits - left:,} of {commits:,} commits"
            f" ({time.perf_counter() - started:.0f} s)",
            file=sys.stderr,
        )
    partial.rename(path)
    return path


@contextlib.contextmanager
def probed(tmp: Path, mirror: Path, daily: str) -> Iterator[tuple[Daemon, Probe]]:
    """The daemon on `mirror` with a relay of its own, probed once it runs."""
    relay_port = free_port()
    relay = relay_process(relay_port)
    config, lmtp = config_file(tmp, mirror, relay_port, daily)
    notify = tmp / "notify"
    probe = Probe(lmtp, notify)
    daemon = Daemon(config, notify, tmp / "daemon.log")
    try:
        daemon.wait_log("kvm-digest is running", 60)
        yield daemon, probe
    finally:
        daemon.stop()  # before the notify socket goes
        probe.close()
        relay.terminate()
        relay.wait()


def scenario_catchup(cache: Path, commits: int) -> dict:
    mirror = big_archive(cache, commits)
    with tempfile.TemporaryDirectory(prefix="kvm-digest-responsive-") as tmp_:
        tmp = Path(tmp_)
        with probed(tmp, mirror, "0 0 6 1 1 *") as (daemon, probe):
            probe.recording.set()
            began = time.monotonic()
            ended = daemon.wait_log(f"indexed {commits} new messages", 3600)
            probe.recording.clear()
        result = probe.figures(ended - began, began)
    result["daemon_exit"] = daemon.code
    result["commits"] = commits
    result["commits_per_s"] = commits / result["seconds"]
    return result


def scenario_periodic(cache: Path, topics: int, new: int) -> dict:
    """One periodic run over `new` new messages of the bundle for `topics` topics.

    The mirror is the bundle's epoch with its head held back by `new`
    commits; the index is caught up and the schedule started there (as a
    daemon that has been running would have it), the subscribers are
    added, then the head moves on and the daemon starts: its first run,
    three seconds after start, covers the new messages.
    """
    full = epoch(cache)
    revs = commit_ids(full)
    with tempfile.TemporaryDirectory(prefix="kvm-digest-responsive-") as tmp_:
        tmp = Path(tmp_)
        mirror = tmp / "mirror.git"
        subprocess.run(["git", "init", "--quiet", "--bare", str(mirror)], check=True)
        (mirror / "objects" / "info" / "alternates").write_text(
            str((full / "objects").resolve()) + "\n"
        )

        def head_at(rev: str) -> None:
            subprocess.run(
                ["git", "-C", str(mirror), "update-ref", "refs/heads/master", rev], check=True
            )

        head_at(revs[-1 - new])
        (tmp / "var").mkdir()
        index = Index(tmp / "var" / "index.sqlite3")
        index.catch_up(open_mirror(mirror), max_size=None)
        with index.conn:
            periodic.ensure(index.conn, "daily")
            for i in range(topics):
                # Distinct topics, each matching part of the range.
                topic = f"s:{('kvm', 'arm64', 'vgic', 'pmu', 'selftests')[i % 5]} OR s:t{i}"
                subscribers.subscribe(index.conn, f"reader{i:05d}@example.org", topic=topic)
        index.close()
        head_at(revs[-1])
        with probed(tmp, mirror, "*/3 * * * * *") as (daemon, probe):
            probe.recording.set()
            began = time.monotonic()
            daemon.wait_log("daily digest: ", 3600)
            rendered = time.monotonic()
            log = daemon.log_path.read_text()
            line = next(x for x in log.splitlines() if "daily digest: " in x)
            counts = Index(tmp / "var" / "index.sqlite3")
            while True:
                queued = counts.conn.execute(
                    "SELECT COUNT(*) FROM outbox WHERE status NOT IN ('sent', 'failed')"
                ).fetchone()[0]
                if not queued:
                    break
                time.sleep(0.2)
            sent = counts.conn.execute(
                "SELECT COUNT(*) FROM outbox WHERE status = 'sent'"
            ).fetchone()[0]
            counts.close()
            ended = time.monotonic()
            probe.recording.clear()
        result = probe.figures(ended - began, began)
    result.update(
        daemon_exit=daemon.code,
        topics=topics,
        new_messages=new,
        run_log=line.split("daily digest: ", 1)[1],
        render_and_queue_s=rendered - began,
        sent=sent,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenarios", nargs="*", default=["catchup", "periodic"])
    parser.add_argument("--commits", type=int, default=130_000, help="the catch-up's size")
    parser.add_argument("--topics", type=int, default=2000)
    parser.add_argument("--new", type=int, default=300, help="messages the periodic run covers")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(tempfile.gettempdir()) / "kvm-digest-responsive-cache",
        help="where the built archives are kept between runs",
    )
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    for name in args.scenarios:
        if name == "catchup":
            results["catchup"] = scenario_catchup(args.cache, args.commits)
        elif name == "periodic":
            results["periodic"] = scenario_periodic(args.cache, args.topics, args.new)
        else:
            raise SystemExit(f"unknown scenario {name!r}: catchup or periodic")
    rows = []
    for name, r in results.items():
        what = (
            f"catch-up of {r['commits']:,} commits"
            if name == "catchup"
            else f"periodic run, {r['topics']:,} topics"
        )
        rows.append(
            [
                what,
                f"{r['seconds']:.1f}",
                r["greetings"],
                r["greeting_failures"],
                f"{r['greeting_p50_ms']:.1f}",
                f"{r['greeting_p99_ms']:.1f}",
                f"{r['greeting_max_ms']:.1f}",
                f"{r['watchdog_max_gap_s']:.2f}",
            ]
        )
    table(
        "Responsiveness: LMTP greeting (connect + 220) and watchdog gaps while the work runs",
        ["work", "s", "greetings", "failed", "p50 ms", "p99 ms", "max ms", "max gap s"],
        rows,
    )
    for name, r in results.items():
        ok = r["greeting_p99_ms"] < GREETING_P99_MS and r["watchdog_max_gap_s"] <= WATCHDOG_GAP_S
        print(
            f"  {name}: p99 {r['greeting_p99_ms']:.1f} ms against < {GREETING_P99_MS} ms,"
            f" largest watchdog gap {r['watchdog_max_gap_s']:.2f} s against <= {WATCHDOG_GAP_S} s"
            f" (pings every {WATCHDOG_USEC / 2e6:.0f} s): {'met' if ok else 'missed'}"
        )
        if name == "periodic":
            print(f"  periodic: {r['run_log']}; {r['sent']} sent")
        print(f"  {name}: the daemon exited with {r['daemon_exit']} on SIGTERM (0: a clean stop)")
    # One scenario run alone keeps the other's last figures in the file.
    kept = RESULTS / "responsive.json"
    earlier = json.loads(kept.read_text()) if kept.exists() else {}
    save("responsive", {**earlier, **results})


if __name__ == "__main__":
    main()
