"""Command mail: queued durably, then answered once, in its own transaction.

Mail to the bot arrives through the LMTP/SMTP server or the IMAP listener
and is first written to the `inbound` table (that is when the server may say
250). `process()` then handles each queued mail: it refuses to answer robots
and loops (RFC 3834), applies rate limits, runs the commands and queues one
threaded reply in the outbox, marking the mail done in the same transaction.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import sqlite3
import time
from dataclasses import dataclass

import jinja2

from bot.commands import CommandError, Context, registry
from bot.commands.help import help_text
from bot.config import Config
from bot.delivery.bounces import Bounces, looks_like_bounce, verp_token
from bot.delivery.mail import Identity, compose
from bot.delivery.outbox import Outbox
from bot.intake.routing import plus_base
from bot.parse import mime

log = logging.getLogger(__name__)

SHORTCUTS = {"subscribe": "subscribe", "unsubscribe": "unsubscribe", "help": "help"}
MAX_COMMANDS = 10
_REPLY_PREFIX = re.compile(r"^\s*((re|aw|sv|antw|fwd?)\s*:\s*)+", re.I)


@dataclass(frozen=True)
class Mail:
    """The parts of a command mail the handler looks at."""

    sender: str
    """Envelope sender; '' for bounces."""
    rcpt: str
    from_addr: str
    subject: str
    message_id: str
    references: str
    lines: list[str]
    headers: mime.Headers

    @classmethod
    def parse(cls, raw: bytes, sender: str, rcpt: str) -> Mail:
        headers, body = mime.split_message(raw)
        texts = mime.body_texts(raw, headers, body)
        _, from_addr = mime.parse_address(mime.first(headers, "from"))
        ids = mime.message_ids(mime.first(headers, "message-id"))
        refs = " ".join(f"<{r}>" for r in mime.message_ids(mime.first(headers, "references")))
        return cls(
            sender=sender,
            rcpt=rcpt,
            from_addr=from_addr.lower(),
            subject=mime.decode_header_value(mime.first(headers, "subject")),
            message_id=f"<{ids[0]}>" if ids else "",
            references=(refs + " " if refs else "") + (f"<{ids[0]}>" if ids else ""),
            lines=(texts[0] if texts else "").splitlines()[:200],
            headers=headers,
        )


def robot_reason(mail: Mail, me: Identity) -> str | None:
    """Why this mail must not be answered (RFC 3834), or None."""
    auto = (mime.first(mail.headers, "auto-submitted") or "no").strip().lower()
    if not auto.startswith("no"):
        return f"Auto-Submitted: {auto}"
    precedence = (mime.first(mail.headers, "precedence") or "").strip().lower()
    if precedence in ("bulk", "junk", "list"):
        return f"Precedence: {precedence}"
    if mime.first(mail.headers, "list-id"):
        return "it came through a mailing list"
    if not mail.sender or mail.sender.lower().split("@")[0] in ("mailer-daemon", "<>"):
        return "empty or MAILER-DAEMON envelope sender"
    local = mail.from_addr.split("@")[0]
    if not mail.from_addr or local in ("mailer-daemon", "postmaster"):
        return f"From: {mail.from_addr or '(none)'}"
    if plus_base(mail.from_addr) == plus_base(me.address):
        return "it comes from the bot itself"
    return None


def command_lines(mail: Mail, known: set[str]) -> tuple[list[str], str | None]:
    """The command lines of a mail, and the first line that was not one.

    A plus address (`bot+unsubscribe@`) is the command. Otherwise the subject
    counts when it is a command, then body lines up to the first line that
    is not a command, a signature or a quote; blank lines are skipped.
    """
    tag = mail.rcpt.lower().partition("@")[0].partition("+")[2]
    if tag in SHORTCUTS:
        return [SHORTCUTS[tag]], None
    found: list[str] = []
    subject = _REPLY_PREFIX.sub("", mail.subject).strip()
    if subject.split()[:1] and subject.split()[0].lower() in known:
        found.append(subject)
    stray = None
    for line in mail.lines:
        text = line.strip()
        if not text:
            continue
        if line.startswith(("-- ", ">")) or text == "--":
            break
        if text.split()[0].lower() not in known:
            stray = text
            break
        if text.lower() not in (f.lower() for f in found):  # "Re: confirm X" + "confirm X"
            found.append(text)
    return found[:MAX_COMMANDS], (None if found else stray or subject or None)


class Desk:
    """Queues command mail and answers it."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        config: Config,
        outbox: Outbox,
        env: jinja2.Environment,
    ) -> None:
        self.conn = conn
        self.config = config
        self.outbox = outbox
        self.env = env
        self.me = outbox.me
        self.commands = registry()
        self.bounces = Bounces(conn, config.bounces, outbox)
        self.pending = asyncio.Event()
        """Set when mail is queued; the daemon's worker waits on it."""

    def accepts(self, rcpt: str) -> bool:
        """True for the bot's address and its plus-addressed shortcuts."""
        return bool(self.me.address) and plus_base(rcpt) == plus_base(self.me.address)

    def queue(self, raw: bytes, sender: str, rcpt: str) -> None:
        """Store one command mail durably (commits); a copy already queued is dropped.

        A mail fetched again after a crash (IMAP), or delivered both to the
        mailbox and over LMTP, is answered once.
        """
        digest = hashlib.sha256(plus_base(rcpt).encode() + b"\0" + raw).hexdigest()
        with self.conn:
            self.conn.execute(
                "INSERT OR IGNORE INTO inbound (received, sender, rcpt, raw, raw_hash)"
                " VALUES (?, ?, ?, ?, ?)",
                (int(time.time()), sender, rcpt, raw, digest),
            )
        self.pending.set()

    def process(self) -> int:
        """Answer every queued command mail; return how many were handled."""
        rows = self.conn.execute(
            "SELECT id, sender, rcpt, raw FROM inbound WHERE NOT done ORDER BY id"
        ).fetchall()
        for row_id, sender, rcpt, raw in rows:
            with self.conn:
                # Bounces first: the robot filter below would drop them unread.
                if verp_token(rcpt) is not None or looks_like_bounce(raw, sender):
                    self.bounces.handle(raw, rcpt, sender)
                else:
                    self._handle(Mail.parse(raw, sender, rcpt))
                self.conn.execute("UPDATE inbound SET done = 1 WHERE id = ?", (row_id,))
        return len(rows)

    def _handle(self, mail: Mail) -> None:
        reason = robot_reason(mail, self.me)
        if reason:
            log.info("not answering mail from %s: %s", mail.from_addr or mail.sender, reason)
            return
        limited = self._rate_limited(mail.from_addr)
        if limited:
            log.warning("not answering %s: %s", mail.from_addr, limited)
            return
        ctx = Context(self.conn, self.config, self.me, mail.from_addr, self.env)
        lines, stray = command_lines(mail, set(self.commands))
        body = self._run(ctx, lines, stray)
        subject = ctx.reply_subject or (
            "Re: " + _REPLY_PREFIX.sub("", mail.subject) if mail.subject else "Your command"
        )
        message_id = self.me.new_message_id()
        message = compose(
            self.me,
            mail.from_addr,
            subject,
            body,
            message_id,
            in_reply_to=mail.message_id or None,
            references=mail.references or None,
        )
        self.outbox.enqueue(mail.from_addr, message, message_id)
        log.info("answered %d command(s) from %s", len(lines), mail.from_addr)

    def _run(self, ctx: Context, lines: list[str], stray: str | None) -> str:
        if not lines:
            found = f"the first line was {stray!r}, which" if stray else "the mail"
            return f"No command found: {found} is not a command I know.\n\n" + help_text(ctx)
        parts = []
        for line in lines:
            name, *args = line.split()
            command = self.commands[name.lower()]
            try:
                result = command.run(ctx, args)
            except CommandError as err:
                result = f"Error: {err}."
                if len(lines) == 1 and command.alone:
                    return f"> {line}\n{result}\n"
            if len(lines) == 1 and command.alone:
                return result
            parts.append(f"> {line}\n{result}\n")
        return "\n".join(parts)

    def _rate_limited(self, address: str) -> str | None:
        hour_ago = int(time.time()) - 3600
        mine, everyone = self.conn.execute(
            "SELECT SUM(recipient = ?), COUNT(*) FROM outbox WHERE kind = 'reply' AND created > ?",
            (address, hour_ago),
        ).fetchone()
        limits = self.config.commands
        if (mine or 0) >= limits.per_address_per_hour:
            return f"more than {limits.per_address_per_hour} replies to it in the last hour"
        if everyone >= limits.per_hour:
            return f"more than {limits.per_hour} replies in the last hour"
        return None
