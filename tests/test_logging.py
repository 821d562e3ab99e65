"""Log lines as an operator sees them: quiet libraries, timestamps off journald."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import logging
from bot import logsetup
logsetup.configure(1)
logging.getLogger("bot.delivery.outbox").info("sent digest 1 to a@example.org")
logging.getLogger("mail.log").info("Peer: ('127.0.0.1', 4711)")
logging.getLogger("apscheduler.executors.default").info("Running job daily")
logging.getLogger("flufl.bounce").info("Running detector")
logging.getLogger("mail.log").warning("a real aiosmtpd problem")
"""


def run(tmp_path: Path, journal: bool) -> str:
    """Run a process whose stderr is a file; JOURNAL_STREAM names it or not."""
    out = tmp_path / f"stderr-{journal}"
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    with out.open("wb") as f:
        if journal:
            st = os.fstat(f.fileno())
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        subprocess.run([sys.executable, "-c", SCRIPT], env=env, stderr=f, check=True)
    return out.read_text()


def test_chatter_is_quiet_and_lines_are_stamped_off_journald(tmp_path):
    lines = run(tmp_path, journal=False).splitlines()
    assert len(lines) == 2, lines
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} "
    assert re.match(stamp + "INFO bot.delivery.outbox: sent", lines[0])
    assert lines[1].endswith("WARNING mail.log: a real aiosmtpd problem")


def test_no_timestamps_under_journald(tmp_path):
    lines = run(tmp_path, journal=True).splitlines()
    assert lines == [
        "INFO bot.delivery.outbox: sent digest 1 to a@example.org",
        "WARNING mail.log: a real aiosmtpd problem",
    ]


def test_journal_stream_of_another_file_still_stamps(tmp_path):
    # A shell started from the service inherits JOURNAL_STREAM but not its stderr.
    other = tmp_path / "other"
    other.write_text("")
    st = other.stat()
    env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    out = tmp_path / "err"
    with out.open("wb") as f:
        subprocess.run([sys.executable, "-c", SCRIPT], env=env, stderr=f, check=True)
    assert re.match(r"\d{4}-", out.read_text())
