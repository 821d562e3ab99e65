"""No mail goes to the relay unless its outcome can be recorded (issue 19, finding 2).

A full data disk multiplied mail: the relay said 250, recording `sent`
failed, recording `failed` failed too, the worker died, was restarted, and
sent the same rows again: 4 subscribers got 8 copies per daemon life, 24
after 3 lives. Now an attempt is marked on disk before the relay sees the
mail; when the outbox cannot be written, the worker stops sending, says so
once, keeps the outcomes it knows and writes them when writes work again,
by itself. The duplicate bound (outbox.py, README): only the mails between
a 250 and its record when the process stops are sent again, at most one
per relay connection.

The disk fills for real: the daemon's RLIMIT_FSIZE is lowered (prlimit)
from the relay's own thread just before it says 250 to a chosen message,
so every write of the index past its first bytes fails from then on, and
raised again to free the disk. The real aiosmtpd relay counts the copies
each mailbox got.
"""

from __future__ import annotations

import resource
import signal
from collections import Counter
from pathlib import Path

from bot.delivery import periodic, subscribers
from bot.parse.message import parse_lenient
from bot.store.archive import Archive
from bot.store.index import Index
from tests.mailfactory import mail
from tests.smtpsink import Sink
from tests.test_daemon import DaemonProcess
from tests.test_durability import mirror_config

READERS = [f"reader{i:02d}@example.org" for i in range(12)]
CONNECTIONS = 2
FULL = 32
"""Bytes a file may grow to: the WAL's header fits, no page does."""
FULL_LINE = "ERROR kvm-digest.health: outbox: cannot write the outbox"


def prepared(tmp_path: Path, sink: Sink) -> Path:
    """A daemon's config and data: 12 readers, and a day of mail not yet in a digest."""
    config = mirror_config(tmp_path, sink.port, daily="*/2 * * * * *")
    config.write_text(
        config.read_text().replace(
            'security = "none"', f'security = "none"\nconnections = {CONNECTIONS}'
        )
    )
    index = Index(tmp_path / "var" / "index.sqlite3")
    with index.conn:
        periodic.ensure(index.conn, "daily")
        for reader in READERS:
            subscribers.subscribe(index.conn, reader)
    index.close()
    archive = Archive.create(tmp_path / "mirror.git")
    raws = [mail(f"[PATCH] change {i}", f"m{i}@x", minutes=i) for i in range(3)]
    archive.append((raw, parse_lenient(raw)) for raw in raws)
    return config


def disk_full(pid: int, full: bool) -> None:
    limit = FULL if full else resource.RLIM_INFINITY
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))


def fill_before_250(sink: Sink, daemon: DaemonProcess, at: int) -> None:
    """The disk fills just before the relay takes message number `at`."""

    def hook() -> None:
        if len(sink.handler.received) + 1 == at:
            disk_full(daemon.proc.pid, True)

    sink.handler.before_250 = hook


def copies(sink: Sink) -> Counter[str]:
    return Counter(r.recipients[0] for r in sink.received)


def test_a_full_disk_stops_sending_and_it_resumes_by_itself(tmp_path, sink):
    config = prepared(tmp_path, sink)
    daemon = DaemonProcess(config, verbose=True)
    try:
        fill_before_250(sink, daemon, at=3)
        daemon.wait_log("kvm-digest is running")
        daemon.wait_log(FULL_LINE)
        daemon.wait_log("outbox still failing (3 times)", timeout=60)
        stalled = len(sink.received)
        assert stalled < len(READERS), "the disk filled too late to test anything"
        disk_full(daemon.proc.pid, False)
        daemon.wait_log("outbox works again")
        daemon.expect(sink.wait_until, lambda got: len({r.recipients[0] for r in got}) == 12)
        daemon.wait_log("sent digest 12 to")  # every outcome recorded
        assert daemon.stop() == 0
    finally:
        daemon.proc.kill()
    # Tried again and again while full, never sent: the outcomes were kept.
    assert stalled <= 3 + CONNECTIONS - 1
    assert copies(sink) == Counter(READERS)  # exactly once each
    assert daemon.log.count(FULL_LINE) == 1
    # The schedule's runs meanwhile could not record theirs either: said once too.
    digest_failed = daemon.log.count("ERROR kvm-digest.health: digest:")
    assert digest_failed <= 1
    assert digest_failed == daemon.log.count("digest works again")


def test_across_daemon_lives_duplicates_stay_within_the_bound(tmp_path, sink):
    config = prepared(tmp_path, sink)
    first = DaemonProcess(config)
    try:
        fill_before_250(sink, first, at=3)
        first.wait_log("kvm-digest is running")
        first.wait_log(FULL_LINE)
        assert first.stop(signal.SIGTERM) == 0  # the service is restarted, disk still full
    finally:
        first.proc.kill()
    sink.handler.before_250 = None
    assert "outcomes the outbox could not record" in first.log
    sent_in_first = len(sink.received)
    for _ in range(2):  # two more lives on the full disk send nothing at all
        life = DaemonProcess(config, max_file_size=FULL)
        try:
            # It cannot open the index (exit 1, "free some disk space"), or
            # it runs and stops sending: either way, said once, nothing sent.
            life.wait_log_or_exit(FULL_LINE)
            assert FULL_LINE in life.log or "free some disk space" in life.log, life.log
        finally:
            life.proc.send_signal(signal.SIGKILL)
            life.proc.wait()
        assert len(sink.received) == sent_in_first
        assert life.log.count(FULL_LINE) <= 1
    freed = DaemonProcess(config)
    try:
        freed.wait_log("kvm-digest is running")
        freed.expect(sink.wait_until, lambda got: len({r.recipients[0] for r in got}) == 12)
        freed.wait_log("daily digest: 0 messages")
        assert freed.stop() == 0
    finally:
        freed.proc.kill()
    got = copies(sink)
    assert set(got) == set(READERS)
    # The bound: what the relay took but the first life could not record,
    # at most one mail per connection, each once more, with the same Message-ID.
    twice = [reader for reader, n in got.items() if n > 1]
    assert max(got.values()) <= 2 and len(twice) <= CONNECTIONS, got
    for reader in twice:
        assert len({r.message["Message-ID"] for r in sink.to(reader)}) == 1
    assert "sending them again (each may arrive twice" in freed.log
