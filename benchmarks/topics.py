"""Topic benchmarks: filtered digest latency and what file paths cost the index.

    .venv/bin/python benchmarks/topics.py [--data-dir DIR]

Imports the kvmarm bundle (../shared/data) into a temporary data directory
(or reuses DIR when it already holds an index), then prints:

- one-month digests (2021-03) from the index, build + render, median of 9,
  unfiltered and filtered by several topic queries (target: < 50 ms);
- the index growth for the `paths` table on the whole bundle: rows, and the
  index file size with and without it (each copy VACUUMed);
- the time to extract paths from every message body.

Writes benchmarks/results/topics.json. Not part of the test run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.digest import build as digestmod  # noqa: E402
from bot.digest import ranges  # noqa: E402
from bot.parse import mime  # noqa: E402
from bot.parse.paths import touched  # noqa: E402
from bot.store.archive import Archive  # noqa: E402

BUNDLE = ROOT.parent / "shared" / "data" / "kvmarm-2019-2021.bundle"
RESULTS = ROOT / "benchmarks" / "results"
QUERIES = [
    None,
    "dfn:arch/arm64/kvm/",
    "dfn:arch/arm64/kvm/ OR s:arm64",
    "dfn:arch/arm64/kvm/vgic/ -s:RFC",
    "f:maz@kernel.org",
    "b:Reviewed-by",
    '(s:"KVM: arm64" OR dfn:tools/testing/selftests/) NOT dfn:arch/x86/',
    "s:riscv",
]


def clone(bundle: Path, work: Path) -> Path:
    source = work / "kvmarm.git"
    if not source.exists():
        subprocess.run(["git", "clone", "--quiet", "--bare", str(bundle), str(source)], check=True)
    return source


def prepare(data: Path, work: Path, bundle: Path) -> None:
    if (data / "index.sqlite3").exists():
        return
    source = clone(bundle, work)
    subprocess.run(
        [sys.executable, "-m", "bot.cli", "--data-dir", str(data), "import", str(source)],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def latency(data: Path, runs: int = 9) -> list[dict]:
    conn = sqlite3.connect(data / "index.sqlite3")
    env = digestmod.environment()
    rng = ranges.by_time(conn, ranges.parse_when("2021-03-01"), ranges.parse_when("2021-04-01"))
    out = []
    for q in QUERIES:
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            d = digestmod.build(conn, rng, query=q)
            digestmod.render(d, env)
            times.append(time.perf_counter() - started)
        out.append(
            {
                "query": q or "(none)",
                "series": len(d.series),
                "messages": d.messages,
                "median_ms": statistics.median(times) * 1000,
                "max_ms": max(times) * 1000,
            }
        )
    out.insert(0, {"range_messages": rng.end_seq - rng.start_seq})
    conn.close()
    return out


def growth(data: Path, work: Path) -> dict:
    """Index size with and without the paths table, both VACUUMed."""
    sizes = {}
    for label, drop in (("with", False), ("without", True)):
        copy = work / f"index-{label}.sqlite3"
        shutil.copy(data / "index.sqlite3", copy)
        conn = sqlite3.connect(copy)
        conn.execute("PRAGMA journal_mode = DELETE")
        if drop:
            conn.execute("DROP TABLE paths")
        conn.execute("VACUUM")
        conn.close()
        sizes[label] = copy.stat().st_size
    conn = sqlite3.connect(data / "index.sqlite3")
    rows, messages, distinct = conn.execute(
        "SELECT COUNT(*), COUNT(DISTINCT seq), COUNT(DISTINCT path) FROM paths"
    ).fetchone()
    total = conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
    conn.close()
    return {
        "messages": total,
        "messages_with_paths": messages,
        "path_rows": rows,
        "distinct_paths": distinct,
        "index_bytes_with_paths": sizes["with"],
        "index_bytes_without_paths": sizes["without"],
        "growth_bytes": sizes["with"] - sizes["without"],
        "growth_percent": 100 * (sizes["with"] - sizes["without"]) / sizes["without"],
    }


def extraction(work: Path, bundle: Path) -> dict:
    """Seconds to read paths out of every message's text parts."""
    source = clone(bundle, work)
    texts = []
    for _, raw in Archive.open(source).walk():
        if raw is not None:
            headers, body = mime.split_message(raw)
            texts.append(mime.body_texts(raw, headers, body))
    started = time.perf_counter()
    for parts in texts:
        touched(parts)
    elapsed = time.perf_counter() - started
    per = elapsed / len(texts) * 1e6
    return {"messages": len(texts), "seconds": elapsed, "us_per_message": per}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, help="reuse (or create) this data directory")
    parser.add_argument("--bundle", type=Path, default=BUNDLE, help=f"default: {BUNDLE}")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kvm-digest-topics-"))
    data = args.data_dir or work / "var"
    try:
        prepare(data, work, args.bundle)
        lat = latency(data)
        print(f"One-month digest (2021-03, {lat[0]['range_messages']} messages), median of 9:")
        for r in lat[1:]:
            print(
                f"  {r['median_ms']:6.1f} ms (max {r['max_ms']:6.1f})  {r['series']:3d} series"
                f"  {r['messages']:4d} messages  {r['query']}"
            )
        grow = growth(data, work)
        print(
            f"paths: {grow['path_rows']} rows for {grow['messages_with_paths']} of "
            f"{grow['messages']} messages, {grow['distinct_paths']} distinct paths; index "
            f"{grow['index_bytes_without_paths'] / 1e6:.1f} MB -> "
            f"{grow['index_bytes_with_paths'] / 1e6:.1f} MB (+{grow['growth_percent']:.1f}%)"
        )
        ext = extraction(work, args.bundle)
        print(
            f"path extraction: {ext['seconds']:.2f} s for {ext['messages']} messages "
            f"({ext['us_per_message']:.0f} us each)"
        )
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "topics.json").write_text(
            json.dumps({"latency": lat, "growth": grow, "extraction": ext}, indent=2) + "\n"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
