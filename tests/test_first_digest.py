"""A newcomer's first digest, quickly: follow from a day on, shallow, and `digest --last`.

The remote is a real public-inbox v2 inbox on disk (written by our own
archive code, one commit per message, each epoch its own history), three
epochs of ten days each, served by file:// and by git's smart HTTP
(`git http-backend`, as lore serves it), so the shallow clone and the
User-Agent are the real ones.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot import config as configmod
from bot import healthcheck, record
from bot.daemon import Daemon
from bot.parse.message import parse_lenient
from bot.store.archive import Archive
from bot.version import version
from tests.githttp import GitHttp
from tests.mailfactory import START, mail

DAY_MINUTES = 24 * 60


class Inbox:
    """An inbox whose epoch N holds one message a day for days 10N..10N+9."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.heads: dict[int, str] = {}
        self.ids: dict[int, str] = {}
        self.days = 0

    def add_days(self, epoch: int, count: int) -> None:
        archive = Archive.create(self.root / "git" / f"{epoch}.git")
        raws = [
            mail(f"[PATCH] day {day}", f"day{day}@example.org", minutes=day * DAY_MINUTES)
            for day in range(self.days, self.days + count)
        ]
        ids = archive.append((r, parse_lenient(r)) for r in raws)
        self.heads[epoch] = ids[-1]
        self.ids.update(zip(range(self.days, self.days + count), ids, strict=True))
        self.days += count

    def commit(self, day: int) -> str:
        """The commit id of day `day`'s message."""
        return self.ids[day]


@pytest.fixture
def inbox(tmp_path: Path) -> Inbox:
    up = Inbox(tmp_path / "lore" / "kvm")
    for epoch in range(3):
        up.add_days(epoch, 10)
    return up


def day(n: int) -> str:
    """Day n of the inbox (day 0 is START's), as YYYY-MM-DD."""
    return datetime.fromtimestamp(START.timestamp() + n * 86400, UTC).strftime("%Y-%m-%d")


def config_for(tmp_path: Path, url: str, extra: str = "") -> Path:
    path = tmp_path / "follow.toml"
    path.write_text(f'[archive]\nfollow = "{url}"\n{extra}')
    return path


def indexed(data_dir: Path) -> list[str]:
    conn = sqlite3.connect(data_dir / "index.sqlite3")
    try:
        return [s for (s,) in conn.execute("SELECT subject FROM messages ORDER BY seq")]
    finally:
        conn.close()


def test_follow_since_fetches_only_the_epochs_from_that_day_shallow(
    inbox: Inbox, cli: Callable, tmp_path: Path, data_dir: Path
) -> None:
    url = inbox.root.as_uri()
    config = config_for(tmp_path, url, f'follow_since = "{day(15)}"\n')
    first = cli("--config", config, "fetch")
    assert first.code == 0, first.err
    assert first.out.strip() == (
        f"{url}: from {day(15)} on only (shallow; 1 older epochs skipped); "
        "new epochs 1, 2; 15 new messages indexed"
    )
    mirror = data_dir / "mirror" / "git"
    assert sorted(p.name for p in mirror.iterdir()) == ["1.git", "2.git"]
    assert (mirror / "1.git" / "shallow").exists() and not (mirror / "2.git" / "shallow").exists()
    assert indexed(data_dir) == [f"[PATCH] day {n}" for n in range(15, 30)]

    # The digest of the newcomer's window works; fsck and health say what is missing.
    week = cli("--config", config, "digest", "--since", day(20), "--until", day(27))
    assert week.code == 0, week.err
    assert "[PATCH] day 20" in week.out and "[PATCH] day 26" in week.out
    assert "[PATCH] day 27" not in week.out
    fsck = cli("--config", config, "fsck")
    assert fsck.code == 0, fsck.out
    note, ok = fsck.out.splitlines()
    assert note == (
        "note: the mirror is partial (epoch 0 was not fetched and epoch 1 is shallow, as "
        "[archive] follow_since or fetch --since asked): it holds the list from "
        f"{day(15)} 09:00 UTC on, and digests of earlier ranges cannot be made"
    )
    assert ok == "ok: 15 messages; the archive and the index agree"
    health = cli("--config", config, "health").out.splitlines()
    assert f"ok       archive: {note.removeprefix('note: ')}" in health

    # Afterwards fetches bring what is new, in the epochs we have and in new ones.
    inbox.add_days(2, 2)
    inbox.add_days(3, 3)
    later = cli("--config", config, "fetch")
    assert later.out.strip() == f"{url}: new epochs 3; fetched epochs 1, 2; 5 new messages indexed"
    assert indexed(data_dir)[-1] == "[PATCH] day 34"
    # Ranges are lore's commit ids: from the start of the shallow epoch, the
    # first id is the commit lore has before it, which the shallow clone names.
    head = inbox.heads[3][:9]
    before = inbox.commit(14)[:9]
    whole = cli("--config", config, "digest", "--all")
    assert whole.out.splitlines()[0] == f"From {before} to {head}"
    again = cli("--config", config, "digest", "--range", f"{before}..{head}")
    assert again.code == 0 and again.out == whole.out
    # The same window from a mirror of the whole history: the same digest
    # (classic: the full style also looks back before the window).
    full = tmp_path / "full"
    full.mkdir()
    whole_config = config_for(full, url, f'[data]\ndir = "{full / "var"}"\n')
    assert cli("--config", whole_config, "fetch").code == 0
    for args in (["--since", day(15)], ["--since", day(18), "--until", day(33)]):
        ours = cli("--config", config, "digest", *args, "--style", "classic").out
        theirs = cli("--config", whole_config, "digest", *args, "--style", "classic").out
        assert ours == theirs and ours.startswith("From "), args
    # --since again on the mirror it shaped: said to apply to the first fetch only.
    again = cli("--config", config, "fetch", "--since", day(1))
    assert again.out.startswith("note: ") and "first fetch only" in again.out
    assert again.out.strip().endswith("0 new messages indexed")


@pytest.fixture
def web(inbox: Inbox) -> Iterator[GitHttp]:
    server = GitHttp(inbox.root).start()
    yield server
    server.stop()


def test_fetch_since_over_smart_http_says_who_it_is(
    inbox: Inbox, web: GitHttp, cli: Callable, tmp_path: Path, data_dir: Path
) -> None:
    """As against lore: the probe, the shallow clone and the full clone, each
    request with kvm-digest's User-Agent and version."""
    config = config_for(tmp_path, web.url)
    result = cli("--config", config, "fetch", "--since", day(25))
    assert result.code == 0, result.err
    assert result.out.strip() == (
        f"{web.url}: from {day(25)} on only (shallow; 2 older epochs skipped); new "
        "epochs 2; 5 new messages indexed"
    )
    assert indexed(data_dir) == [f"[PATCH] day {n}" for n in range(25, 30)]
    paths = [path for path, _ in web.requests]
    assert any(p.startswith("/kvm/0/") for p in paths)  # probed, not cloned
    assert all(agent == f"kvm-digest/{version()}" for _, agent in web.requests), web.requests
    assert not (data_dir / "mirror" / "git" / "0.git").exists()


def test_since_after_the_last_message_starts_from_the_newest_one(
    inbox: Inbox, cli: Callable, tmp_path: Path, data_dir: Path
) -> None:
    """Nothing posted since that day: the newest message, so later fetches continue."""
    config = config_for(tmp_path, inbox.root.as_uri())
    result = cli("--config", config, "fetch", "--since", day(40))
    assert result.code == 0, result.err
    assert indexed(data_dir) == ["[PATCH] day 29"]
    inbox.add_days(2, 1)
    cli("--config", config, "fetch")
    assert indexed(data_dir) == ["[PATCH] day 29", "[PATCH] day 30"]


def test_a_bad_since_day_is_refused_in_one_sentence(tmp_path: Path, cli: Callable) -> None:
    config = config_for(tmp_path, "https://lore.kernel.org/kvm", 'follow_since = "last week"\n')
    result = cli("--config", config, "check-config")
    assert result.code == 1
    assert result.err.strip() == (
        "kvm-digest: error: [archive] follow_since must be a day written YYYY-MM-DD "
        "(e.g. 2026-01-05), not 'last week'"
    )
    result = cli("--config", config_for(tmp_path, "x"), "fetch", "--since", "2026-1-5")
    assert result.code == 1 and "--since must be a day written YYYY-MM-DD" in result.err


async def test_the_daemon_follows_since_the_configured_day(
    inbox: Inbox, tmp_path: Path, data_dir: Path
) -> None:
    path = tmp_path / "daemon.toml"
    path.write_text(
        f'[archive]\nfollow = "{inbox.root.as_uri()}"\nfollow_since = "{day(22)}"\n'
        f'fetch_interval = 1\n[data]\ndir = "{data_dir}"\n'
    )
    config = configmod.load(path)
    config = record.replace(config, schedule=record.replace(config.schedule, daily="", weekly=""))
    stop = asyncio.Event()
    task = asyncio.create_task(Daemon(config).run(stop))
    try:
        deadline = time.monotonic() + 30
        while not (data_dir / "index.sqlite3").exists() or len(indexed(data_dir)) < 8:
            assert not task.done(), task.exception()
            assert time.monotonic() < deadline, "the daemon did not index the shallow fetch"
            await asyncio.sleep(0.05)
        # What `kvm-digest health` says meanwhile: the fetches work, and from when.
        # The fetch's success is recorded just after its commits are indexed.
        checks = {c.name: c for c in healthcheck.run(config)}
        while checks["intake"].status != healthcheck.OK and time.monotonic() < deadline:
            assert not task.done(), task.exception()
            await asyncio.sleep(0.05)
            checks = {c.name: c for c in healthcheck.run(config)}
        assert checks["daemon"].status == healthcheck.OK
        assert checks["intake"].status == healthcheck.OK, checks["intake"].summary
        assert checks["intake"].summary.startswith(f"following {inbox.root.as_uri()}: last ")
        assert "the mirror is partial (epochs 0-1 were not fetched" in checks["archive"].summary
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert indexed(data_dir) == [f"[PATCH] day {n}" for n in range(22, 30)]


def test_check_config_connect_lists_the_first_epochs_refs(
    inbox: Inbox, web: GitHttp, sink, tmp_path: Path, cli: Callable
) -> None:
    smtp = f'[smtp]\nhost = "127.0.0.1"\nport = {sink.port}\nsecurity = "none"\n'
    config = config_for(tmp_path, web.url, smtp)
    result = cli("--config", config, "check-config", "--connect")
    assert result.code == 0, result.out
    line = next(x for x in result.out.splitlines() if x.startswith("follow: "))
    assert line.startswith(f"follow: {web.url}/0 answers: ")
    assert line.endswith(f"master at {inbox.heads[0][:12]}")
    assert all(p.startswith("/kvm/0/") for p, _ in web.requests), web.requests
    # A URL that is not an inbox: one line saying so, and not valid.
    config = config_for(tmp_path, web.url.replace("/kvm", "/nope"), smtp)
    result = cli("--config", config, "check-config", "--connect")
    assert result.code == 1
    line = next(x for x in result.out.splitlines() if x.startswith("follow: "))
    assert line.startswith(f"follow: FAILED: cannot list the refs of {web.url[:-4]}/nope/0")
    assert "check [archive] follow" in line


def test_digest_last_24h_and_7d(store, cli: Callable, tmp_path: Path) -> None:
    """Relative windows on the command line, as `digest last N days` by mail."""
    now = (time.time() - START.timestamp()) / 60
    for hours in (200, 100, 30, 5, 1):
        store.add(mail(f"[PATCH] {hours} hours ago", f"h{hours}@x", minutes=int(now - hours * 60)))
    store.index.close()
    data = ["--data-dir", str(store.root)]
    day_ = cli(*data, "digest", "--last", "24h", "--style", "classic")
    assert day_.code == 0, day_.err
    titles = {line for line in day_.out.splitlines() if line.startswith("[PATCH]")}
    assert titles == {"[PATCH] 5 hours ago", "[PATCH] 1 hours ago"}
    week = cli(*data, "digest", "--last", "7d", "--style", "classic").out
    assert "[PATCH] 100 hours ago" in week and "[PATCH] 200 hours ago" not in week
    wrong = cli(*data, "digest", "--last", "7 days")
    assert wrong.code == 1
    assert "'7 days' is not a window; write a number and h, d or w" in wrong.err
