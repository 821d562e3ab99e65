"""The outbox: every outgoing mail is written here first, then sent.

Queueing is part of the transaction that decided to send (a digest run, a
command reply), so nothing is lost in a crash; a row is marked sent right
after the relay's 250, so a restart sends nothing twice (but for the instant
between the 250 and the commit, where SMTP itself offers no better). A digest
is rendered once into `digests`; each subscriber's copy only adds its own
To and Message-ID when sent.

The worker sends over a few persistent connections to the relay
(aiosmtplib). 4xx answers and connection errors retry with capped exponential
backoff; a 5xx fails that recipient only, and after `[smtp] hard_failures`
of them a subscriber is disabled.
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

import aiosmtplib

from bot.config import SmtpSection
from bot.delivery import verp
from bot.delivery.mail import (
    Identity,
    Prepared,
    address,
    prepare_digest,
    wire_address,
    with_section,
)
from bot.delivery.subscribers import unsubscribe_secret
from bot.digest import layout
from bot.errors import MailError

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
        rows = self.conn.execute(
            "SELECT id, kind, recipient, message_id, digest_id, message, attempts"
            " FROM outbox WHERE status = 'queued' AND next_attempt <= ?"
            " ORDER BY next_attempt, id LIMIT ?",
            (int(time.time()), limit),
        ).fetchall()
        return [Queued(*row) for row in rows]

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
        prepared = self._with_personal(item, prepared)
        # Only this reader gets its secret unsubscribe address (bot+unsubscribe-<secret>@).
        secret = unsubscribe_secret(self.conn, item.recipient)
        unsubscribe = self.me.plus(f"unsubscribe-{secret}") if secret else None
        return address(prepared, self.me, item.recipient, item.message_id, unsubscribe)

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

    def sent(self, item: Queued) -> None:
        with self.conn:
            self.conn.execute(
                # A sent reader's "For you" is not needed again (it is
                # most of a personal row's size).
                "UPDATE outbox SET status = 'sent', sent_at = ?, attempts = attempts + 1,"
                " personal = '' WHERE id = ?",
                (int(time.time()), item.id),
            )
            if item.kind == "digest":
                self.conn.execute(
                    "UPDATE subscribers SET hard_failures = 0 WHERE address = ?",
                    (item.recipient,),
                )
        log.info("sent %s %d to %s", item.kind, item.id, item.recipient)

    def retry(self, item: Queued, error: str, settings: SmtpSection) -> None:
        attempts = item.attempts + 1
        if attempts >= settings.max_attempts:
            self.failed(item, f"gave up after {attempts} attempts: {error}", settings)
            return
        delay = min(2**attempts, settings.backoff_max) * random.uniform(0.8, 1.2)
        with self.conn:
            self.conn.execute(
                "UPDATE outbox SET attempts = ?, next_attempt = ?, last_error = ? WHERE id = ?",
                (attempts, int(time.time() + delay), error, item.id),
            )
        log.warning(
            "will retry mail %d to %s in %.0fs: %s",
            item.id,
            item.recipient,
            delay,
            error,
        )

    def failed(self, item: Queued, error: str, settings: SmtpSection) -> None:
        with self.conn:
            self.conn.execute(
                "UPDATE outbox SET status = 'failed', attempts = attempts + 1,"
                " last_error = ? WHERE id = ?",
                (error, item.id),
            )
            if item.kind == "digest":
                self.conn.execute(
                    "UPDATE subscribers SET hard_failures = hard_failures + 1 WHERE address = ?",
                    (item.recipient,),
                )
                self.conn.execute(
                    "UPDATE subscribers SET status = 'disabled', changed = ?"
                    " WHERE address = ? AND hard_failures >= ? AND status = 'active'",
                    (int(time.time()), item.recipient, settings.hard_failures),
                )
        log.error("mail %d to %s failed: %s", item.id, item.recipient, error)

    def counts(self) -> dict[str, int]:
        return dict(
            self.conn.execute("SELECT status, COUNT(*) FROM outbox GROUP BY status").fetchall()
        )


class Relay:
    """Connections to the relay, opened on demand and reused."""

    def __init__(self, settings: SmtpSection) -> None:
        self.s = settings
        self.idle: list[aiosmtplib.SMTP] = []

    async def _connect(self) -> aiosmtplib.SMTP:
        s = self.s
        password = s.secret()
        client = aiosmtplib.SMTP(
            hostname=s.host,
            port=s.port,
            timeout=s.timeout,
            use_tls=s.security == "tls",
            # None: STARTTLS when offered; True: required (always with AUTH).
            start_tls=False if s.security != "starttls" else (True if s.user else None),
            validate_certs=s.verify,
            cert_bundle=s.cafile or None,
        )
        await client.connect()
        if s.user:
            if client.get_transport_info("sslcontext") is None:
                # A password must never cross the network in clear text,
                # whatever the config says (check-config refuses it too).
                client.close()
                raise aiosmtplib.SMTPException(
                    f"{s.host}:{s.port} offers no TLS; not sending the password in clear text"
                )
            await client.login(s.user, password)
        return client

    async def send(self, sender: str, recipient: str, message: bytes) -> None:
        """Send one message; raise aiosmtplib errors or OSError on failure.

        MailError means this recipient can never be reached through this
        relay (an address that needs SMTPUTF8, which the relay lacks).
        """
        address, utf8 = wire_address(recipient)
        client = self.idle.pop() if self.idle else await self._connect()
        try:
            options = []
            if utf8:
                if client.is_ehlo_or_helo_needed:
                    await client.ehlo()
                if not client.supports_extension("smtputf8"):
                    self.idle.append(client)
                    raise MailError(
                        f"the relay {self.s.host} does not offer SMTPUTF8, which the "
                        f"address {recipient} needs"
                    )
                options = ["SMTPUTF8"]
            await client.sendmail(sender, [address], message, mail_options=options)
        except MailError:
            raise
        except BaseException:
            with contextlib.suppress(Exception):
                client.close()
            raise
        self.idle.append(client)

    async def close(self) -> None:
        while self.idle:
            client = self.idle.pop()
            with contextlib.suppress(Exception):
                await client.quit()


class Sender:
    """The outbox worker: sends due mail until told to stop."""

    def __init__(self, outbox: Outbox, settings: SmtpSection) -> None:
        self.outbox = outbox
        self.s = settings
        self.relay = Relay(settings)
        self.sent = asyncio.Event()
        """Set after each mail is marked sent (for tests and metrics)."""

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                batch = self.outbox.due(self.s.connections * 25)
                if not batch:
                    # Idle connections go stale (relays time them out): close them.
                    await self.relay.close()
                    await self._sleep(stop)
                    continue
                queue: asyncio.Queue[Queued] = asyncio.Queue()
                for item in batch:
                    queue.put_nowait(item)
                workers = min(self.s.connections, len(batch))
                await asyncio.gather(*(self._work(queue, stop) for _ in range(workers)))
        finally:
            await self.relay.close()

    async def flush(self, limit: int = 100_000) -> int:
        """Try every mail that is due now, once; return how many were tried."""
        items = self.outbox.due(limit)
        for item in items:
            await self._send(item)
        await self.relay.close()
        return len(items)

    async def _sleep(self, stop: asyncio.Event) -> None:
        """Wait for new mail, the next retry, or stop."""
        self.outbox.wakeup.clear()
        next_due = self.outbox.next_due()
        # Other processes (`kvm-digest send-now`) queue mail too, and cannot
        # set our event: look at the table again every poll_interval seconds.
        timeout = float(self.s.poll_interval)
        if next_due:
            timeout = min(timeout, max(0.0, next_due - time.time()) + 0.01)
        waiters = {
            asyncio.ensure_future(self.outbox.wakeup.wait()),
            asyncio.ensure_future(stop.wait()),
        }
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    async def _work(self, queue: asyncio.Queue[Queued], stop: asyncio.Event) -> None:
        # A stop lets the message being sent finish, then leaves the rest queued.
        while not stop.is_set() and not queue.empty():
            await self._send(queue.get_nowait())

    async def _send(self, item: Queued) -> None:
        try:
            await self._try(item)
        except Exception as err:
            # One mail must never stop the worker: whatever went wrong with
            # it (a bug included) fails that mail alone, with the reason kept.
            log.exception("sending mail %d to %s failed unexpectedly", item.id, item.recipient)
            self.outbox.failed(item, f"internal error: {type(err).__name__}: {err}", self.s)

    async def _try(self, item: Queued) -> None:
        try:
            message = self.outbox.render(item)
            await self.relay.send(self.outbox.envelope_sender(item), item.recipient, message)
        except MailError as err:
            self.outbox.failed(item, str(err), self.s)
            return
        except aiosmtplib.SMTPRecipientsRefused as err:
            # One recipient per message, so the one refusal is ours.
            refusal = err.recipients[0]
            self._refused(item, refusal.code, f"{refusal.code} {refusal.message}")
            return
        except aiosmtplib.SMTPResponseException as err:
            self._refused(item, err.code, f"{err.code} {err.message}")
            return
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as err:
            self.outbox.retry(item, f"{type(err).__name__}: {err}", self.s)
            return
        self.outbox.sent(item)
        self.sent.set()

    def _refused(self, item: Queued, code: int, error: str) -> None:
        """5xx fails this recipient for good; anything else is tried again."""
        if 500 <= code < 600:
            self.outbox.failed(item, error, self.s)
        else:
            self.outbox.retry(item, error, self.s)
