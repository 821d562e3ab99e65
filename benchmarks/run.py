"""kvm-digest benchmarks: ingest, digest latency, live latency, fan-out, scaling.

    .venv/bin/python benchmarks/run.py                 # everything
    .venv/bin/python benchmarks/run.py ingest digest   # some of it

Each part prints a small table and writes benchmarks/results/<part>.json.
Data: the kvmarm bundle in ../shared/data. The anchors (mail-parser, the
standard library's modern email policy, b4) come from the `bench` extra:
`pip install -e '.[bench]'`. Not part of the test run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.digest import build as digestmod  # noqa: E402
from bot.digest import ranges  # noqa: E402
from bot.store.archive import Archive  # noqa: E402
from bot.store.index import Index  # noqa: E402
from tests.mailfactory import first_commits  # noqa: E402

BUNDLE = ROOT.parent / "shared" / "data" / "kvmarm-2019-2021.bundle"
RESULTS = ROOT / "benchmarks" / "results"
KVM_DIGEST = [sys.executable, "-m", "bot.cli"]


def table(title: str, header: list[str], rows: list[list[object]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    print(f"\n{title}")
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  " + "  ".join(str(x).rjust(w) for x, w in zip(row, widths, strict=True)))


def save(part: str, data: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{part}.json").write_text(json.dumps(data, indent=2) + "\n")


def run_child(args: list[str], cwd: Path = ROOT) -> tuple[float, int]:
    """Run a command; return (seconds, peak RSS in MB) of that child alone."""
    started = time.perf_counter()
    proc = subprocess.Popen(args, cwd=cwd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(args)} failed")
    return elapsed, usage.ru_maxrss // 1024


def epoch(work: Path, count: int | None = None) -> Path:
    """The bundle as a bare public-inbox epoch, cut to its first `count` commits."""
    path = work / f"epoch-{count or 'all'}.git"
    if path.exists():
        return path
    full = work / "epoch-all.git"
    if not full.exists():
        subprocess.run(["git", "clone", "--quiet", "--bare", str(BUNDLE), str(full)], check=True)
    if count is None:
        return full
    first_commits(full, path, count)
    return path


def raw_messages(source: Path, limit: int | None = None) -> list[bytes]:
    return [raw for _, raw in Archive.open(source).walk() if raw is not None][:limit]


def rate(fn: Callable[[bytes], object], messages: list[bytes]) -> float:
    started = time.perf_counter()
    for raw in messages:
        fn(raw)
    return len(messages) / (time.perf_counter() - started)


# -- 1. ingest -----------------------------------------------------------------


def bench_ingest(work: Path, sample: int) -> dict:
    started = time.perf_counter()
    subprocess.run(
        ["git", "clone", "--quiet", "--bare", str(BUNDLE), str(work / "unbundled.git")], check=True
    )
    unbundle = time.perf_counter() - started
    source = epoch(work)
    data = work / "ingest-var"
    seconds, rss = run_child([*KVM_DIGEST, "--data-dir", str(data), "import", str(source)])
    bundle_seconds, bundle_rss = run_child(
        [*KVM_DIGEST, "--data-dir", str(work / "ingest-bundle-var"), "import", str(BUNDLE)]
    )
    count = 15000
    ours = count / seconds
    messages = raw_messages(source, sample)
    anchors = {}
    import email
    import email.policy

    anchors["stdlib email, policy=default (parse only)"] = rate(
        lambda raw: email.message_from_bytes(raw, policy=email.policy.default), messages
    )
    try:
        import mailparser

        anchors["mail-parser parse_from_bytes (parse only)"] = rate(
            mailparser.parse_from_bytes, messages
        )
    except ImportError:
        print("mail-parser is not installed: pip install -e '.[bench]'")
    try:
        import logging

        from b4 import LoreMailbox, emlpolicy

        logging.getLogger("b4").setLevel(logging.CRITICAL)  # it warns per odd thread

        box = LoreMailbox()
        anchors["b4 LoreMailbox.add_message (with its parse)"] = rate(
            lambda raw: box.add_message(email.message_from_bytes(raw, policy=emlpolicy)), messages
        )
    except ImportError:
        print("b4 is not installed: pip install -e '.[bench]'")
    rows = [
        ["kvm-digest import, end to end (epoch)", f"{ours:,.0f}", "1.00", f"{rss}"],
        [
            "kvm-digest import, end to end (bundle)",
            f"{count / bundle_seconds:,.0f}",
            f"{ours / (count / bundle_seconds):.2f}",
            f"{bundle_rss}",
        ],
    ]
    for name, value in anchors.items():
        rows.append([name, f"{value:,.0f}", f"{ours / value:.2f}", "-"])
    table(
        f"Ingest: {count} kvmarm messages (anchors over the first {len(messages)})",
        ["what", "msg/s", "kvm-digest x", "peak RSS MB"],
        rows,
    )
    print(f"  (unbundling alone: {unbundle:.1f}s; ours is archive + index + threading)")
    result = {
        "messages": count,
        "seconds": seconds,
        "msg_per_s": ours,
        "peak_rss_mb": rss,
        "bundle_seconds": bundle_seconds,
        "bundle_peak_rss_mb": bundle_rss,
        "unbundle_seconds": unbundle,
        "anchor_sample": len(messages),
        "anchors_msg_per_s": anchors,
        "ratios": {k: ours / v for k, v in anchors.items()},
    }
    save("ingest", result)
    return result


# -- 2. digest latency ---------------------------------------------------------


def digest_times(
    data_dir: Path, windows: dict[str, tuple[str, str] | None], runs: int = 7
) -> list[dict]:
    index = Index(data_dir / "index.sqlite3")
    env = digestmod.environment()
    out = []
    for label, window in windows.items():
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            if window:
                rng = ranges.by_time(
                    index.conn, ranges.parse_when(window[0]), ranges.parse_when(window[1])
                )
            else:
                rng = ranges.everything(index.conn)
            text = digestmod.render(digestmod.build(index.conn, rng), env)
            times.append(time.perf_counter() - started)
        out.append(
            {
                "range": label,
                "messages": rng.end_seq - rng.start_seq,
                "median_ms": statistics.median(times) * 1000,
                "lines": text.count("\n"),
            }
        )
    index.close()
    return out


def bench_digest(work: Path) -> dict:
    data = work / "ingest-var"
    if not (data / "index.sqlite3").exists():
        run_child([*KVM_DIGEST, "--data-dir", str(data), "import", str(epoch(work))])
    windows = {
        "1 day": ("2021-03-01", "2021-03-02"),
        "1 week": ("2021-03-01", "2021-03-08"),
        "1 month": ("2021-03-01", "2021-04-01"),
        "whole archive": None,
    }
    results = digest_times(data, windows)
    table(
        "Digest latency (from the index, median of 7)",
        ["range", "messages", "median ms"],
        [[r["range"], r["messages"], f"{r['median_ms']:.1f}"] for r in results],
    )
    cli, _ = run_child(
        [
            *KVM_DIGEST,
            "--data-dir",
            str(data),
            "digest",
            "--since",
            "2021-03-01",
            "--until",
            "2021-03-02",
        ]
    )
    print(f"  (the CLI for one day, process start included: {cli * 1000:.0f} ms)")
    result = {"ranges": results, "cli_one_day_ms": cli * 1000}
    save("digest", result)
    return result


# -- 3. live latency -----------------------------------------------------------


async def live_latency(count: int) -> list[float]:
    from bot.intake.imap import Listener, Route
    from tests.dovecot import Dovecot
    from tests.mailfactory import Store, mail

    server = Dovecot().start()
    root = Path(tempfile.mkdtemp(prefix="kvm-digest-live-"))
    store = Store(root)
    settings = server.imap_settings()
    listener = Listener(settings, store.importer, Route("kvm.vger.kernel.org", "", ""))
    stop = asyncio.Event()
    task = asyncio.create_task(listener.run(stop))
    await asyncio.wait_for(listener.ready.wait(), 20)
    client = server.client()
    latencies = []
    try:
        for i in range(count):
            raw = mail(f"[PATCH] live {i}", f"live{i}@x", minutes=i).replace(b"\n", b"\r\n")
            listener.stored.clear()
            await asyncio.to_thread(client.append, "INBOX", None, None, raw)
            appended = time.perf_counter()
            while store.index.count() < i + 1:
                listener.stored.clear()
                await asyncio.wait_for(listener.stored.wait(), 10)
            latencies.append(time.perf_counter() - appended)
    finally:
        client.logout()
        stop.set()
        await task
        server.cleanup()
    return latencies


def bench_live(count: int) -> dict:
    latencies = asyncio.run(live_latency(count))
    cuts = statistics.quantiles(latencies, n=100)
    p50, p99 = statistics.median(latencies), cuts[98]
    table(
        f"Live latency: APPEND to indexed, {count} messages, Dovecot on 127.0.0.1",
        ["p50 ms", "p99 ms", "max ms"],
        [[f"{p50 * 1000:.1f}", f"{p99 * 1000:.1f}", f"{max(latencies) * 1000:.1f}"]],
    )
    result = {
        "messages": count,
        "p50_ms": p50 * 1000,
        "p99_ms": p99 * 1000,
        "max_ms": max(latencies) * 1000,
    }
    save("live", result)
    return result


# -- 4. fan-out ----------------------------------------------------------------


async def fan_out(count: int) -> tuple[float, int]:
    """Queue one digest for `count` subscribers; time until all are sent.

    The relay is aiosmtpd's own Sink handler in a process of its own, as a
    real relay would be (in-process it would share our GIL); completion is
    read from the outbox, where each mail is marked sent after the 250.
    """
    from bot.config import from_table
    from bot.delivery import periodic, subscribers
    from bot.delivery.mail import Identity
    from bot.delivery.outbox import Outbox, Sender
    from tests.dovecot import free_port
    from tests.mailfactory import DATA, Store
    from tests.smtpsink import relay_process

    port = free_port()
    relay = relay_process(port)
    root = Path(tempfile.mkdtemp(prefix="kvm-digest-fanout-"))
    config = from_table(
        {
            "commands": {"address": "kvm-digest@example.org"},
            "smtp": {"host": "127.0.0.1", "port": port, "security": "none"},
        }
    )
    store = Store(root)
    conn = store.index.conn
    with conn:
        periodic.ensure(conn, "daily")
        for i in range(count):
            subscribers.subscribe(conn, f"reader{i:05d}@example.org")
    import mailbox
    import socket

    store.importer.run(
        [(str(i), m.as_bytes()) for i, m in enumerate(mailbox.mbox(DATA / "kvmarm-slice.mbox"))],
        "slice",
    )
    outbox = Outbox(conn, Identity("kvm-digest@example.org"))
    periodic.run(conn, config, outbox, digestmod.environment(), "daily")
    size = len(outbox.render(outbox.due(1)[0]))
    for _ in range(200):  # readiness of the relay's port
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            await asyncio.sleep(0.05)
    sender = Sender(outbox, config.smtp)
    stop = asyncio.Event()
    started = time.perf_counter()
    task = asyncio.create_task(sender.run(stop))
    while outbox.counts().get("sent", 0) < count:
        sender.sent.clear()
        await asyncio.wait_for(sender.sent.wait(), 30)
    elapsed = time.perf_counter() - started
    stop.set()
    await task
    relay.terminate()
    relay.wait()
    return elapsed, size


def bench_fanout(count: int) -> dict:
    elapsed, size = asyncio.run(fan_out(count))
    table(
        f"Fan-out: one digest ({size:,} bytes) to {count} subscribers, aiosmtpd relay",
        ["seconds", "msg/s"],
        [[f"{elapsed:.2f}", f"{count / elapsed:,.0f}"]],
    )
    result = {
        "subscribers": count,
        "seconds": elapsed,
        "msg_per_s": count / elapsed,
        "digest_bytes": size,
    }
    save("fanout", result)
    return result


# -- 5. scaling ----------------------------------------------------------------


def bench_scaling(work: Path) -> dict:
    rows, results = [], []
    for count in (1000, 5000, 15000):
        source = epoch(work, None if count == 15000 else count)
        data = work / f"scale-{count}"
        seconds, rss = run_child([*KVM_DIGEST, "--data-dir", str(data), "import", str(source)])
        (whole,) = digest_times(data, {"whole": None}, runs=3)
        results.append(
            {
                "messages": count,
                "ingest_seconds": seconds,
                "ingest_us_per_msg": seconds / count * 1e6,
                "peak_rss_mb": rss,
                "digest_all_ms": whole["median_ms"],
                "digest_us_per_msg": whole["median_ms"] * 1000 / count,
            }
        )
        r = results[-1]
        rows.append(
            [
                count,
                f"{seconds:.2f}",
                f"{r['ingest_us_per_msg']:.0f}",
                rss,
                f"{whole['median_ms']:.0f}",
                f"{r['digest_us_per_msg']:.1f}",
            ]
        )
    table(
        "Scaling: cost per message as the archive grows",
        ["messages", "ingest s", "us/msg", "RSS MB", "digest --all ms", "us/msg"],
        rows,
    )
    save("scaling", {"sizes": results})
    return {"sizes": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "parts", nargs="*", default=["ingest", "digest", "live", "fanout", "scaling"]
    )
    parser.add_argument(
        "--anchor-sample",
        type=int,
        default=3000,
        help="messages the slow anchors parse (rates are per message)",
    )
    parser.add_argument("--live-messages", type=int, default=200)
    parser.add_argument("--subscribers", type=int, default=1000)
    args = parser.parse_args()
    os.chdir(ROOT)
    with tempfile.TemporaryDirectory(prefix="kvm-digest-bench-") as tmp:
        work = Path(tmp)
        for part in args.parts:
            if part == "ingest":
                bench_ingest(work, args.anchor_sample)
            elif part == "digest":
                bench_digest(work)
            elif part == "live":
                bench_live(args.live_messages)
            elif part == "fanout":
                bench_fanout(args.subscribers)
            elif part == "scaling":
                bench_scaling(work)
            else:
                raise SystemExit(f"unknown part {part!r}")


if __name__ == "__main__":
    main()
