"""Where command mail arrives: an aiosmtpd LMTP (or SMTP) server.

A real MTA delivers the bot's addresses here (README: Postfix
transport_maps). The handler has one coroutine per protocol step, as
aiosmtpd intends: MAIL refuses with 452 while too much mail (in number or
in bytes) waits to be handled or the sender has sent too many bytes today,
RCPT accepts only the bot's own addresses (it is never a relay), the size
limit gives 552, and DATA answers 250 only once the mail is durably queued
in the index (or 451 when one mailbox already has too much waiting).

LMTP answers DATA once per accepted recipient, whatever the outcome (RFC
2033, 4.2): a client that counts replies would otherwise wait out its
timeout. The handler does so for its own answers; `Replies` does it for
those aiosmtpd gives by itself (552 for too much data, a line too long, an
error in a hook).

The server is configured, not subclassed: each aiosmtpd protocol is wrapped
by a `Guard` that counts sessions, refuses those over the caps with 421, and
ends every session at an absolute deadline that NOOPs cannot push back, so
idle connections cannot exhaust the process's file descriptors.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session

from bot.config import CommandsSection
from bot.desk.inbound import Busy, Desk

log = logging.getLogger(__name__)


class CommandIntake:
    """The aiosmtpd handler for the bot's addresses."""

    def __init__(
        self, desk: Desk, lmtp: bool = True, limits: CommandsSection | None = None
    ) -> None:
        self.desk = desk
        self.lmtp = lmtp
        self.limits = limits or CommandsSection()

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        try:
            waiting = self.desk.waiting()
        except sqlite3.Error:
            log.exception("cannot count queued command mail")
            return "451 4.3.0 cannot take mail now; try again later"
        if waiting >= self.limits.max_pending:
            return "452 4.3.1 too much mail is waiting to be handled; try again later"
        refusal = self.desk.refusal("" if address == "<>" else address, declared_size(mail_options))
        if refusal is not None:
            log.warning("refusing command mail from %s for now: %s", address, refusal)
            return "452 4.3.1 too much mail from this sender or in all; try again later"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if not self.desk.accepts(address):
            return f"550 5.1.1 <{address}>: no such user here (this server is not a relay)"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        sender = envelope.mail_from or ""
        if sender == "<>":
            sender = ""
        replies = [self.take(raw, sender, rcpt) for rcpt in envelope.rcpt_tos]
        if self.lmtp:
            # LMTP answers once per recipient (RFC 2033, 4.2), on every outcome.
            return "\r\n".join(replies)
        # SMTP has one answer: a refusal for any makes the MTA retry them all
        # (the ones stored are then dropped as copies).
        return next((r for r in replies if not r.startswith("250")), replies[0])

    def take(self, raw: bytes, sender: str, rcpt: str) -> str:
        """Queue the mail for one recipient; the reply line for it."""
        try:
            self.desk.queue(raw, sender, rcpt)
        except Busy as busy:
            # A flood from one mailbox waits at its MTA (issue 11), not in our queue.
            log.warning("refusing command mail for now: %s", busy)
            return "451 4.7.1 too many requests from this address are waiting; try again later"
        except (sqlite3.Error, OSError):
            # The mail is not stored: the MTA must keep it and retry.
            log.exception("could not queue command mail from %s", sender)
            return "451 4.3.0 cannot store the message now; try again later"
        except Exception:
            # A bug must not leave the client waiting for its other replies.
            log.exception("could not take command mail from %s", sender)
            return "451 4.3.0 cannot take the message now; try again later"
        return "250 2.0.0 queued"


def declared_size(mail_options: list[str]) -> int:
    """The SIZE= a client declared at MAIL (RFC 1870), else 0."""
    for option in mail_options:
        name, _, value = option.partition("=")
        if name.upper() == "SIZE" and value.isdigit():
            return int(value)
    return 0


class Replies:
    """The transport an LMTP session writes to: one DATA reply per recipient.

    aiosmtpd answers some DATA outcomes itself with a single line (552 for
    too much data, 500 for a line too long, 500 for an exception in a hook);
    RFC 2033 wants one reply per accepted recipient. This wrapper repeats
    such a single-line answer after a DATA, as many times as the session
    has recipients; everything else passes through untouched.
    """

    def __init__(self, transport: asyncio.WriteTransport, protocol: Any) -> None:
        self._transport = transport
        self._protocol = protocol
        self._in_data = False

    def write(self, data: bytes) -> None:
        if data.startswith(b"354"):
            self._in_data = True
        elif self._in_data:
            self._in_data = False
            envelope = getattr(self._protocol, "envelope", None)
            count = len(envelope.rcpt_tos) if envelope is not None else 1
            lines = data.count(b"\r\n")
            if count > 1 and lines == 1:
                data = data * count
        self._transport.write(data)

    def writelines(self, items: Any) -> None:
        self.write(b"".join(items))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


@dataclass
class Sessions:
    """The open sessions, by peer address."""

    limits: CommandsSection
    open: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.open.values())

    def refusal(self, peer: str) -> bytes | None:
        """The 421 line for a session over a cap, else None."""
        if self.total >= self.limits.max_connections:
            return b"421 4.3.2 too many connections; try again later\r\n"
        if self.open[peer] >= self.limits.max_connections_per_peer:
            return b"421 4.7.0 too many connections from your address; try again later\r\n"
        return None


class Guard(asyncio.Protocol):
    """Wraps one aiosmtpd protocol: admission, and an absolute session deadline."""

    def __init__(self, inner: asyncio.Protocol, sessions: Sessions) -> None:
        self.inner = inner
        self.sessions = sessions
        self.peer = ""
        self.admitted = False
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peername = transport.get_extra_info("peername")
        self.peer = str(peername[0]) if peername else "?"
        refusal = self.sessions.refusal(self.peer)
        if refusal is not None:
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(refusal)
            transport.close()
            return
        self.admitted = True
        self.sessions.open[self.peer] += 1
        self.timer = asyncio.get_running_loop().call_later(
            self.sessions.limits.session_seconds, self._expire, transport
        )
        if isinstance(self.inner, LMTP) and isinstance(transport, asyncio.WriteTransport):
            transport = Replies(transport, self.inner)  # type: ignore[assignment]
        self.inner.connection_made(transport)

    def _expire(self, transport: asyncio.BaseTransport) -> None:
        log.info("closing a command session from %s: it reached its time limit", self.peer)
        if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
            transport.write(b"421 4.4.2 session time limit reached\r\n")
        transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.admitted:
            return
        self.admitted = False
        self.sessions.open[self.peer] -= 1
        if self.sessions.open[self.peer] <= 0:
            del self.sessions.open[self.peer]
        if self.timer is not None:
            self.timer.cancel()
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.admitted:
            self.inner.data_received(data)  # type: ignore[attr-defined]

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.admitted else None  # type: ignore[attr-defined]

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


async def serve(
    desk: Desk,
    host: str,
    port: int,
    protocol: str = "lmtp",
    max_size: int = 1024 * 1024,
    limits: CommandsSection | None = None,
) -> asyncio.Server:
    """Start the command server on the running loop (configured, not subclassed)."""
    limits = limits or CommandsSection()
    handler = CommandIntake(desk, lmtp=protocol == "lmtp", limits=limits)
    server_class: Any = LMTP if protocol == "lmtp" else SMTP
    sessions = Sessions(limits)
    make: Callable[[], asyncio.Protocol] = lambda: server_class(  # noqa: E731
        handler,
        data_size_limit=max_size,
        hostname="kvm-digest",
        ident="kvm-digest",
        timeout=min(300, limits.session_seconds),
    )
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: Guard(make(), sessions), host=host, port=port)
