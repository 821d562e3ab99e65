"""The event loop stays responsive while a periodic run renders (issue 19, finding 10).

A periodic run renders one digest per topic its subscribers chose: 2,000
distinct topics kept LMTP silent for 16 s, as the run held the event loop.
Now the rendering happens in a worker process, on a read connection of its
own, and only the short write of what it made runs on the loop. The test
runs the daemon, starts such a run, and opens LMTP sessions while it
renders: the events (the run's first and last log lines, each greeting)
say which sessions fell inside the run, and each was greeted well within
a generous bound.
"""

from __future__ import annotations

import smtplib
import time

from bot.delivery import periodic, subscribers
from bot.parse.message import parse_lenient
from bot.store.archive import Archive
from bot.store.index import Index
from tests.mailfactory import mail
from tests.test_daemon import DaemonProcess
from tests.test_durability import lmtp_port, mirror_config

TOPICS = 2000
MESSAGES = 300
GREETING_BOUND = 2.0
"""Seconds; generous on a loaded machine, and far below the 16 s of a blocked loop."""


def test_lmtp_answers_while_two_thousand_topics_render(tmp_path, sink):
    config = mirror_config(tmp_path, sink.port, daily="*/3 * * * * *")
    index = Index(tmp_path / "var" / "index.sqlite3")
    with index.conn:
        periodic.ensure(index.conn, "daily")  # the archive is empty: the run covers it all
        for i in range(TOPICS):
            subscribers.subscribe(index.conn, f"r{i}@example.org", topic=f"s:nothing{i}")
    index.close()
    epoch = Archive.create(tmp_path / "mirror.git")
    raws = [mail(f"[PATCH] change {i}", f"m{i}@x", minutes=i) for i in range(MESSAGES)]
    epoch.append((raw, parse_lenient(raw)) for raw in raws)
    daemon = DaemonProcess(config, verbose=True)
    inside: list[float] = []
    try:
        daemon.wait_log("kvm-digest is running")
        daemon.wait_log(f"rendering {TOPICS} digests", timeout=60)
        port = lmtp_port(config)
        # Each session asked for before the run's last line is inside it.
        while "daily digest: 300 messages" not in daemon.log:
            asked = time.monotonic()
            with smtplib.LMTP("127.0.0.1", port, timeout=60) as client:
                inside.append(time.monotonic() - asked)
                client.noop()
            assert daemon.proc.poll() is None, daemon.log
        assert daemon.stop() == 0
    finally:
        daemon.proc.kill()
    assert len(inside) >= 3, f"only {len(inside)} sessions fell inside the run"
    assert max(inside) < GREETING_BOUND, f"greetings took up to {max(inside):.1f} s"
