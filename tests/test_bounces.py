"""Bounces through a real LMTP session: VERP, flufl.bounce, score, disable, notice.

The digest goes out through a real relay (aiosmtpd sink) with its VERP
envelope sender; the bounce comes back over LMTP in the shapes real MTAs
send: a Postfix RFC 3464 multipart/report, and qmail's and Exim's plain
text.
"""

from __future__ import annotations

import time

import pytest

from bot import record
from bot.config import BouncesSection
from bot.delivery import bounces, periodic, subscribers, verp
from bot.delivery.mail import Identity
from bot.desk.inbound import Desk
from bot.digest.build import environment
from tests.smtpsink import Sink
from tests.test_commands import BOT, Bot

DAY = 86400
ARCHIVE = "https://lore.kernel.org/kvm/"


def postfix_dsn(rcpt: str, to: str, status: str = "5.1.1", action: str = "failed") -> bytes:
    """What Postfix sends back: RFC 3464 multipart/report (report-type=delivery-status)."""
    return f"""\
Return-Path: <>
From: MAILER-DAEMON@mx.example.net (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: {to}
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
 boundary="4F1C2A0123.1700000000/mx.example.net"
Message-Id: <20261122061500.4F1C2A0123@mx.example.net>

This is a MIME-encapsulated message.

--4F1C2A0123.1700000000/mx.example.net
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx.example.net.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients.

<{rcpt}>: host mail.example.net[192.0.2.7] said: 550 5.1.1
    <{rcpt}>: Recipient address rejected: User unknown

--4F1C2A0123.1700000000/mx.example.net
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.net
X-Postfix-Queue-ID: 4F1C2A0123
Arrival-Date: Sun, 22 Nov 2026 06:00:01 +0000 (UTC)

Final-Recipient: rfc822; {rcpt}
Original-Recipient: rfc822;{rcpt}
Action: {action}
Status: {status}
Remote-MTA: dns; mail.example.net
Diagnostic-Code: smtp; 550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown

--4F1C2A0123.1700000000/mx.example.net
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers

From: KVM digest <{BOT}>
To: {rcpt}
Subject: KVM mailing list update from d62e82362 to caab494ce

--4F1C2A0123.1700000000/mx.example.net--
""".replace("\n", "\r\n").encode()


def qmail_bounce(rcpt: str, to: str) -> bytes:
    """qmail's plain-text bounce: no MIME report at all."""
    return f"""\
Return-Path: <>
From: MAILER-DAEMON@qmail.example.com
To: {to}
Subject: failure notice

Hi. This is the qmail-send program at qmail.example.com.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<{rcpt}>:
Sorry, no mailbox here by that name. (#5.1.1)

--- Below this line is a copy of the message.

From: KVM digest <{BOT}>
To: {rcpt}
Subject: KVM mailing list update
""".replace("\n", "\r\n").encode()


def exim_bounce(rcpt: str, to: str) -> bytes:
    """Exim's plain-text bounce (X-Failed-Recipients)."""
    return f"""\
Return-path: <>
From: Mail Delivery System <Mailer-Daemon@exim.example.com>
To: {to}
Subject: Mail delivery failed: returning message to sender
X-Failed-Recipients: {rcpt}
Auto-Submitted: auto-replied

This message was created automatically by mail delivery software.

A message that you sent could not be delivered to one or more of its
recipients. This is a permanent error. The following address(es) failed:

  {rcpt}
    SMTP error from remote mail server after RCPT TO:<{rcpt}>:
    550 5.1.1 User unknown

------ This is a copy of the message, including all the headers. ------

From: KVM digest <{BOT}>
To: {rcpt}
""".replace("\n", "\r\n").encode()


class BounceBot(Bot):
    """The command side with bounce settings and an archive URL."""

    def __init__(self, root, sink: Sink, threshold: int = 2) -> None:
        super().__init__(root, sink)
        self.config = record.replace(
            self.config, bounces=BouncesSection(threshold=threshold, stale_days=7)
        )
        self.me = Identity(BOT, archive_url=ARCHIVE)
        self.outbox.me = self.me
        self.desk = Desk(self.store.index.conn, self.config, self.outbox, environment())
        self.conn = self.store.index.conn
        with self.conn:
            periodic.ensure(self.conn, "daily")

    def subscribe(self, *addresses: str) -> None:
        with self.conn:
            for a in addresses:
                subscribers.subscribe(self.conn, a, "daily")

    async def digest(self) -> None:
        """A digest run over the whole slice, sent to the relay."""
        periodic.move(self.conn, "daily", 0)  # back to "before the first message"
        periodic.run(self.conn, self.config, self.outbox, environment(), "daily")
        await self.sender.flush()

    def status(self, address: str) -> str:
        sub = subscribers.get(self.conn, address)
        assert sub is not None
        return sub.status

    def score(self, address: str) -> int:
        row = self.conn.execute(
            "SELECT score FROM bounces WHERE address = ?", (address,)
        ).fetchone()
        return row[0] if row else 0


@pytest.fixture
async def bot(tmp_path, sink):
    b = await BounceBot(tmp_path / "var", sink).start()
    yield b
    await b.close()


async def test_digest_has_verp_sender_and_list_headers(bot, sink):
    bot.subscribe("a@example.net", "b@example.net")
    await bot.digest()
    received = {r.recipients[0]: r for r in sink.wait_for(2)}
    senders = {r.sender for r in received.values()}
    # One envelope sender per recipient, each a plus address of the bot.
    assert len(senders) == 2
    key = verp.install_key(bot.conn)
    for rcpt, r in received.items():
        assert r.sender == f"kvm-digest+bounce-{verp.token(key, rcpt)}@example.org"
        assert verp.subscriber_for(bot.conn, key, verp.verp_token(r.sender)) == rcpt
        msg = r.message
        assert msg["List-Archive"] == f"<{ARCHIVE}>"
        assert msg["List-Post"] == "NO"
        assert msg["List-Id"] and msg["List-Help"]
    # The key is state: the same on every run, so old bounces still map.
    assert verp.install_key(bot.conn) == key


async def test_replies_keep_the_plain_sender(bot, sink):
    await bot.ask(b"From: una@example.org\r\nTo: " + BOT.encode() + b"\r\nSubject: help\r\n\r\n")
    (reply,) = sink.wait_for(1)
    assert reply.sender == BOT
    assert "List-Post" not in reply.message


async def test_verp_dsn_over_lmtp_scores_then_disables_and_tells_once(bot, sink):
    bot.subscribe("gone@example.net", "fine@example.net")
    await bot.digest()
    verp = {r.recipients[0]: r.sender for r in sink.wait_for(2)}["gone@example.net"]
    # The MTA delivers the DSN over LMTP with a null sender; it is accepted
    # (not 550) and counted, not dropped as robot mail.
    replies = await bot.deliver(postfix_dsn("gone@example.net", verp), rcpt=verp, sender="")
    assert replies == {}
    bot.desk.process()
    assert bot.score("gone@example.net") == 1
    assert bot.status("gone@example.net") == "active"
    # Later the same day: still one point (Mailman: one a day at most).
    bot.desk.bounces.handle(postfix_dsn("gone@example.net", verp), verp)
    assert bot.score("gone@example.net") == 1
    # Next day: the threshold (2) is reached; disabled and told.
    with bot.conn:
        out = bot.desk.bounces.handle(
            qmail_bounce("gone@example.net", verp), verp, "", now=_tomorrow(bot)
        )
    assert out.disabled == ("gone@example.net",)
    assert bot.status("gone@example.net") == "disabled"
    assert bot.status("fine@example.net") == "active"
    status = bot.desk.commands["status"]
    from bot.commands import Context

    ctx = Context(bot.conn, bot.config, bot.me, "gone@example.net", environment())
    assert "bounced or was refused" in status.run(ctx, [])
    await bot.sender.flush()
    notices = [r for r in sink.wait_for(3) if r.message["Subject"].endswith("is disabled")]
    assert [n.recipients for n in notices] == [["gone@example.net"]]
    text = notices[0].message.get_payload(decode=True).decode()
    assert "subscribe" in text and BOT in text
    assert all(len(line) < 80 for line in text.splitlines())
    # More bounces never tell again.
    with bot.conn:
        again = bot.desk.bounces.handle(
            exim_bounce("gone@example.net", verp), verp, "", now=_tomorrow(bot) + DAY
        )
    assert again.addresses == ("gone@example.net",) and again.disabled == ()
    assert bot.conn.execute("SELECT COUNT(*) FROM outbox WHERE kind = 'notice'").fetchone() == (1,)


def _tomorrow(bot: BounceBot) -> float:
    (last,) = bot.conn.execute("SELECT MAX(last_bounce) FROM bounces").fetchone()
    return last + DAY


@pytest.mark.parametrize("shape", [postfix_dsn, qmail_bounce, exim_bounce])
async def test_every_format_at_the_verp_address_is_read(bot, sink, shape):
    bot.subscribe("gone@example.net")
    await bot.digest()
    (r,) = sink.wait_for(1)
    await bot.deliver(shape("gone@example.net", r.sender), rcpt=r.sender, sender="")
    bot.desk.process()
    assert bot.score("gone@example.net") == 1


@pytest.mark.parametrize("shape", [postfix_dsn, qmail_bounce, exim_bounce])
async def test_reports_to_the_plain_address_score_nothing(bot, shape, caplog):
    bot.subscribe("gone@example.net")
    # A report to the bot's own address (a bounce of a reply, or forged): it
    # proves nothing about a subscriber, whatever it names.
    with caplog.at_level("DEBUG", logger="bot.delivery.bounces"):
        await bot.deliver(shape("gone@example.net", BOT), rcpt=BOT, sender="")
        bot.desk.process()
    assert bot.score("gone@example.net") == 0
    assert "proves nothing; not counted" in caplog.text
    # No reply goes to the robot.
    assert bot.conn.execute("SELECT COUNT(*) FROM outbox").fetchone() == (0,)


async def test_bounce_for_a_stranger_counts_nothing(bot):
    bot.subscribe("a@example.net")
    await bot.deliver(postfix_dsn("someone@else.example", BOT), rcpt=BOT, sender="")
    # A forged VERP token matches nobody.
    forged = "kvm-digest+bounce-0123456789abcdef@example.org"
    await bot.deliver(postfix_dsn("a@example.net", forged), rcpt=forged, sender="")
    bot.desk.process()
    assert bot.conn.execute("SELECT COUNT(*) FROM bounces").fetchone() == (0,)


async def test_delay_warning_does_not_count(bot, sink):
    bot.subscribe("slow@example.net")
    await bot.digest()
    (r,) = sink.wait_for(1)
    dsn = postfix_dsn("slow@example.net", r.sender, status="4.4.7", action="delayed")
    await bot.deliver(dsn, rcpt=r.sender, sender="")
    bot.desk.process()
    assert bot.score("slow@example.net") == 0


async def test_score_decays_after_stale_days_and_resubscribing_resets(bot, sink):
    bot.subscribe("flaky@example.net")
    address = "flaky@example.net"
    key = verp.install_key(bot.conn)
    sender = verp.verp_sender(bot.me, key, address)
    with bot.conn:
        bot.desk.bounces.handle(postfix_dsn(address, sender), sender, "", now=1_000_000 * DAY)
        # Eight days later: the old point is stale, the score starts again at 1.
        bot.desk.bounces.handle(postfix_dsn(address, sender), sender, "", now=1_000_008 * DAY)
    assert bot.score(address) == 1
    assert bot.status(address) == "active"
    with bot.conn:
        bot.desk.bounces.handle(postfix_dsn(address, sender), sender, "", now=1_000_009 * DAY)
    assert bot.status(address) == "disabled"
    # Subscribing again (subscribers.subscribe stamps `changed`) starts from zero.
    bot.subscribe(address)
    with bot.conn:
        bot.conn.execute(
            "UPDATE subscribers SET changed = ? WHERE address = ?", (1_000_010 * DAY, address)
        )
        bot.desk.bounces.handle(postfix_dsn(address, sender), sender, "", now=1_000_011 * DAY)
    assert (bot.score(address), bot.status(address)) == (1, "active")


async def test_an_out_of_office_reply_to_the_verp_address_is_not_a_bounce(bot, sink):
    bot.subscribe("away@example.net")
    await bot.digest()
    (r,) = sink.wait_for(1)
    vacation = (
        f"From: Away <away@example.net>\r\nTo: {r.sender}\r\n"
        "Subject: Out of office: KVM mailing list update\r\n"
        "Auto-Submitted: auto-replied\r\n\r\nI am away until Monday.\r\n"
    ).encode()
    await bot.deliver(vacation, rcpt=r.sender, sender="away@example.net")
    bot.desk.process()
    assert bot.score("away@example.net") == 0
    # And it is not answered either.
    assert bot.conn.execute("SELECT COUNT(*) FROM outbox WHERE kind = 'reply'").fetchone() == (0,)


async def test_hostile_mail_as_bounces_is_never_a_crash_nor_a_point(bot, sink):
    """flufl.bounce raises on some hostile mail; the desk must carry on."""
    from tests.test_hostile import FILES

    bot.subscribe("gone@example.net")
    await bot.digest()
    (r,) = sink.wait_for(1)
    # What SMTP can carry to this server: under its size limit, no line over 998.
    files = [
        p
        for p in FILES
        if len(p.read_bytes()) < 45_000
        and all(len(line) <= 998 for line in p.read_bytes().split(b"\n"))
    ]
    for path in files:
        raw = path.read_bytes().replace(b"\n", b"\r\n") or b"\r\n"
        # To the VERP address from someone (with a null sender it would be a
        # bounce whatever it says, as in Mailman)...
        await bot.deliver(raw, rcpt=r.sender, sender="someone@example.net")
        # And as a DSN to the bot (another mail: the same bytes would be a copy).
        await bot.deliver(b"X-Copy: 2\r\n" + raw, rcpt=BOT, sender="")
    assert bot.desk.process() == 2 * len(files)
    assert bot.score("gone@example.net") == 0
    # A megabyte of bounce-like lines is read in bounded time (only its start).
    flood = b"From: MAILER-DAEMON@x\r\nSubject: failure\r\n\r\n" + b"".join(
        b"<user%d@example.org>: 550 user unknown\r\n" % i for i in range(25_000)
    )
    started = time.monotonic()
    assert bounces.failures(flood)[1] == frozenset()
    assert time.monotonic() - started < 2
    # The next real bounce still counts.
    await bot.deliver(postfix_dsn("gone@example.net", r.sender), rcpt=r.sender, sender="")
    bot.desk.process()
    assert bot.score("gone@example.net") == 1


async def test_a_bounce_that_reaches_the_mailbox_is_read_too(bot, sink):
    """IMAP intake: the daemon hands mail to the bot's addresses to the desk."""
    from bot.config import from_table
    from bot.daemon import Daemon
    from bot.parse.message import parse_message

    bot.subscribe("gone@example.net")
    await bot.digest()
    (r,) = sink.wait_for(1)
    raw = postfix_dsn("gone@example.net", r.sender)
    daemon = Daemon(from_table({"commands": {"address": BOT}}))
    daemon._from_imap(bot.desk, raw, parse_message(raw))
    ((rcpt, sender),) = bot.conn.execute("SELECT rcpt, sender FROM inbound").fetchall()
    assert rcpt == r.sender  # the VERP address, from the DSN's To
    assert sender == ""  # its Return-Path: <>, the envelope of a bounce
    bot.desk.process()
    assert bot.score("gone@example.net") == 1
    assert bot.conn.execute("SELECT COUNT(*) FROM outbox WHERE kind = 'reply'").fetchone() == (0,)
