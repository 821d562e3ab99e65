"""Where command mail arrives: an aiosmtpd LMTP (or SMTP) server.

A real MTA delivers the bot's addresses here (README: Postfix
transport_maps). The handler has one coroutine per protocol step, as
aiosmtpd intends: RCPT accepts only the bot's own addresses (it is never a
relay), the size limit gives 552, and DATA answers 250 only once the mail is
durably queued in the index.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from typing import Any

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session

from bot.desk.inbound import Busy, Desk

log = logging.getLogger(__name__)


class CommandIntake:
    """The aiosmtpd handler for the bot's addresses."""

    def __init__(self, desk: Desk, lmtp: bool = True) -> None:
        self.desk = desk
        self.lmtp = lmtp

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
        try:
            for rcpt in envelope.rcpt_tos:
                self.desk.queue(raw, sender, rcpt)
        except Busy as busy:
            # A flood from one mailbox waits at its MTA (issue 11), not in our queue.
            log.warning("refusing command mail for now: %s", busy)
            return "451 4.7.1 too many requests from this address are waiting; try again later"
        except (sqlite3.Error, OSError):
            # The mail is not stored: the MTA must keep it and retry.
            log.exception("could not queue command mail from %s", sender)
            return "451 4.3.0 cannot store the message now; try again later"
        ok = "250 2.0.0 queued"
        # LMTP answers once per recipient (RFC 2033, 4.2).
        return "\r\n".join([ok] * len(envelope.rcpt_tos)) if self.lmtp else ok


async def serve(
    desk: Desk,
    host: str,
    port: int,
    protocol: str = "lmtp",
    max_size: int = 1024 * 1024,
) -> asyncio.Server:
    """Start the command server on the running loop (configured, not subclassed)."""
    handler = CommandIntake(desk, lmtp=protocol == "lmtp")
    server_class: Any = LMTP if protocol == "lmtp" else SMTP
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: server_class(
            handler, data_size_limit=max_size, hostname="kvm-digest", ident="kvm-digest"
        ),
        host=host,
        port=port,
    )
