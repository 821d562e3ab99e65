"""Bounces, as Mailman does them: VERP, a score with decay, disable and tell.

Behind a local MTA the relay says 250 to almost everything; a dead address
shows up later as a bounce mail. So each digest goes out with its own
envelope sender (VERP, bot/delivery/verp.py): whatever comes back to that
address names the subscriber it was for, whatever its format.

A bounce that is not VERP (a DSN to the bot's own address) is read with
flufl.bounce, Mailman's own detectors: RFC 3464 DSNs and the common
non-standard formats (qmail, Exim, Postfix, Exchange...).

Scoring follows Mailman 3: one point per day at most; a bounce more than
`[bounces] stale_days` after the last one starts the score again at 1 (the
decay); at `[bounces] threshold` points the subscriber is disabled and told
so once, with how to come back. Warnings (delayed delivery) do not count.
"""

from __future__ import annotations

import email
import email.policy
import logging
import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from flufl.bounce import all_failures

from bot.config import BouncesSection
from bot.delivery.mail import compose
from bot.delivery.outbox import Outbox
from bot.delivery.verp import install_key, subscriber_for, verp_token

log = logging.getLogger(__name__)


def looks_like_bounce(raw: bytes, sender: str) -> bool:
    """True for delivery reports: a null or MAILER-DAEMON sender, or multipart/report.

    These must reach bounce processing before the robot filter drops them.
    """
    local = sender.lower().partition("@")[0]
    if not sender or local in ("mailer-daemon", "postmaster"):
        return True
    head = raw[:8192].lower()
    return b"multipart/report" in head and b"delivery-status" in raw[:65536].lower()


SCAN_BYTES = 64 * 1024
"""How much of a bounce mail the detectors read."""
_DETECTOR_ERRORS = (AttributeError, IndexError, LookupError, TypeError, ValueError)
"""What flufl.bounce's detectors raise on mail they cannot read (8-bit
headers come back as Header objects, a From without an address...)."""


def _ascii_headers(raw: bytes) -> bytes:
    """The mail with every 8-bit byte in its header block made '?'."""
    end = raw.find(b"\r\n\r\n")
    end = raw.find(b"\n\n") if end < 0 else end
    end = len(raw) if end < 0 else end
    head = bytes(b if b < 0x80 else 0x3F for b in raw[:end])
    return head + raw[end:]


def failures(raw: bytes) -> tuple[frozenset[bytes], frozenset[bytes]]:
    """(temporary, permanent) failed recipients, by flufl.bounce; never raises.

    Its detectors were written for well-formed bounces and fail on hostile
    mail; a second try with 8-bit header bytes masked reads real bounces
    from servers that put raw UTF-8 in headers. Mail still unreadable
    counts as no failure at all, with one line in the log.
    """
    # The report comes first (the DSN part, qmail's and Exim's text); what
    # follows is the returned digest. The detectors' regexes take seconds
    # on a megabyte, on the daemon's event loop, so read only the start.
    raw = raw[:SCAN_BYTES]
    for attempt in (raw, _ascii_headers(raw)):
        msg = email.message_from_bytes(attempt, policy=email.policy.compat32)
        try:
            temporary, permanent = all_failures(msg)
        except _DETECTOR_ERRORS as err:
            reason = f"{type(err).__name__}: {err}"
            continue
        return frozenset(temporary), frozenset(permanent)
    log.warning("could not read a bounce mail (%s); not counted", reason)
    return frozenset(), frozenset()


@dataclass(frozen=True)
class Outcome:
    """What one bounce mail did, for logs and tests."""

    addresses: tuple[str, ...]
    """Subscribers it counted against."""
    disabled: tuple[str, ...]
    """Of those, the ones it disabled (and told)."""
    warning: bool = False
    """Only temporary failures: nothing counted."""


class Bounces:
    """Reads bounce mail and keeps the score; one instance per index connection."""

    def __init__(self, conn: sqlite3.Connection, settings: BouncesSection, outbox: Outbox) -> None:
        self.conn = conn
        self.s = settings
        self.outbox = outbox
        self.me = outbox.me

    def handle(self, raw: bytes, rcpt: str, sender: str = "", now: float | None = None) -> Outcome:
        """Count one bounce mail (in the caller's transaction)."""
        now = time.time() if now is None else now
        temporary, permanent = failures(raw)
        tok = verp_token(rcpt)
        if tok is not None:
            address = subscriber_for(self.conn, install_key(self.conn), tok)
            if address is None:
                log.info("bounce to %s matches no subscriber; ignored", rcpt)
                return Outcome((), ())
            if not permanent and not looks_like_bounce(raw, sender):
                # Mailman counts anything sent to a VERP address; an
                # out-of-office reply goes there too (RFC 3834 answers the
                # envelope sender), and a holiday must not unsubscribe anyone.
                log.info("mail to %s from %s is not a delivery report; ignored", rcpt, sender)
                return Outcome((), ())
            if temporary and not permanent:
                log.info("delivery to %s is delayed (a warning); not counted", address)
                return Outcome((), (), warning=True)
            found = [address]
        else:
            found = sorted(
                {a.decode("utf-8", "replace").lower() for a in permanent} & set(self._subscribed())
            )
            if not found:
                log.info("bounce mail names no subscriber; ignored")
                return Outcome((), (), warning=bool(temporary))
        disabled = [a for a in found if self._score(a, now)]
        return Outcome(tuple(found), tuple(disabled))

    def _subscribed(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT address FROM subscribers")]

    def _score(self, address: str, now: float) -> bool:
        """Add today's point for `address`; True when this disabled it."""
        today = datetime.fromtimestamp(now, UTC).date().isoformat()
        sub = self.conn.execute(
            "SELECT status, changed FROM subscribers WHERE address = ?", (address,)
        ).fetchone()
        row = self.conn.execute(
            "SELECT score, last_bounce, last_day FROM bounces WHERE address = ?", (address,)
        ).fetchone()
        if row is None or now - row[1] > self.s.stale_days * 86400 or sub[1] > row[1]:
            # First bounce, a stale score, or the subscriber re-subscribed since.
            score = 1
        elif row[2] == today:
            score = row[0]  # one point per day at most, as in Mailman
        else:
            score = row[0] + 1
        self.conn.execute(
            "INSERT INTO bounces (address, score, last_bounce, last_day) VALUES (?, ?, ?, ?)"
            " ON CONFLICT(address) DO UPDATE SET score = excluded.score,"
            " last_bounce = excluded.last_bounce, last_day = excluded.last_day",
            (address, score, int(now), today),
        )
        log.info("bounce from %s: score %d of %d", address, score, self.s.threshold)
        if score < self.s.threshold or sub[0] != "active":
            return False
        self.conn.execute(
            "UPDATE subscribers SET status = 'disabled', changed = ? WHERE address = ?",
            (int(now), address),
        )
        self.conn.execute(
            "UPDATE bounces SET disabled_at = ? WHERE address = ?", (int(now), address)
        )
        self._tell(address, score)
        log.warning("disabled %s after %d days of bounces", address, score)
        return True

    def _tell(self, address: str, score: int) -> None:
        """The one notice: why the digest stopped and how to get it back."""
        body = (
            f"Mail to {address} has bounced on {score} days, so the\n"
            f"{self.me.list_title} digest is no longer sent to it.\n"
            "\n"
            "If the address works again and you want the digest back, send a\n"
            f"mail with the subject 'subscribe' to {self.me.address}\n"
            "and answer the confirmation it sends.\n"
            "\n"
            "You will get no other mail about this.\n"
        )
        message_id = self.me.new_message_id()
        message = compose(
            self.me,
            address,
            f"Your {self.me.list_title} digest subscription is disabled",
            body,
            message_id,
        )
        self.outbox.enqueue(address, message, message_id, kind="notice")
