"""Positions survive any rewrite (issue 19, finding 4).

A followed or mirrored inbox can rewrite its history: public-inbox-purge
removes a message, and every later commit is made again with a new id.
The index is rebuilt and its positions renumbered. Schedules used to keep
the old position: the next run failed with a TypeError, and once the
archive grew again, as many messages were in no digest as were purged.
Now a schedule's place is its commit, its message and its arrival, found
again at every run. Each test rewrites a real git epoch the way purge
does and checks, from the digests a real relay received, that every
message is in exactly one digest.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from bot.config import from_table
from bot.delivery import periodic, subscribers
from bot.delivery.mail import Identity
from bot.delivery.outbox import Outbox
from bot.delivery.sender import Sender
from bot.digest.build import environment
from bot.parse.message import parse_lenient
from bot.store.archive import Archive
from bot.store.inbox import open_mirror
from bot.store.index import Index
from tests.mailfactory import mail
from tests.smtpsink import Sink
from tests.test_daemon import BOT, DaemonProcess
from tests.test_durability import mirror_config

TITLE = re.compile(r"(?m)^New:  (.*?)\r?$")


def post(i: int) -> bytes:
    return mail(f"[PATCH] change {i}", f"m{i}@x", minutes=i)


def git(epoch: Path, *args: str, env: dict[str, str] | None = None) -> str:
    return subprocess.run(
        ["git", "-C", str(epoch), *args],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **(env or {})},
    ).stdout.strip()


def purge(epoch: Path, *message_ids: str) -> None:
    """What public-inbox-purge does: drop the messages' commits, make every later one again."""
    revs = git(epoch, "rev-list", "--reverse", "master").split()
    parent: str | None = None
    rewriting = False
    for rev in revs:
        raw = git(epoch, "show", f"{rev}:m")
        if any(f"Message-ID: <{mid}>" in raw for mid in message_ids):
            rewriting = True
            continue
        if not rewriting:
            parent = rev
            continue
        fields = git(epoch, "log", "-1", "--format=%an%x00%ae%x00%ad%x00%cn%x00%ce", rev)
        an, ae, ad, cn, ce = fields.split("\0")
        env = {
            "GIT_AUTHOR_NAME": an,
            "GIT_AUTHOR_EMAIL": ae,
            "GIT_AUTHOR_DATE": ad,
            "GIT_COMMITTER_NAME": cn,
            "GIT_COMMITTER_EMAIL": ce,
            # A purge happens later than the original commit: another id, surely.
            "GIT_COMMITTER_DATE": "2030-01-01T00:00:00Z",
        }
        message = git(epoch, "log", "-1", "--format=%B", rev)
        args = ["commit-tree", f"{rev}^{{tree}}", "-m", message]
        parent = git(epoch, *args, *(["-p", parent] if parent else []), env=env)
    git(epoch, "update-ref", "refs/heads/master", parent or "")


def titles(sink: Sink, reader: str) -> list[str]:
    """Every entry title of every digest `reader` got, in order."""
    out: list[str] = []
    for r in sink.to(reader):
        out += TITLE.findall(r.message.get_payload(decode=True).decode())
    return out


class Mirror:
    """A mirrored epoch that we grow and rewrite, its index, and a real relay."""

    def __init__(self, root: Path, sink: Sink) -> None:
        self.epoch = root / "epoch.git"
        self.archive = Archive.create(self.epoch)
        self.index = Index(root / "index.sqlite3")
        self.conn = self.index.conn
        self.config = from_table(
            {
                "commands": {"address": BOT},
                "smtp": {"host": "127.0.0.1", "port": sink.port, "security": "none"},
            }
        )
        self.outbox = Outbox(self.conn, Identity(BOT))
        self.sender = Sender(self.outbox, self.config.smtp)
        with self.conn:
            periodic.ensure(self.conn, "daily")  # at the start: the archive is empty
            subscribers.subscribe(self.conn, "reader@example.org")

    def grow(self, *numbers: int) -> None:
        self.archive.append((raw, parse_lenient(raw)) for raw in map(post, numbers))
        self.index.catch_up(open_mirror(self.epoch), max_size=None)

    def purge(self, *numbers: int) -> None:
        purge(self.epoch, *(f"m{i}@x" for i in numbers))
        self.index.catch_up(open_mirror(self.epoch), max_size=None)

    async def digest(self) -> periodic.Run:
        result = periodic.run(self.conn, self.config, self.outbox, environment(), "daily")
        await self.sender.flush()
        return result


@pytest.fixture
def mirror(tmp_path: Path, sink: Sink) -> Mirror:
    return Mirror(tmp_path, sink)


def changes(*numbers: int) -> list[str]:
    return [f"change {i}" for i in numbers]


async def test_a_purge_before_the_place_renumbers_without_a_gap(mirror, sink):
    mirror.grow(*range(10))
    await mirror.digest()
    mirror.grow(*range(10, 15))
    await mirror.digest()
    mirror.purge(3)  # every commit after it is made again: the place's commit is gone
    assert mirror.index.count() == 14
    assert (await mirror.digest()).messages == 0  # nothing new: no crash, nothing sent
    mirror.grow(15, 16, 17)
    assert (await mirror.digest()).messages == 3
    assert titles(sink, "reader@example.org") == changes(*range(18))


async def test_a_purge_of_the_place_itself_resumes_at_the_next_arrival(mirror, sink):
    mirror.grow(*range(10))
    await mirror.digest()  # ends at change 9
    mirror.grow(10, 11)
    mirror.purge(9, 4)  # the place's message is gone, and another one before it
    mirror.grow(12)
    await mirror.digest()
    assert titles(sink, "reader@example.org") == changes(*range(13))


async def test_a_reindex_keeps_every_place(mirror, sink):
    mirror.grow(*range(5))
    await mirror.digest()
    mirror.index.clear()  # what `kvm-digest reindex` does before reading git again
    mirror.index.catch_up(open_mirror(mirror.epoch), max_size=None)
    mirror.grow(5, 6)
    await mirror.digest()
    assert titles(sink, "reader@example.org") == changes(*range(7))


async def test_a_place_stored_by_an_older_version_never_crashes(mirror, sink):
    mirror.grow(*range(5))
    with mirror.conn:  # a commit no longer there, a position past the end, nothing else
        mirror.conn.execute(
            "UPDATE schedules SET end_id = ?, end_seq = 99, end_message_id = '',"
            " end_hash = '', end_received = NULL",
            ("f" * 40,),
        )
    assert (await mirror.digest()).messages == 0
    mirror.grow(5)
    await mirror.digest()
    assert titles(sink, "reader@example.org") == changes(5)


def test_the_daemon_follows_a_rewritten_mirror_without_losing_a_message(tmp_path, sink):
    epoch = tmp_path / "mirror.git"
    config = mirror_config(tmp_path, sink.port, daily="*/2 * * * * *")
    archive = Archive.create(epoch)
    index = Index(tmp_path / "var" / "index.sqlite3")
    with index.conn:
        subscribers.subscribe(index.conn, "reader@example.org")
    index.close()
    daemon = DaemonProcess(config)
    try:
        daemon.wait_log("kvm-digest is running")
        daemon.wait_log("the daily digest starts after")  # mail from now on is in it
        archive.append((raw, parse_lenient(raw)) for raw in map(post, range(10)))
        daemon.expect(sink.wait_until, lambda _: len(titles(sink, "reader@example.org")) >= 10)
        purge(epoch, "m3@x")
        daemon.wait_log("rebuilding the index")
        archive = Archive.create(epoch)
        archive.append((raw, parse_lenient(raw)) for raw in map(post, range(10, 13)))
        daemon.expect(sink.wait_until, lambda _: len(titles(sink, "reader@example.org")) >= 13)
        assert daemon.stop() == 0
    finally:
        daemon.proc.kill()
    assert titles(sink, "reader@example.org") == changes(*range(13))
    assert "Traceback" not in daemon.log
