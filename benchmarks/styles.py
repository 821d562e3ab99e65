"""Full vs classic digest: what the added facts cost, from the index.

    .venv/bin/python benchmarks/styles.py                    # indexes the bundle first
    .venv/bin/python benchmarks/styles.py --data-dir var     # an indexed data dir

Both styles build and render; the full style also reads the trailers,
applied and works tables the index fills as mail arrives; the target is
full <= 2x classic and a month under 50 ms.
Prints a table and writes benchmarks/results/styles.json. Not part of the
test run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jinja2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bot.digest import build as digestmod  # noqa: E402
from bot.digest import ranges  # noqa: E402
from bot.store.index import Index  # noqa: E402

BUNDLE = ROOT.parent / "shared" / "data" / "kvmarm-2019-2021.bundle"
RESULTS = ROOT / "benchmarks" / "results"
WINDOWS: dict[str, tuple[str, str] | None] = {
    "1 day": ("2021-03-01", "2021-03-02"),
    "1 week": ("2021-03-01", "2021-03-08"),
    "1 month": ("2021-03-01", "2021-04-01"),
    "whole archive": None,
}


def indexed(work: Path) -> Path:
    """A data dir indexing the bundle in place (mirror mode)."""
    epoch = work / "0.git"
    data = work / "var"
    subprocess.run(["git", "clone", "--quiet", "--bare", str(BUNDLE), str(epoch)], check=True)
    # Any digest catches the index up with the archive first.
    cli = [sys.executable, "-m", "bot.cli", "--data-dir", str(data), "--archive", str(epoch)]
    subprocess.run(
        [*cli, "digest", "--since", "2021-03-01", "--until", "2021-03-02"],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return data


def once_ms(
    index: Index, rng: ranges.Range, style: str, env: jinja2.Environment
) -> tuple[float, int]:
    """Time to build and render one digest; and its line count."""
    started = time.perf_counter()
    d = digestmod.build(index.conn, rng, style=style, archive_url="https://lore.kernel.org/kvm")
    text = digestmod.render(d, env)
    return (time.perf_counter() - started) * 1000, text.count("\n")


def run(data: Path, runs: int) -> list[dict]:
    """Classic and full, alternating, so both see the same machine load.

    The best of `runs` is reported (as timeit does): on a shared machine the
    minimum is the closest to the work itself; the median is kept too.
    """
    index = Index(data / "index.sqlite3")
    env = digestmod.environment()
    out = []
    for label, window in WINDOWS.items():
        if window:
            rng = ranges.by_time(
                index.conn, ranges.parse_when(window[0]), ranges.parse_when(window[1])
            )
        else:
            rng = ranges.everything(index.conn)
        times: dict[str, list[float]] = {"classic": [], "full": []}
        lines = {}
        for _ in range(runs):
            for style in times:
                ms, lines[style] = once_ms(index, rng, style, env)
                times[style].append(ms)
        out.append(
            {
                "range": label,
                "messages": rng.end_seq - rng.start_seq,
                "classic_ms": min(times["classic"]),
                "full_ms": min(times["full"]),
                "ratio": min(times["full"]) / min(times["classic"]),
                "classic_median_ms": statistics.median(times["classic"]),
                "full_median_ms": statistics.median(times["full"]),
                "classic_lines": lines["classic"],
                "full_lines": lines["full"],
            }
        )
    index.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, help="an already indexed data dir")
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kvm-digest-styles-") as tmp:
        data = args.data_dir or indexed(Path(tmp))
        results = run(data, args.runs)
    print(f"\nFull vs classic digest (from the index, best of {args.runs})")
    header = ["range", "messages", "classic ms", "full ms", "full/classic", "lines +"]
    rows = [
        [
            r["range"],
            r["messages"],
            f"{r['classic_ms']:.1f}",
            f"{r['full_ms']:.1f}",
            f"{r['ratio']:.2f}",
            r["full_lines"] - r["classic_lines"],
        ]
        for r in results
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  " + "  ".join(str(x).rjust(w) for x, w in zip(row, widths, strict=True)))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "styles.json").write_text(json.dumps({"ranges": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
