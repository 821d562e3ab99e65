"""The outbox: every outgoing mail is written here first, then sent.

Queueing is part of the transaction that decided to send (a digest run, a
command reply), so nothing is lost in a crash. A digest is rendered once
into `digests`; each subscriber's copy only adds its own To and Message-ID
when sent.

Each attempt is marked (durably) before the relay sees the mail and
resolved right after its answer: sent, tried again later, or failed. The
worker (bot/delivery/sender.py) sends nothing while these marks cannot be
written. The duplicate bound: a mail is sent twice only when the process
stops between the relay's 250 and the record of it (a kill, a crash, a
power cut, or a stop while the disk is full); it is then still marked as
attempted, and sent again (with the same Message-ID) at the next start. At
most one mail per relay connection is in that state at any moment, so each
such stop duplicates at most `[smtp] connections` mails, each once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass

from bot.config import SmtpSection
from bot.delivery import verp
from bot.delivery.footer import digest_footer
from bot.delivery.mail import Identity, Prepared, address, prepare_digest, with_section
from bot.delivery.subscribers import unsubscribe_secret
from bot.digest import layout
from bot.store.durable import durable

log = logging.getLogger(__name__)

PREPARED_KEPT = 8
"""Digests kept encoded for sending (one per topic and style of a run)."""


@dataclass(frozen=True)
class Queued:
    id: int
    kind: str
    recipient: str
    message_id: str
    digest_id: int | None
    message: bytes | None
    attempts: int


class Outbox:
    """The outbox table: enqueue inside a transaction, mark after sending."""

    def __init__(self, conn: sqlite3.Connection, me: Identity) -> None:
        self.conn = conn
        self.me = me
        self.wakeup = asyncio.Event()
        self._prepared: dict[int, Prepared] = {}
        """Digests encoded once, by id: each reader's copy only adds its own headers."""
        self._verp_key: bytes | None = None

    def enqueue(self, recipient: str, message: bytes, message_id: str, kind: str = "reply") -> None:
        """Queue one composed mail (in the caller's transaction)."""
        now = int(time.time())
        self.conn.execute(
            "INSERT INTO outbox (kind, recipient, message_id, message, next_attempt, created)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (kind, recipient, message_id, message, now, now),
        )
        self.wakeup.set()

    def enqueue_digest(
        self,
        digest_id: int,
        recipients: list[str],
        personal: Mapping[str, str] | None = None,
    ) -> None:
        """Queue one digest for many subscribers (in the caller's transaction).

        `personal` holds the readers' own "For you" sections, by address:
        stored with each one's row and put in its copy when it is sent.
        """
        now = int(time.time())
        personal = personal or {}
        self.conn.executemany(
            "INSERT INTO outbox (kind, recipient, message_id, digest_id, next_attempt,"
            " created, personal) VALUES ('digest', ?, ?, ?, ?, ?, ?)",
            [
                (r, self.me.new_message_id(), digest_id, now, now, personal.get(r, ""))
                for r in recipients
            ],
        )
        self.wakeup.set()

    def due(self, limit: int) -> list[Queued]:
        """Mail to send now; a digest whose reader left meanwhile is not sent.

        A reader who unsubscribed (or was disabled) while a digest waited for
        the relay (an outage, a long fan-out) gets no more of them: those
        rows are failed, with the reason, counted against nobody.
        """
        rows = self.conn.execute(
            "SELECT o.id, o.kind, o.recipient, o.message_id, o.digest_id, o.message,"
            " o.attempts, o.kind != 'digest' OR s.status = 'active'"
            " FROM outbox o LEFT JOIN subscribers s ON s.address = o.recipient"
            " WHERE o.status = 'queued' AND o.next_attempt <= ?"
            " ORDER BY o.next_attempt, o.id LIMIT ?",
            (int(time.time()), limit),
        ).fetchall()
        gone = [row[0] for row in rows if not row[-1]]
        if gone:
            # Not written (a full disk)? They are left out now, and tried again.
            with contextlib.suppress(sqlite3.OperationalError), self.conn:
                self.conn.executemany(
                    "UPDATE outbox SET status = 'failed', last_error = ? WHERE id = ?",
                    [("the reader left before it was sent", i) for i in gone],
                )
        return [Queued(*row[:-1]) for row in rows if row[-1]]

    def next_due(self) -> int | None:
        row = self.conn.execute(
            "SELECT MIN(next_attempt) FROM outbox WHERE status = 'queued'"
        ).fetchone()
        return row[0]

    def render(self, item: Queued) -> bytes:
        """The bytes to send: stored as is, or a digest addressed to its reader."""
        if item.message is not None:
            return item.message
        prepared = self._prepared.get(item.digest_id)
        if prepared is None:
            subject, body = self.conn.execute(
                "SELECT subject, body FROM digests WHERE id = ?", (item.digest_id,)
            ).fetchone()
            prepared = prepare_digest(self.me, subject, body, layout.split_point(body))
            if len(self._prepared) >= PREPARED_KEPT:
                self._prepared.pop(next(iter(self._prepared)))
            self._prepared[item.digest_id] = prepared
        return self._addressed(self._with_personal(item, prepared), item)

    def _addressed(self, prepared: Prepared, item: Queued) -> bytes:
        """The reader's copy: its own unsubscribe link and address, header and footer."""
        # Only this reader gets its secret (bot+unsubscribe-<secret>@, <web>/u/<secret>).
        secret = unsubscribe_secret(self.conn, item.recipient)
        footer = digest_footer(self.me, secret)
        return address(prepared, self.me, item.recipient, item.message_id, secret, footer)

    def _with_personal(self, item: Queued, prepared: Prepared) -> Prepared:
        """The reader's copy with its "For you" section, if it has one: only
        the section is encoded here (the rare section that cannot be spliced
        in, a line too long for 8bit, gets the whole digest encoded again)."""
        row = self.conn.execute("SELECT personal FROM outbox WHERE id = ?", (item.id,)).fetchone()
        section = row[0] if row else ""
        if not section:
            return prepared
        found = with_section(prepared, section)
        if found is not None:
            return found
        subject, body = self.conn.execute(
            "SELECT subject, body FROM digests WHERE id = ?", (item.digest_id,)
        ).fetchone()
        return prepare_digest(self.me, subject, layout.insert(body, section))

    def envelope_sender(self, item: Queued) -> str:
        """Digests go out with a VERP sender, so a bounce names its subscriber."""
        if item.kind != "digest":
            return self.me.address
        if self._verp_key is None:
            self._verp_key = verp.install_key(self.conn)
        return verp.verp_sender(self.me, self._verp_key, item.recipient)

    # -- one attempt: marked before, resolved after (each commits) ------

    def begin(self, item: Queued) -> None:
        """Mark an attempt, on disk, before the relay sees the mail.

        Durable (the WAL is synced), so that even a power cut leaves the
        mark, and with it every earlier outcome: a mail in flight is found
        again by `interrupted()`, never silently lost or sent twice more.
        """
        with durable(self.conn):
            self.conn.execute(
                "UPDATE outbox SET attempted = ? WHERE id = ?", (int(time.time()), item.id)
            )

    def interrupted(self) -> int:
        """Attempts an earlier process began and never resolved: counted, sent again.

        The relay may or may not have taken them (the duplicate bound in
        the module docstring); sending again is the only way not to lose one.
        """
        with self.conn:
            cur = self.conn.execute(
                "UPDATE outbox SET attempts = attempts + 1, attempted = NULL,"
                " last_error = 'interrupted: the daemon stopped while sending it'"
                " WHERE status = 'queued' AND attempted IS NOT NULL"
            )
        return cur.rowcount

    def sent(self, item: Queued) -> None:
        with self.conn:
            self.conn.execute(
                # A sent reader's "For you" is not needed again (it is
                # most of a personal row's size).
                "UPDATE outbox SET status = 'sent', sent_at = ?, attempts = attempts + 1,"
                " attempted = NULL, personal = '' WHERE id = ?",
                (int(time.time()), item.id),
            )
            if item.kind == "digest":
                self.conn.execute(
                    "UPDATE subscribers SET hard_failures = 0 WHERE address = ?",
                    (item.recipient,),
                )
        log.info("sent %s %d to %s", item.kind, item.id, item.recipient)

    def retry(self, item: Queued, error: str, settings: SmtpSection) -> bool:
        """Try the mail again later (with backoff); False when it gave up instead.

        Giving up after `max_attempts` fails the mail without scoring
        anyone: a temporary refusal is never the recipient's fault.
        """
        attempts = item.attempts + 1
        if attempts >= settings.max_attempts:
            self.failed(item, f"gave up after {attempts} attempts: {error}")
            log.warning(
                "gave up on mail %d to %s after %d attempts: %s",
                item.id,
                item.recipient,
                attempts,
                error,
            )
            return False
        delay = min(2**attempts, settings.backoff_max) * random.uniform(0.8, 1.2)
        with self.conn:
            self.conn.execute(
                "UPDATE outbox SET attempts = ?, next_attempt = ?, last_error = ?,"
                " attempted = NULL WHERE id = ?",
                (attempts, int(time.time() + delay), error, item.id),
            )
        log.debug("will retry mail %d to %s in %.0fs: %s", item.id, item.recipient, delay, error)
        return True

    def hold(self, item: Queued, error: str) -> None:
        """The relay could not take the mail, through no fault of the mail's:
        it stays queued, the attempt is not counted, the reason is kept."""
        with self.conn:
            self.conn.execute(
                "UPDATE outbox SET last_error = ?, attempted = NULL WHERE id = ?",
                (error, item.id),
            )

    def failed(self, item: Queued, error: str) -> None:
        """The mail will not be sent (nobody is scored for it here)."""
        with self.conn:
            self.conn.execute(
                "UPDATE outbox SET status = 'failed', attempts = attempts + 1,"
                " last_error = ?, attempted = NULL WHERE id = ?",
                (error, item.id),
            )

    def score(self, item: Queued, settings: SmtpSection) -> bool:
        """Count a refusal against a digest's subscriber; True when it is now disabled."""
        if item.kind != "digest":
            return False
        with self.conn:
            self.conn.execute(
                "UPDATE subscribers SET hard_failures = hard_failures + 1 WHERE address = ?",
                (item.recipient,),
            )
            cur = self.conn.execute(
                "UPDATE subscribers SET status = 'disabled', changed = ?"
                " WHERE address = ? AND hard_failures >= ? AND status = 'active'",
                (int(time.time()), item.recipient, settings.hard_failures),
            )
        return cur.rowcount > 0

    def requeue(self, items: list[Queued], error: str, delay: float) -> None:
        """Failed mails back in the queue, uncounted: the relay, not they, was refused."""
        with self.conn:
            self.conn.executemany(
                "UPDATE outbox SET status = 'queued', attempts = MAX(attempts - 1, 0),"
                " next_attempt = ?, last_error = ? WHERE id = ?",
                [(int(time.time() + delay), error, item.id) for item in items],
            )

    def fail_copies(self, digest_id: int, error: str) -> int:
        """Every queued copy of one digest failed (the relay refuses its content)."""
        with self.conn:
            cur = self.conn.execute(
                "UPDATE outbox SET status = 'failed', last_error = ?, attempted = NULL"
                " WHERE digest_id = ? AND status = 'queued'",
                (error, digest_id),
            )
        return cur.rowcount

    def counts(self) -> dict[str, int]:
        return dict(
            self.conn.execute("SELECT status, COUNT(*) FROM outbox GROUP BY status").fetchall()
        )
