"""A real SMTP relay for the tests: aiosmtpd on 127.0.0.1, in its own thread.

It records every message it accepts, can refuse at each step of the
session (chosen recipients or all of them at RCPT, our sender at MAIL FROM,
the content at the end of DATA, a login at AUTH), counts what it refused,
runs a hook just before it says 250, and can be stopped and started again on
the same port to play a relay outage. `wait_for(n)` blocks on a condition
variable.
"""

from __future__ import annotations

import email
import email.policy
import ssl
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path

from aiosmtpd.controller import Controller

from tests.dovecot import free_port


@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes
    mail_options: list[str] = field(default_factory=list)

    @property
    def message(self) -> Message:
        """Parsed as a mail client would: folded headers come back unfolded."""
        return email.message_from_bytes(self.data, policy=email.policy.default)


@dataclass
class SinkHandler:
    received: list[Received] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)
    """recipient -> SMTP reply, e.g. "550 5.1.1 no such user"."""
    refuse_all: str = ""
    """An answer to every RCPT, e.g. "421 4.3.2 going down", while set."""
    refuse_mail: str = ""
    """An answer to MAIL FROM (our sender), e.g. "553 5.7.1 sender rejected", while set."""
    refuse_data: str = ""
    """An answer to the whole message (a content filter), e.g. "554 5.7.1 spam", while set."""
    drop_after_data: bool = False
    """Take the whole message, then hang up without answering."""
    before_250: Callable[[], None] | None = None
    """Called (in the relay's thread) when a message is taken, just before the 250."""
    refused: Counter[str] = field(default_factory=Counter)
    """Refusals by step: mail, rcpt, data."""
    cond: threading.Condition = field(default_factory=threading.Condition)

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if self.refuse_mail:
            self.refused["mail"] += 1
            return self.refuse_mail
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        answer = self.refuse_all or self.refuse.get(address.lower(), "")
        if answer:
            self.refused["rcpt"] += 1
            return answer
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.drop_after_data:
            server.transport.close()
            return "421 4.4.2 connection dropped"
        if self.refuse_data:
            self.refused["data"] += 1
            return self.refuse_data
        if self.before_250 is not None:
            self.before_250()
        with self.cond:
            self.received.append(
                Received(
                    envelope.mail_from,
                    list(envelope.rcpt_tos),
                    envelope.original_content,
                    list(envelope.mail_options),
                )
            )
            self.cond.notify_all()
        return "250 2.0.0 Ok: queued"


def relay_process(port: int) -> subprocess.Popen:
    """aiosmtpd's own Sink handler as a relay process of its own (benchmarks)."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aiosmtpd",
            "-n",
            "-c",
            "aiosmtpd.handlers.Sink",
            "-l",
            f"127.0.0.1:{port}",
        ]
    )


class Sink:
    """Start/stop a recording SMTP server on a fixed port."""

    def __init__(self, certificates: Path | None = None, smtputf8: bool = False) -> None:
        """With `certificates` (see tests.dovecot.make_certificates): STARTTLS required.

        With `smtputf8`, the relay offers SMTPUTF8 (RFC 6531), as Postfix does.
        """
        self.port = free_port()
        self.smtputf8 = smtputf8
        self.handler = SinkHandler()
        self.controller: Controller | None = None
        self.tls: ssl.SSLContext | None = None
        if certificates is not None:
            self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.tls.load_cert_chain(certificates / "server.pem", certificates / "server.key")

    def start(self) -> Sink:
        self.controller = Controller(
            self.handler,
            hostname="127.0.0.1",
            port=self.port,
            tls_context=self.tls,
            require_starttls=self.tls is not None,
            enable_SMTPUTF8=self.smtputf8,
        )
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    @property
    def received(self) -> list[Received]:
        with self.handler.cond:
            return list(self.handler.received)

    def wait_for(self, n: int, timeout: float = 20) -> list[Received]:
        with self.handler.cond:
            ok = self.handler.cond.wait_for(lambda: len(self.handler.received) >= n, timeout)
            assert ok, f"{len(self.handler.received)} messages arrived, expected {n}"
            return list(self.handler.received)

    def wait_until(self, done, timeout: float = 30) -> list[Received]:
        """Block until `done(received)` is true."""
        with self.handler.cond:
            ok = self.handler.cond.wait_for(lambda: done(self.handler.received), timeout)
            assert ok, f"gave up after {len(self.handler.received)} messages"
            return list(self.handler.received)

    def to(self, address: str) -> list[Received]:
        return [r for r in self.received if address in r.recipients]
