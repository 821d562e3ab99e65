"""Bounces, as Mailman does them: VERP, a score with decay, disable and tell.

Behind a local MTA the relay says 250 to almost everything; a dead address
shows up later as a bounce mail. So each digest goes out with its own
envelope sender (VERP, bot/delivery/verp.py): whatever comes back to that
address names the subscriber it was for.

Anyone can send the bot a delivery report naming anyone, so only proof
scores (README, "Bounces"): a report counts for a subscriber only when it
arrives at that subscriber's own VERP address and it says that delivery to
that subscriber failed for good: an RFC 3464 DSN's `Action: failed` with a
5.x.x status for it, or, for the other formats (qmail, Exim, Exchange...),
flufl.bounce, Mailman's own detectors, finding a permanent failure for it.
Out-of-office and other automatic replies (RFC 3834), delay warnings,
`delivered`/`relayed`/`expanded` DSNs, reports naming someone else and
anything at the bot's plain address prove nothing: logged at DEBUG.

Scoring follows Mailman 3: one point per day at most; a bounce more than
`[bounces] stale_days` after the last one starts the score again at 1 (the
decay); at `[bounces] threshold` points the subscriber is disabled and told
so once, with how to come back.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import logging
import re
import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from flufl.bounce import all_failures

from bot.config import BouncesSection
from bot.delivery.mail import compose
from bot.delivery.outbox import Outbox
from bot.delivery.verp import install_key, subscriber_for, verp_token
from bot.desk import addresses

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
PERMANENT, TEMPORARY = "permanent", "temporary"
_PERMANENT_STATUS = re.compile(r"^\s*5\.\d{1,3}\.\d{1,3}\b")
_AUTO_REPLY_HEADERS = (
    "x-autoreply",
    "x-autorespond",
    "x-autoreply-from",
    "x-mail-autoreply",
    "x-vacation",
)
_AUTO_REPLY_SUBJECT = re.compile(
    r"^\s*(\[[^]]*\]\s*)?("
    r"auto(matic|matische)?[ _-]?(reply|response|responder|antwort|answer)"
    r"|autoreply|autorespon|out[ -]of[ -](the[ -])?office|ooo\b|away from|on leave"
    r"|vacation|holiday|abwesen|absence|r[ée]ponse automatique|respuesta autom"
    r"|risposta automatica|automatisch)",
    re.IGNORECASE,
)
_REPORTERS = re.compile(r"^(mailer-daemon|postmaster|mail-daemon|mdaemon)$")


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
class Recipient:
    """One per-recipient block of an RFC 3464 delivery-status part."""

    addresses: frozenset[str]
    """Its Final-Recipient and Original-Recipient, normalised."""
    action: str
    status: str

    @property
    def permanent(self) -> bool:
        """RFC 3464: `failed` is final; the 5.x.x status says it is permanent."""
        return self.action.startswith("failed") and bool(_PERMANENT_STATUS.match(self.status))


def _recipient_address(value: str) -> str | None:
    """`rfc822; user@example.net` (or a bare or angle address) normalised."""
    kind, semi, address = value.partition(";")
    if semi and kind.strip().lower() != "rfc822":
        return None
    return addresses.normal((address if semi else kind).strip())


def _fields(block: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in re.sub(r"\r?\n[ \t]+", " ", block).splitlines():
        name, colon, value = line.partition(":")
        if colon and name.strip():
            fields.setdefault(name.strip().lower(), value.strip())
    return fields


def delivery_status(raw: bytes) -> list[Recipient] | None:
    """The per-recipient blocks of the mail's RFC 3464 report; None if it has none.

    Read from the delivery-status part's own text, whatever the MIME
    library makes of it; only the start of the mail is read.
    """
    msg = email.message_from_bytes(_ascii_headers(raw[:SCAN_BYTES]), policy=email.policy.compat32)
    found: list[Recipient] | None = None
    try:
        for part in msg.walk():
            if part.get_content_type() != "message/delivery-status":
                continue
            found = found if found is not None else []
            payload = part.get_payload()
            if isinstance(payload, list):
                blocks = [_fields(p.as_string()) for p in payload]
            else:
                blocks = [_fields(b) for b in re.split(r"\r?\n\s*\r?\n", str(payload))]
            for fields in blocks:
                named = {
                    a
                    for key in ("final-recipient", "original-recipient", "x-actual-recipient")
                    if (a := _recipient_address(fields.get(key, "")))
                }
                if named:
                    found.append(
                        Recipient(
                            frozenset(named),
                            fields.get("action", "").lower(),
                            fields.get("status", ""),
                        )
                    )
    except _DETECTOR_ERRORS as err:
        log.debug("could not read a delivery-status part (%s: %s)", type(err).__name__, err)
        return None
    return found


def verdict(raw: bytes, address: str) -> str | None:
    """PERMANENT or TEMPORARY when the mail reports such a failure for `address`.

    A DSN decides by its own fields for that recipient; any other format by
    what flufl.bounce finds for it. A report that names only others, or
    says the mail was delivered, relayed or expanded, is None.
    """
    blocks = delivery_status(raw)
    if blocks is not None:
        mine = [b for b in blocks if address in b.addresses]
        if any(b.permanent for b in mine):
            return PERMANENT
        if any(b.action.startswith(("delayed", "failed")) for b in mine):
            return TEMPORARY
        return None
    temporary, permanent = failures(raw)

    def named(found: frozenset[bytes]) -> bool:
        return address in {addresses.normal(a.decode("utf-8", "replace")) for a in found}

    if named(permanent):
        return PERMANENT
    return TEMPORARY if named(temporary) else None


def _first(msg: email.message.Message, name: str) -> str:
    value = msg.get(name)
    return str(value) if value is not None else ""


def automatic_reply(raw: bytes, sender: str) -> bool:
    """True for an out-of-office or other automatic reply that is no delivery report.

    RFC 3834 replies go to the envelope sender, which for a digest is the
    VERP address; delivery reports carry some of the same marks
    (`Auto-Submitted: auto-replied`), so those are told apart first.
    """
    msg = email.message_from_bytes(_ascii_headers(raw[:SCAN_BYTES]), policy=email.policy.compat32)
    content_type = _first(msg, "content-type").lower()
    sender_local = addresses.limit_key(sender).partition("@")[0] if sender else ""
    from_local = (addresses.from_header(_first(msg, "from")) or "").partition("@")[0]
    if (
        "delivery-status" in content_type
        or "x-failed-recipients" in msg
        or _REPORTERS.match(sender_local)
        or _REPORTERS.match(from_local)
    ):
        return False
    auto = _first(msg, "auto-submitted").split(";", 1)[0].strip().lower()
    precedence = _first(msg, "precedence").strip().lower()
    return (
        auto.startswith("auto-replied")
        or precedence in ("auto_reply", "auto-reply")
        or any(name in msg for name in _AUTO_REPLY_HEADERS)
        or bool(_AUTO_REPLY_SUBJECT.match(_first(msg, "subject")))
    )


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
        """Count one bounce mail (in the caller's transaction), if it proves a failure."""
        now = time.time() if now is None else now
        tok = verp_token(rcpt)
        if tok is None:
            # Digests always go out with VERP: a report at the plain address
            # proves nothing about any subscriber it names.
            log.debug("a report to %s (not a VERP address) proves nothing; not counted", rcpt)
            return Outcome((), ())
        address = subscriber_for(self.conn, install_key(self.conn), tok)
        if address is None:
            log.debug("mail to %s matches no subscriber; not counted", rcpt)
            return Outcome((), ())
        if automatic_reply(raw, sender):
            # A holiday must not unsubscribe anyone (issue 21).
            log.debug("an automatic reply to %s for %s is not a bounce; not counted", rcpt, address)
            return Outcome((), ())
        found = verdict(raw, address)
        if found == TEMPORARY:
            log.debug("delivery to %s is delayed (a warning); not counted", address)
            return Outcome((), (), warning=True)
        if found != PERMANENT:
            log.debug("mail to %s reports no permanent failure for %s; not counted", rcpt, address)
            return Outcome((), ())
        disabled = (address,) if self._score(address, now) else ()
        return Outcome((address,), disabled)

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
