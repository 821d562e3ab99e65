"""The relay: connections to it, and what its refusals mean.

Connections are opened on demand (TLS or STARTTLS with certificate checks,
AUTH only over TLS, timeouts) and reused for the next mail.

Every failure is read as a `Refusal`: at which step of the session it came
(RFC 5321: connect, AUTH, MAIL, RCPT, DATA) and with which reply code. Only
a refusal at RCPT names the recipient: MAIL refuses our sender, DATA our
content (a content filter: what list posters wrote), AUTH our password, and
a lost connection or a 4xx elsewhere says the relay cannot take mail now.
The outbox worker (bot/delivery/sender.py) decides what each one does.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass

import aiosmtplib

from bot.config import SmtpSection
from bot.delivery.mail import wire_address
from bot.errors import MailError

ERRORS = (aiosmtplib.SMTPException, OSError, TimeoutError)
"""What talking to a relay can raise (MailError aside)."""

STEPS = {
    "connect": "connecting",
    "auth": "at AUTH",
    "mail": "at MAIL FROM",
    "rcpt": "at RCPT TO",
    "data": "at DATA",
    "session": "during the session",
}
CLOSING = 421
"""RFC 5321: the service is closing the session; about the session, whatever the step."""
_ENHANCED = re.compile(r"^[45]\.(3\.4|6)\.?\d*\b")
"""An RFC 3463 status code whose subject is the message itself (too big, content)."""
_POLICY = re.compile(r"^[45]\.7\.\d{1,3}\b")
"""An RFC 3463 status code of security or policy: about us, not the mailbox."""
_PATH = re.compile(r"[^\s<>\x00-\x1f\x7f]+@[^\s<>@\x00-\x1f\x7f]+")
"""An address that is one word on MAIL FROM or RCPT TO: no space, bracket or control
character, so it cannot end the path early and add parameters of its own."""


@dataclass(frozen=True)
class Refusal:
    """Why the relay did not take one mail."""

    stage: str
    """connect (the connection, TLS, greeting, EHLO), auth, mail, rcpt, data, or
    session (the connection failed during the transaction)."""
    code: int | None
    """The reply code; None when there was no reply (the connection failed)."""
    text: str

    @property
    def permanent(self) -> bool:
        return self.code is not None and 500 <= self.code < 600

    @property
    def of_recipient(self) -> bool:
        """True when the refusal names the recipient: RCPT, unless the session
        ends or the reason is the relay's policy towards us (RFC 3463 X.7.x:
        "relaying denied", "authentication required"), which every
        recipient would meet alike, however few a run has."""
        return self.stage == "rcpt" and self.code != CLOSING and not _POLICY.match(self.text)

    @property
    def of_content(self) -> bool:
        """True when the relay will never take this message: a 5xx to the whole
        message (DATA), or a refusal that says the message is too big or its
        content is refused (RFC 3463: X.3.4, X.6.x; 552 at MAIL FROM, with SIZE)."""
        if not self.permanent:
            return False
        enhanced = _ENHANCED.match(self.text)
        subject = enhanced.group(1) if enhanced else ""
        return (
            self.stage == "data"
            or subject in ("3.4", "6")
            or (self.stage == "mail" and self.code == 552)
        )

    @property
    def of_session(self) -> bool:
        """True when no mail can go through this relay now: no reply, or 421."""
        return self.code is None or self.code == CLOSING

    @property
    def reply(self) -> str:
        """What the relay said: `550 5.1.1 no such user` (or what failed instead)."""
        return f"{self.code} {self.text}" if self.code is not None else self.text

    @property
    def kept(self) -> str:
        """As the outbox keeps it (`kvm-digest outbox`): the reply first, then the step."""
        if self.stage == "rcpt":
            return self.reply
        return f"{self.reply} ({STEPS.get(self.stage, self.stage)})"

    def __str__(self) -> str:
        return f"{STEPS.get(self.stage, self.stage)}: {self.reply}"


def refusal(err: BaseException, stage: str = "connect") -> Refusal:
    """Read an aiosmtplib (or socket) error as a Refusal; `stage` where none is said."""
    if isinstance(err, aiosmtplib.SMTPRecipientsRefused) and err.recipients:
        first = err.recipients[0]
        return Refusal("rcpt", first.code, _one_line(first.message))
    if isinstance(err, aiosmtplib.SMTPRecipientRefused):
        return Refusal("rcpt", err.code, _one_line(err.message))
    if isinstance(err, aiosmtplib.SMTPSenderRefused):
        return Refusal("mail", err.code, _one_line(err.message))
    if isinstance(err, aiosmtplib.SMTPDataError):
        return Refusal("data", err.code, _one_line(err.message))
    if isinstance(err, aiosmtplib.SMTPAuthenticationError):
        return Refusal("auth", err.code, _one_line(err.message))
    if isinstance(err, (aiosmtplib.SMTPConnectResponseError, aiosmtplib.SMTPHeloError)):
        return Refusal("connect", err.code, _one_line(err.message))
    if isinstance(err, aiosmtplib.SMTPResponseException):
        return Refusal(stage, err.code, _one_line(err.message))
    return Refusal(stage, None, _one_line(f"{type(err).__name__}: {err}"))


def _one_line(text: str) -> str:
    return " ".join(str(text).split())[:300]


class Relay:
    """Connections to the relay, opened on demand and reused."""

    def __init__(self, settings: SmtpSection) -> None:
        self.s = settings
        self.idle: list[aiosmtplib.SMTP] = []

    async def connection(self) -> aiosmtplib.SMTP:
        """An idle connection, or a new one (connected, TLS, logged in)."""
        if self.idle:
            return self.idle.pop()
        return await self._connect()

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
            try:
                await client.login(s.user, password)
            except BaseException:
                client.close()
                raise
        return client

    async def transact(
        self, client: aiosmtplib.SMTP, sender: str, recipient: str, message: bytes
    ) -> None:
        """One mail over `client` (given back to the pool unless it broke).

        Raises aiosmtplib errors or OSError; MailError when this recipient
        can never be reached through this relay (its address needs
        SMTPUTF8, which the relay lacks).
        """
        address, utf8 = wire_address(recipient)
        try:
            if client.is_ehlo_or_helo_needed:
                try:
                    await client.ehlo()
                except aiosmtplib.SMTPHeloError:  # an old relay: HELO, as sendmail() did
                    await client.helo()
            options = []
            if utf8:
                if not client.supports_extension("smtputf8"):
                    raise MailError(
                        f"the relay {self.s.host} does not offer SMTPUTF8, which the "
                        f"address {recipient} needs"
                    )
                options = ["SMTPUTF8"]
            await self._one_mail(client, sender, address, message, options)
        except MailError:
            self.idle.append(client)
            raise
        except (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused) as err:
            # aiosmtplib resets the transaction after a refusal: the session
            # goes on, unless the relay said it is closing it.
            if refusal(err).of_session:
                self.discard(client)
            else:
                self.idle.append(client)
            raise
        except BaseException:
            self.discard(client)
            raise
        self.idle.append(client)

    @staticmethod
    async def _one_mail(
        client: aiosmtplib.SMTP, sender: str, address: str, message: bytes, options: list[str]
    ) -> None:
        """MAIL, RCPT, DATA, as aiosmtplib's sendmail() does them for one recipient.

        Not sendmail() itself: it rewrites the line endings of the whole
        mail once more only to count its SIZE, a third of our CPU in a
        fan-out. What we send is CRLF already (bot/delivery/mail.py), so its
        length is its size. Not mail() and rcpt() either: each parses its
        address again with the email package (a tenth of our CPU a mail),
        where both are plain addr-specs already (wire_address, the VERP
        sender); `_path` checks they are one word. A refusal raises what
        those raise, and resets the session for the next mail, as
        sendmail() does.
        """
        encoding = "utf-8" if options else "ascii"
        if client.supports_extension("size"):
            options = [f"size={len(message)}", *options]
        params = [option.encode("ascii") for option in options]
        mail_from, rcpt_to = _path(sender, encoding), _path(address, encoding)
        try:
            reply = await client.execute_command(b"MAIL", b"FROM:" + mail_from, *params)
            if reply.code != 250:
                raise aiosmtplib.SMTPSenderRefused(reply.code, reply.message, sender)
            reply = await client.execute_command(b"RCPT", b"TO:" + rcpt_to)
            if reply.code not in (250, 251):
                raise aiosmtplib.SMTPRecipientRefused(reply.code, reply.message, address)
            await client.data(message)
        except aiosmtplib.SMTPResponseException:
            with contextlib.suppress(ConnectionError, aiosmtplib.SMTPResponseException):
                await client.rset()
            raise

    async def send(self, sender: str, recipient: str, message: bytes) -> None:
        """Connect if needed and send one mail (see transact)."""
        await self.transact(await self.connection(), sender, recipient, message)

    def release(self, client: aiosmtplib.SMTP) -> None:
        """Give back a connection that was not used."""
        self.idle.append(client)

    def discard(self, client: aiosmtplib.SMTP) -> None:
        with contextlib.suppress(Exception):
            client.close()

    async def close(self) -> None:
        while self.idle:
            client = self.idle.pop()
            with contextlib.suppress(Exception):
                await client.quit()


def _path(address: str, encoding: str) -> bytes:
    """`<address>` for MAIL FROM or RCPT TO; MailError unless it is one word."""
    if not _PATH.fullmatch(address):
        raise MailError(f"{address!r} cannot be written on an SMTP command line")
    return f"<{address}>".encode(encoding)
