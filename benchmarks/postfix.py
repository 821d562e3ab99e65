"""Fan-out through a real Postfix on loopback (issue 25, "Fan-out").

    .venv/bin/python benchmarks/postfix.py                    # 10,000 readers; 2,000 personal
    .venv/bin/python benchmarks/postfix.py --subscribers 2000   # quicker

One digest to 10,000 subscribers through a private Postfix instance (its own
main.cf, master.cf and queue directory in a temp dir, smtpd on a free port of
127.0.0.1, every mail delivered to `discard:` once queued: Postfix does all
its work up to delivery, the smtpd session, cleanup, the queue file synced to
disk, qmgr), then the same with a fifth of them getting "For you" sections
(README, "### For you"), in the same run. Reported: mails a second (goal
>= 300), the bot's CPU a mail and the relay's (the sum of every Postfix
process's CPU, read from /proc: the live ones, and what master has reaped)
apart. The sending side is benchmarks/run.py's `fanout` part, with this
relay in place of aiosmtpd. Postfix's master starts as root, as on any mail
server. Writes benchmarks/results/postfix.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from run import FANOUT_GOAL, fan_out, fanout_rows, save, table  # noqa: E402

from tests.test_postfix import POSTFIX, Postfix  # noqa: E402

DISCARD = """\
default_transport = discard:
relay_transport = discard:
smtpd_peername_lookup = no
"""
"""Everything past the queue is discarded; no DNS for loopback clients."""


class PostfixRelay:
    """A private Postfix that takes mail from 127.0.0.1 and discards it once queued."""

    def __init__(self) -> None:
        if os.geteuid() != 0:
            raise SystemExit("Postfix's master starts as root: run this benchmark as root")
        if not Path(POSTFIX).exists():
            raise SystemExit("Postfix is not installed; scripts/setup installs it")
        self.postfix = Postfix(0, readme=False, main_cf_extra=DISCARD).start()
        self.port = self.postfix.port
        pid_file = self.postfix.root / "queue" / "pid" / "master.pid"
        self.master = int(pid_file.read_text().split()[0])

    def cpu_seconds(self) -> float:
        """CPU of master and every process under it, and of those it reaped."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in [self.master, *descendants(self.master)]:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            except FileNotFoundError:
                continue  # ended meanwhile: its CPU is now in master's reaped time
            total += int(fields[11]) + int(fields[12])  # utime, stime
            if pid == self.master:
                total += int(fields[13]) + int(fields[14])  # cutime, cstime
        return total / ticks

    def stop(self) -> None:
        self.postfix.stop()


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except FileNotFoundError:
            continue
        found += [int(c) for c in children]
        todo += [int(c) for c in children]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--personal-share", type=float, default=0.2)
    args = parser.parse_args()
    os.chdir(ROOT)
    runs = []
    for share in (0.0, args.personal_share):
        runs.append(asyncio.run(fan_out(args.subscribers, share, PostfixRelay())))
    count = args.subscribers
    table(
        f"Fan-out through Postfix {postfix_version()}: one digest ({runs[0]['digest_bytes']:,}"
        f" bytes) to {count:,} subscribers",
        ["readers", "queue s", "send s", "mails/s", "our CPU ms/mail", "Postfix CPU ms/mail"],
        fanout_rows(runs, count),
    )
    r = runs[1]
    print(f"  {r['sections']:,} 'For you' sections, {r['section_bytes']:,.0f} bytes on average")
    for r in runs:
        verdict = "met" if r["msg_per_s"] >= FANOUT_GOAL else "missed"
        label = f"{r['personal']:,} personal" if r["personal"] else "none personal"
        print(f"  {label}: {r['msg_per_s']:,.0f} mails/s against >= {FANOUT_GOAL}: {verdict}")
    save("postfix", {"postfix": postfix_version(), "plain": runs[0], "with_personal": runs[1]})


def postfix_version() -> str:
    import subprocess

    out = subprocess.run(
        [shutil.which("postconf") or "/usr/sbin/postconf", "-d", "mail_version"],
        capture_output=True,
        text=True,
    ).stdout
    return out.partition("=")[2].strip()


if __name__ == "__main__":
    main()
