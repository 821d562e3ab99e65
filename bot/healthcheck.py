"""The checks of `kvm-digest health`: is the service doing its job?

Each check reads what is on disk, without the writer lock and without
changing anything: the lasting problems the daemon recorded (the `health`
table, bot/health.py), the schedules' last runs, the outbox, the failures
of the last day, the free disk space. Each gives one line and a status in
the Nagios convention: 0 ok, 1 degraded (look at it), 2 failing (it does not
do its job). The worst one is the exit status of `kvm-digest health`.

The thresholds are here, each with why: a problem that has lasted less
than FAILING_AFTER is degraded, not failing, since the daemon retries (a
relay restart, a fetch that timed out once); things that should have
happened are judged against their own interval.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bot.config import Config
from bot.health import Problem, recorded
from bot.store.inbox import partial

OK, DEGRADED, FAILING = 0, 1, 2
WORDS = ("ok", "degraded", "failing")

FAILING_AFTER = 15 * 60
"""A lasting problem is failing once it has lasted this long (degraded before)."""
OUTBOX_DEGRADED, OUTBOX_FAILING = 3600, 24 * 3600
"""Mail queued this long is late (retries back off to [smtp] backoff_max, an hour)."""
DIGEST_LATE = 30 * 60
"""A periodic digest this long past its due time is late (the run takes seconds)."""
DAY = 24 * 3600
DISK_FAILING, DISK_DEGRADED = 100 * 2**20, 2**30
"""Free bytes under which writes are about to fail / an admin should act."""
DISK_FAILING_SHARE, DISK_DEGRADED_SHARE = 0.01, 0.05


@dataclass
class Check:
    name: str
    status: int
    summary: str
    data: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        return f"{WORDS[self.status]:<8} {self.name}: {self.summary}"

    def as_json(self) -> dict[str, Any]:
        return {
            "check": self.name,
            "status": WORDS[self.status],
            "code": self.status,
            "summary": self.summary,
            **self.data,
        }


def run(config: Config, now: float | None = None) -> list[Check]:
    """Every check, in the order `kvm-digest health` prints them."""
    now = time.time() if now is None else now
    if not config.index_path.exists():
        return [
            Check(
                "data",
                FAILING,
                f"there is no kvm-digest data in {config.data_dir} (no index.sqlite3); "
                "check --data-dir, $KVM_DIGEST_DATA or [data] dir",
            )
        ]
    conn = sqlite3.connect(f"{config.index_path.absolute().as_uri()}?mode=ro", uri=True)
    try:
        problems = {p.check: p for p in _recorded(conn)}
        checks = [daemon(config)]
        checks.append(intake(config, conn, problems.pop("intake", None), now))
        checks += digests(config, conn, now)
        checks.append(outbox(conn, now))
        checks.append(failures(conn, now))
        checks.append(relay(problems.pop("relay", None), now))
        checks += [lasting(p.check, p, now) for p in problems.values()]
        checks += disk(config)
        gap = mirror(config, conn)
        if gap:
            checks.append(Check("archive", OK, gap))
    finally:
        conn.close()
    return checks


def worst(checks: list[Check]) -> int:
    return max((c.status for c in checks), default=OK)


# -- the checks ---------------------------------------------------------------


def daemon(config: Config) -> Check:
    """Is `kvm-digest run` holding the data directory's writer lock?"""
    pid, command = lock_holder(config.data_dir / "lock")
    if pid is None:
        return Check(
            "daemon",
            FAILING,
            f"not running: no `kvm-digest run` holds the writer lock of {config.data_dir}",
            {"running": False},
        )
    if command != "run":
        what = f"`kvm-digest {command}`" if command else "another kvm-digest command"
        return Check(
            "daemon",
            DEGRADED,
            f"not running: {what} (pid {pid}) holds the writer lock; no digests or "
            "command replies go out meanwhile",
            {"running": False, "pid": pid},
        )
    return Check("daemon", OK, f"running (pid {pid})", {"running": True, "pid": pid})


def intake(config: Config, conn: sqlite3.Connection, p: Problem | None, now: float) -> Check:
    """When did list mail last come in (or a fetch succeed), and is it failing now?"""
    if config.archive.follow:
        how, every = f"following {config.archive.follow}", config.archive.fetch_interval
    elif config.is_mirror:
        how, every = f"re-reading {config.archive_path}", config.archive.fetch_interval
    elif config.imap.host:
        how, every = f"IMAP {config.imap.user}@{config.imap.host}", config.imap.idle_restart
    else:
        return Check("intake", OK, "none configured (import only)")
    newest = _newest_message(conn)
    tail = f"; newest message {_ago(now - newest)}" if newest else ""
    data: dict[str, Any] = {"how": how, "newest_message": newest}
    if p is None:
        return Check("intake", DEGRADED, f"{how}: no success recorded yet{tail}", data)
    if not p.ok:
        data |= {"failing_since": p.since, "failures": p.count, "last_error": p.detail}
        status = FAILING if now - p.since >= FAILING_AFTER else DEGRADED
        return Check(
            "intake",
            status,
            f"{how}: failing for {_span(now - p.since)} ({p.count} tries; last: "
            f"{p.detail}); last success {_ago(now - p.since)}{tail}",
            data,
        )
    data["last_success"] = p.updated
    # The daemon confirms at most once a minute, and IMAP may idle for
    # idle_restart between signs of life; twice that, plus slack, is stale.
    stale = 2 * every + 600
    if now - p.updated > stale:
        return Check(
            "intake",
            DEGRADED,
            f"{how}: last success {_ago(now - p.updated)}, longer than expected (every "
            f"{_span(every)}); is the daemon stuck?{tail}",
            data,
        )
    return Check("intake", OK, f"{how}: last success {_ago(now - p.updated)}{tail}", data)


def digests(config: Config, conn: sqlite3.Connection, now: float) -> list[Check]:
    """Each schedule's last periodic digest, and whether the next one is late."""
    from bot.delivery.cron import trigger

    checks = []
    for name in ("daily", "weekly"):
        expression = getattr(config.schedule, name)
        check = f"{name} digest"
        if not expression:
            checks.append(Check(check, OK, "off"))
            continue
        row = conn.execute("SELECT last_run FROM schedules WHERE name = ?", (name,)).fetchone()
        if row is None:
            checks.append(Check(check, OK, "none yet (the schedule starts when the daemon does)"))
            continue
        last = row[0]
        due = trigger(expression, config.schedule.seconds).get_next_fire_time(
            None, datetime.fromtimestamp(last, UTC)
        )
        data = {"last_run": last, "next_due": due.timestamp() if due else None}
        said = f"last run {_stamp(last)} ({_ago(now - last)})"
        late = now - due.timestamp() if due else 0
        if late > DIGEST_LATE:
            status = FAILING if late > DAY else DEGRADED
            checks.append(
                Check(check, status, f"{said}; the run due {_stamp(due.timestamp())} is late", data)
            )
        else:
            checks.append(Check(check, OK, f"{said}; next {_stamp(due.timestamp())}", data))
    return checks


def outbox(conn: sqlite3.Connection, now: float) -> Check:
    """How much mail waits to be sent, and how long the oldest has waited."""
    depth, oldest = conn.execute(
        "SELECT COUNT(*), MIN(created) FROM outbox WHERE status = 'queued'"
    ).fetchone()
    data = {"queued": depth, "oldest_queued": oldest}
    if not depth:
        return Check("outbox", OK, "empty", data)
    age = now - oldest
    status = FAILING if age > OUTBOX_FAILING else DEGRADED if age > OUTBOX_DEGRADED else OK
    return Check("outbox", status, f"{depth} queued, the oldest for {_span(age)}", data)


def failures(conn: sqlite3.Connection, now: float) -> Check:
    """Mail that could not be stored, answered or sent in the last day."""
    since = int(now - DAY)
    stored, answered, sent = conn.execute(
        "SELECT (SELECT COUNT(*) FROM failures WHERE created >= :s),"
        " (SELECT COUNT(*) FROM inbound WHERE error IS NOT NULL AND handled >= :s),"
        " (SELECT COUNT(*) FROM outbox WHERE status = 'failed' AND next_attempt >= :s)",
        {"s": since},
    ).fetchone()
    data = {"list": stored, "commands": answered, "outgoing": sent}
    total = stored + answered + sent
    if not total:
        return Check("failures", OK, "none in the last day", data)
    return Check(
        "failures",
        DEGRADED,
        f"{total} in the last day ({stored} list mail not stored, {answered} command "
        f"mail not answered, {sent} mails given up on); `kvm-digest failed` lists them",
        data,
    )


def relay(p: Problem | None, now: float) -> Check:
    if p is None:
        return Check("relay", OK, "nothing sent yet")
    return lasting("relay", p, now)


def lasting(name: str, p: Problem, now: float) -> Check:
    """A lasting problem the daemon recorded: failing once it has lasted FAILING_AFTER."""
    data = {"ok": p.ok, "since": p.since, "updated": p.updated, "failures": p.count}
    if p.ok:
        return Check(name, OK, f"works (confirmed {_ago(now - p.updated)})", data)
    status = FAILING if now - p.since >= FAILING_AFTER else DEGRADED
    data["last_error"] = p.detail
    return Check(
        name,
        status,
        f"failing for {_span(now - p.since)} ({p.count} times; last: {p.detail})",
        data,
    )


def disk(config: Config) -> list[Check]:
    """Free space where the bot writes: the data directory, and a mirror elsewhere."""
    places = [config.data_dir]
    if config.archive.follow or not config.is_mirror:
        places.append(config.archive_path)
    checks, seen = [], set()
    for place in places:
        probe = place
        while not probe.exists() and probe.parent != probe:
            probe = probe.parent
        st = os.statvfs(probe)
        if st.f_fsid in seen:
            continue
        seen.add(st.f_fsid)
        free, total = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
        share = free / total if total else 0
        data = {"path": str(place), "free_bytes": free, "total_bytes": total}
        said = f"{_bytes(free)} free of {_bytes(total)} ({share:.0%}) for {place}"
        if st.f_flag & os.ST_RDONLY:
            checks.append(Check("disk", FAILING, f"{place} is on a read-only file system", data))
        elif free < DISK_FAILING or share < DISK_FAILING_SHARE:
            checks.append(Check("disk", FAILING, said, data))
        elif free < DISK_DEGRADED or share < DISK_DEGRADED_SHARE:
            checks.append(Check("disk", DEGRADED, said, data))
        else:
            checks.append(Check("disk", OK, said, data))
    return checks


def mirror(config: Config, conn: sqlite3.Connection) -> str | None:
    """A partial mirror (follow_since) said in words, or None (fsck says it too)."""
    gap = partial(config.archive_path) if config.is_mirror else None
    if gap is None:
        return None
    oldest = conn.execute("SELECT received FROM messages ORDER BY seq LIMIT 1").fetchone()
    day = _stamp(oldest[0]) if oldest and oldest[0] else None
    return gap.describe(day)


# -- reading the data directory -----------------------------------------------


def lock_holder(lock: Path) -> tuple[int | None, str]:
    """The pid and command holding the writer lock, or (None, "") when none does.

    The lock file names its holder, but a file left by a process that died
    names a pid that may be reused: the kernel's table of locks (/proc/locks)
    says whether the file is locked, and by whom. Without /proc, a live pid
    is taken at its word.
    """
    try:
        said = lock.read_text(errors="replace").split()
        st = lock.stat()
    except OSError:
        return None, ""
    pid = int(said[0]) if said and said[0].isdigit() else None
    command = said[1] if len(said) > 1 else ""
    try:
        table = Path("/proc/locks").read_text()
    except OSError:
        return (pid, command) if pid is not None and _alive(pid) else (None, "")
    held = _flock_holder(table, st, pid)
    return (held, command) if held is not None else (None, "")


def _flock_holder(table: str, st: os.stat_result, pid: int | None) -> int | None:
    """The pid holding a flock on the file `st` describes, from /proc/locks.

    Lines read "1: FLOCK  ADVISORY  WRITE 1234 fe:00:5309221 0 EOF". Some
    stacked file systems report another device there than stat does, so an
    inode match with the pid the file names is taken too.
    """
    device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}"
    for line in table.splitlines():
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK" or not fields[4].isdigit():
            continue
        dev, _, inode = fields[5].rpartition(":")
        holder = int(fields[4])
        if inode == str(st.st_ino) and (dev == device or holder == pid):
            return holder
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's (the service's dynamic user)
    return True


def _recorded(conn: sqlite3.Connection) -> list[Problem]:
    try:
        return recorded(conn)
    except sqlite3.OperationalError:  # an index from before the health table
        return []


def _newest_message(conn: sqlite3.Connection) -> int | None:
    row = conn.execute("SELECT received FROM messages ORDER BY seq DESC LIMIT 1").fetchone()
    return row[0] if row else None


# -- words --------------------------------------------------------------------


def _span(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 2 * DAY:
        return f"{seconds // 3600} h"
    return f"{seconds // DAY} days"


def _ago(seconds: float) -> str:
    return f"{_span(seconds)} ago"


def _stamp(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
