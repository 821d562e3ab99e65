"""Logging: what an operator reads in journalctl or on a terminal.

Our own modules log one INFO line per delivered mail and per digest run;
the libraries' per-connection chatter (aiosmtpd's every SMTP verb,
APScheduler's every job start, flufl.bounce's every detector) stays at
WARNING but at the most verbose level (`run -vv`). Under journald (it sets
JOURNAL_STREAM to the device and inode of our stderr) lines carry no
timestamp, because the journal adds its own; anywhere else they do.

No secret reaches a log at any verbosity: aioimaplib prints every protocol
line it sends at DEBUG, `LOGIN user "password"` included (its scrubbing
misses a password with a quote or backslash, which it escapes), so its
logger never goes below INFO and drops any line about logging in; and every
line is formatted with URL credentials shown as `***` (bot/redact.py).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import TextIO

from bot import redact

CHATTY = ("mail.log", "mail.debug", "apscheduler", "flufl.bounce")
"""Libraries that log at INFO for every connection, job or detector."""
PROTOCOL = ("aioimaplib",)
"""Libraries that log protocol lines, credentials included, at DEBUG: never below INFO."""
_LOGIN = re.compile(r"\b(LOGIN|AUTHENTICATE)\b", re.IGNORECASE)


class Redacting(logging.Formatter):
    """Formats as usual, then shows URL credentials as *** (tracebacks included)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact.text(super().format(record))


def no_login(record: logging.LogRecord) -> bool:
    """A logging filter: False for a protocol line about logging in."""
    return not _LOGIN.search(record.getMessage())


def under_journald(stream: TextIO | None = None) -> bool:
    """True when `stream` (stderr) is connected to the journal.

    systemd sets JOURNAL_STREAM=<dev>:<inode> for a service whose output
    goes to the journal; comparing it with the stream itself keeps a shell
    started from such a service (same environment, other stderr) stamping.
    """
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, _, inode = value.partition(":")
    if not (dev.isdigit() and inode.isdigit()):
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(inode))


def configure(verbosity: int, stream: TextIO | None = None) -> None:
    """Log to stderr at WARNING, minus ten per -v; the chatty libraries stay quiet."""
    stream = stream or sys.stderr
    level = max(logging.WARNING - 10 * verbosity, logging.DEBUG)
    stamp = "" if under_journald(stream) else "%(asctime)s "
    handler = logging.StreamHandler(stream)
    handler.setFormatter(Redacting(stamp + "%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.DEBUG if verbosity >= 3 else logging.WARNING)
    for name in PROTOCOL:
        logger = logging.getLogger(name)
        logger.setLevel(max(level, logging.INFO))
        if no_login not in logger.filters:
            logger.addFilter(no_login)
    # flufl.bounce logs a traceback for each detector that fails on odd
    # mail, then raises; bot/delivery/bounces.py logs that in one line.
    if verbosity < 3:
        logging.getLogger("flufl.bounce").setLevel(logging.CRITICAL)
