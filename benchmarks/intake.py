"""Intake benchmark: import and mirror indexing against their anchors, and peak RSS by size.

    .venv/bin/python benchmarks/intake.py                         # everything, one run
    .venv/bin/python benchmarks/intake.py --sizes 15000,50000     # a quicker RSS part
    .venv/bin/python benchmarks/intake.py --rounds 1              # one run of each side

In ONE run, on the kvmarm bundle (../shared/data/kvmarm-2019-2021.bundle):

- `kvm-digest import` of the bundle's epoch (15,000 messages), msg/s, against
  mail-parser's `parse_from_bytes` alone on the same 15,000 messages
  (target: 4x), with `[import] workers = 1` beside it (parsing in-process);
- mirror-mode indexing (`kvm-digest --archive EPOCH reindex`) against
  `public-inbox-index -L basic` (Debian's public-inbox) on the very same
  epoch (target: 4x); without public-inbox-index it prints a skip line;
- peak RSS of one `kvm-digest import` each of 15k, 50k and 150k messages
  (the bundle re-posted with suffixed ids, benchmarks/run.py's `repost`), the
  importing process and its parser workers apart and summed (target: under
  250 MB, flat with size); git's own helpers are reported apart.

Each ratio compares medians of `--rounds` runs (3) of each side, alternating,
so that a slow minute of a shared machine falls on both sides alike; the
ratio of each round is printed beside it. Prints each target beside its
anchor and writes benchmarks/results/intake.json.
Anchors: `pip install -e '.[bench]'` (mail-parser), `apt-get install public-inbox`.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench  # benchmarks/run.py: the data, repost, mboxes, tables

GOAL = 4.0
LABELS = {"default": "one worker per core", "in-process": "workers = 1"}
RSS_GOAL_MB = 250


# -- the RSS of a process tree ------------------------------------------------


def _status(pid: int) -> dict[str, str]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            out[key] = value.strip()
    except OSError:
        pass
    return out


def _kind(pid: int, root: int) -> str:
    """parent, worker (a parser process), tracker (multiprocessing's), or git."""
    if pid == root:
        return "parent"
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return "other"
    if b"multiprocessing.spawn" in cmd:
        return "worker"
    if b"resource_tracker" in cmd:
        return "tracker"
    if cmd.startswith(b"git") or b"/git" in cmd.split(b" ")[0]:
        return "git"
    return "other"


def _tree(root: int) -> list[int]:
    """`root` and its descendants.

    From each task's `children` file: a few small reads a sample. Scanning
    all of /proc instead cost 1.5 ms a sample here (3% of a core at 20
    samples a second), taken from the cores the measured run is using.
    """
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue  # it has exited
        for tid in tasks:
            try:
                todo += map(int, Path(f"/proc/{pid}/task/{tid}/children").read_text().split())
            except OSError:
                continue
    return out


class TreeRss:
    """Samples a process and everything below it until it exits.

    Each process's own peak is the kernel's (VmHWM, read at every sample), so
    only growth in its last sampling interval can be missed; the peak of the
    sum is that of the samples (every `period` seconds).
    """

    def __init__(self, pid: int, period: float = 0.05) -> None:
        self.pid, self.period = pid, period
        self.peaks: dict[int, tuple[str, int]] = {}
        self.sum_peak_kb = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.wait(self.period):
            total = 0
            for pid in _tree(self.pid):
                st = _status(pid)
                if "VmHWM" not in st:
                    continue
                seen, peak = self.peaks.get(pid, ("other", 0))
                # Asked again until known: a child seen between its fork and
                # its exec has the parent's command line and memory, which
                # its exec drops (a worker, else uncounted, its peak the
                # parent's).
                kind = seen if seen != "other" else _kind(pid, self.pid)
                hwm = int(st["VmHWM"].split()[0])
                self.peaks[pid] = (kind, max(hwm, peak) if kind == seen else hwm)
                if kind in ("parent", "worker"):
                    total += int(st["VmRSS"].split()[0])
            self.sum_peak_kb = max(self.sum_peak_kb, total)

    def stop(self) -> dict:
        self.done.set()
        self.thread.join()
        by_kind: dict[str, list[int]] = {}
        for kind, kb in self.peaks.values():
            by_kind.setdefault(kind, []).append(kb // 1024)
        workers = sorted(by_kind.get("worker", []), reverse=True)
        parent = max(by_kind.get("parent", [0]))
        return {
            "parent_mb": parent,
            "workers_mb": workers,
            "parent_plus_workers_mb": parent + sum(workers),
            "sampled_sum_mb": self.sum_peak_kb // 1024,
            "git_mb": max(by_kind.get("git", [0])),
            "tracker_mb": max(by_kind.get("tracker", [0])),
        }


def timed(args: list[str], cwd: Path = bench.ROOT) -> tuple[float, dict]:
    """Run a command; (seconds, peak RSS of its processes)."""
    started = time.perf_counter()
    proc = subprocess.Popen(args, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    rss = TreeRss(proc.pid)
    _, err = proc.communicate()
    seconds = time.perf_counter() - started
    peaks = rss.stop()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, args))} failed:\n{err.decode(errors='replace')}")
    return seconds, peaks


def kvm_digest(config: Path, data: Path, *args: str) -> list[str]:
    return [*bench.KVM_DIGEST, "--config", str(config), "--data-dir", str(data), *args]


def configs(work: Path) -> dict[str, Path]:
    """A config per setting: the default (one worker per core) and in-process."""
    out = {}
    for name, text in (("default", ""), ("in-process", "[import]\nworkers = 1\n")):
        path = work / f"{name}.toml"
        path.write_text(text)
        out[name] = path
    return out


def verdict(ratio: float, goal: float) -> str:
    return "met" if ratio >= goal else f"short by {goal / ratio:.2f}x"


# -- the parts ------------------------------------------------------------------


def bench_import(
    work: Path, conf: dict[str, Path], source: Path, messages: list[bytes], rounds: int
) -> dict:
    """Each setting's import and mail-parser's parse, alternating, `rounds` times:
    medians, so that a slow minute of a shared machine hits both sides alike."""
    rows = []
    logging.getLogger("mailparser").setLevel(logging.CRITICAL)  # it warns per signature part
    try:
        import mailparser
    except ImportError:
        print("  skipped mail-parser: it is not installed (pip install -e '.[bench]')")
        mailparser = None
    runs: dict[str, list[tuple[float, dict]]] = {name: [] for name in conf}
    anchors: list[float] = []
    for _ in range(rounds):
        for name, path in conf.items():
            data = work / f"import-{name}"
            runs[name].append(timed(kvm_digest(path, data, "import", str(source))))
            shutil.rmtree(data)
        if mailparser is not None:
            anchors.append(bench.rate(mailparser.parse_from_bytes, messages))
    out = {name: _median_run(r, len(messages)) for name, r in runs.items()}
    anchor = statistics.median(anchors) if anchors else None
    ours = out["default"]["msg_per_s"]
    for name, result in out.items():
        rows.append(
            [
                f"kvm-digest import ({LABELS[name]})",
                f"{result['msg_per_s']:,.0f}",
                f"{result['msg_per_s'] / anchor:.2f}" if anchor else "-",
                result["rss"]["parent_plus_workers_mb"],
            ]
        )
    if anchor:
        rows.append(
            ["mail-parser parse_from_bytes alone, same mail", f"{anchor:,.0f}", "1.00", "-"]
        )
    bench.table(
        f"Import of the kvmarm epoch ({len(messages):,} messages): archive + index, end to end",
        ["what", "msg/s", "x mail-parser", "peak RSS MB (parent + workers)"],
        rows,
    )
    result = {"runs": out, "mail_parser_msg_per_s": anchor, "rounds": rounds}
    if anchor:
        ratio = ours / anchor
        each = [len(messages) / t / a for (t, _), a in zip(runs["default"], anchors, strict=True)]
        result.update(ratio=ratio, ratio_each_round=each)
        print(
            f"  import: {ratio:.2f}x mail-parser's parse alone, medians of {rounds} rounds "
            f"({', '.join(f'{r:.2f}' for r in each)} round by round; "
            f"target {GOAL:.0f}x: {verdict(ratio, GOAL)})"
        )
    return result


def _median_run(runs: list[tuple[float, dict]], count: int) -> dict:
    """The median time of a setting's runs, with the highest peak RSS of any."""
    seconds = statistics.median(t for t, _ in runs)
    rss = max((r for _, r in runs), key=lambda r: r["parent_plus_workers_mb"])
    return {
        "seconds": seconds,
        "msg_per_s": count / seconds,
        "rss": rss,
        "each_s": [t for t, _ in runs],
    }


def public_inbox_index(work: Path, epoch: Path) -> tuple[float, dict] | None:
    """public-inbox-index -L basic over a v2 inbox whose epoch 0 is `epoch`."""
    tool = shutil.which("public-inbox-index")
    if tool is None:
        print("  skipped public-inbox-index: it is not installed (apt-get install -y public-inbox)")
        return None
    inbox = work / "pi-inbox"
    (inbox / "git").mkdir(parents=True)
    (inbox / "git" / "0.git").symlink_to(epoch.resolve())
    (inbox / "inbox.lock").touch()
    home = work / "pi-home"
    home.mkdir()
    started = time.perf_counter()
    proc = subprocess.Popen(
        [tool, "-L", "basic", str(inbox)],
        env={**os.environ, "HOME": str(home)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,  # one line per duplicate Message-ID
    )
    rss = TreeRss(proc.pid)
    proc.wait()
    seconds = time.perf_counter() - started
    peaks = rss.stop()
    if proc.returncode != 0:
        raise SystemExit(f"public-inbox-index failed ({proc.returncode})")
    return seconds, peaks


def bench_mirror(work: Path, conf: dict[str, Path], epoch: Path, count: int, rounds: int) -> dict:
    """Mirror indexing and public-inbox-index, alternating, `rounds` times: medians."""
    runs: dict[str, list[tuple[float, dict]]] = {name: [] for name in conf}
    anchors: list[tuple[float, dict]] = []
    for i in range(rounds):
        for name, path in conf.items():
            data = work / f"mirror-{name}"
            runs[name].append(timed(kvm_digest(path, data, "--archive", str(epoch), "reindex")))
            shutil.rmtree(data)
        found = public_inbox_index(work / f"pi-{i}", epoch)
        if found is not None:
            anchors.append(found)
    out = {name: _median_run(r, count) for name, r in runs.items()}
    anchor = (
        (
            statistics.median(t for t, _ in anchors),
            max((r for _, r in anchors), key=lambda r: r["parent_mb"]),
        )
        if anchors
        else None
    )
    pi_rate = count / anchor[0] if anchor else None
    rows = [
        [
            f"kvm-digest mirror-mode indexing ({name})",
            f"{r['msg_per_s']:,.0f}",
            f"{r['seconds']:.2f}",
            f"{r['msg_per_s'] / pi_rate:.2f}" if pi_rate else "-",
            r["rss"]["parent_plus_workers_mb"],
        ]
        for name, r in out.items()
    ]
    if anchor:
        rows.append(
            [
                "public-inbox-index -L basic, same epoch",
                f"{pi_rate:,.0f}",
                f"{anchor[0]:.2f}",
                "1.00",
                anchor[1]["parent_mb"],
            ]
        )
    bench.table(
        f"Mirror-mode indexing of the same epoch ({count:,} commits)",
        ["what", "msg/s", "seconds", "x public-inbox", "peak RSS MB"],
        rows,
    )
    result = {"runs": out}
    if anchor:
        ratio = out["default"]["msg_per_s"] / pi_rate
        each = [a / t for (t, _), (a, _) in zip(runs["default"], anchors, strict=True)]
        result.update(
            public_inbox_seconds=anchor[0],
            public_inbox_msg_per_s=pi_rate,
            ratio=ratio,
            ratio_each_round=each,
            rounds=rounds,
        )
        print(
            f"  mirror indexing: {ratio:.2f}x public-inbox-index -L basic, medians of {rounds} "
            f"rounds ({', '.join(f'{r:.2f}' for r in each)} round by round; "
            f"target {GOAL:.0f}x: {verdict(ratio, GOAL)})"
        )
    return result


def bench_rss(work: Path, conf: Path, messages: list[bytes], sizes: list[int]) -> list[dict]:
    """One import each of `sizes` messages: the bundle, then re-posted rounds of it."""
    out, rows = [], []
    for size in sizes:
        mbox = work / f"rss-{size}.mbox"
        mbox.write_bytes(b"")
        # Whole re-posted rounds of the bundle, oldest first, as bench_scale
        # builds them; the oldest round is cut to make up the size.
        rounds = -(-size // len(messages))
        for k in reversed(range(rounds)):
            take = size - len(messages) * k if k == rounds - 1 else len(messages)
            _append_mbox(mbox, [bench.repost(raw, k) for raw in messages[:take]])
        data = work / f"rss-{size}-var"
        seconds, rss = timed(kvm_digest(conf, data, "import", str(mbox)))
        mbox.unlink()
        shutil.rmtree(data)
        out.append({"messages": size, "seconds": seconds, "msg_per_s": size / seconds, **rss})
        rows.append(
            [
                f"{size:,}",
                f"{seconds:.1f}",
                f"{size / seconds:,.0f}",
                rss["parent_mb"],
                " + ".join(map(str, rss["workers_mb"])) or "-",
                rss["parent_plus_workers_mb"],
                rss["sampled_sum_mb"],
                rss["git_mb"],
            ]
        )
        print(f"  ... {size:,} messages imported in {seconds:.1f} s", file=sys.stderr)
    bench.table(
        "Peak RSS of one `kvm-digest import` (mboxrd) by size, one worker per core",
        [
            "messages",
            "seconds",
            "msg/s",
            "parent MB",
            "workers MB",
            "parent + workers MB",
            "sampled sum MB",
            "git helper MB",
        ],
        rows,
    )
    worst = max(r["parent_plus_workers_mb"] for r in out)
    peaks = ", ".join(str(r["parent_plus_workers_mb"]) for r in out)
    print(
        f"  peak RSS, parent + workers: {peaks} MB"
        f" (target under {RSS_GOAL_MB} MB, flat: {'met' if worst < RSS_GOAL_MB else 'not met'})"
    )
    return out


def _append_mbox(path: Path, messages: list[bytes]) -> None:
    """bench.write_mbox, appending: one file for every round of a size."""
    part = path.with_suffix(".part")
    bench.write_mbox(part, messages)
    with path.open("ab") as out, part.open("rb") as f:
        shutil.copyfileobj(f, out, 1 << 20)
    part.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        default="15000,50000,150000",
        help="messages in each one-import RSS run, comma-separated; empty: no RSS runs "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="runs of each side of a ratio, alternating; their medians are compared "
        "(default: %(default)s)",
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    os.chdir(bench.ROOT)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kvm-digest-intake-") as tmp:
        work = Path(tmp)
        conf = configs(work)
        epoch = bench.epoch(work)
        messages = bench.raw_messages(epoch)
        print(f"kvmarm bundle: {len(messages):,} messages; {os.cpu_count()} cores")
        result = {
            "cores": os.cpu_count(),
            "messages": len(messages),
            "import": bench_import(work, conf, epoch, messages, args.rounds),
            "mirror": bench_mirror(work, conf, epoch, len(messages), args.rounds),
            "rss": bench_rss(work, conf["default"], messages, sizes) if sizes else None,
        }
    result["wall_s"] = time.perf_counter() - started
    bench.save("intake", result)
    print(f"\n(wrote benchmarks/results/intake.json; {result['wall_s']:.0f} s in all)")


if __name__ == "__main__":
    main()
