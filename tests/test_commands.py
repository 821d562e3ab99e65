"""Email commands through a real LMTP session; replies caught by a real relay."""

from __future__ import annotations

import asyncio
import re
import smtplib
from email.utils import make_msgid
from pathlib import Path

import pytest

from bot.config import from_table
from bot.delivery import subscribers
from bot.delivery.mail import Identity
from bot.delivery.outbox import Outbox
from bot.delivery.sender import Sender
from bot.desk import lmtp
from bot.desk.inbound import Desk
from bot.digest.build import environment
from tests.conftest import archive_ids
from tests.dovecot import free_port
from tests.mailfactory import DATA, Store, without_footer
from tests.smtpsink import Sink

BOT = "kvm-digest@example.org"
USER = "Una User <una@example.org>"


class Bot:
    """The command side of the bot, in-process, on a real LMTP port."""

    def __init__(
        self,
        root: Path,
        sink: Sink,
        max_days: int = 3650,
        per_hour: int = 500,
        max_size: int = 50_000,
        web: dict | None = None,
        **commands: object,
    ) -> None:
        self.max_size = max_size
        self.port = free_port()
        self.config = from_table(
            {
                "data": {"dir": str(root)},
                "list": {"id": "kvmarm.lists.cs.columbia.edu"},
                "commands": {
                    "address": BOT,
                    "listen": f"127.0.0.1:{self.port}",
                    "per_hour": per_hour,
                    # A conversation of more than the shipped five an hour;
                    # the tests of the limits set their own.
                    "per_address_per_hour": 10,
                    **commands,
                },
                "smtp": {"host": "127.0.0.1", "port": sink.port, "security": "none"},
                "digest": {"max_messages": 20, "max_days": max_days},
                "web": web or {},
            }
        )
        self.store = Store(root)
        self.store.importer.run([(str(i), m) for i, m in enumerate(SLICE)], "slice")
        self.me = Identity.from_config(self.config)
        self.outbox = Outbox(self.store.index.conn, self.me)
        self.desk = Desk(self.store.index.conn, self.config, self.outbox, environment())
        self.sender = Sender(self.outbox, self.config.smtp)
        self.server: asyncio.Server | None = None

    async def start(self) -> Bot:
        self.server = await lmtp.serve(
            self.desk,
            "127.0.0.1",
            self.port,
            max_size=self.max_size,
            limits=self.config.commands,
        )
        return self

    async def deliver(self, raw: bytes, rcpt: str = BOT, sender: str = "una@example.org"):
        """One LMTP session; returns the per-recipient replies (or raises)."""

        def session():
            with smtplib.LMTP("127.0.0.1", self.port) as client:
                return client.sendmail(sender, [rcpt], raw)

        return await asyncio.to_thread(session)

    async def ask(self, raw: bytes, rcpt: str = BOT, sender: str = "una@example.org") -> None:
        await self.deliver(raw, rcpt, sender)
        self.desk.process()
        await self.sender.flush()

    def subscribe(self, address: str = "una@example.org") -> None:
        """Make `address` a confirmed subscriber (as `subscribers add` does)."""
        with self.store.index.conn:
            subscribers.subscribe(self.store.index.conn, address)

    async def close(self) -> None:
        if self.server:
            self.server.close()
            await self.server.wait_closed()


def command(
    body: str = "", subject: str = "", frm: str = USER, headers: str = "", msgid: str | None = None
) -> bytes:
    return (
        f"From: {frm}\r\nTo: {BOT}\r\nSubject: {subject}\r\n"
        f"Message-ID: {msgid or make_msgid(domain='example.org')}\r\n"
        f"{headers}\r\n{body}"
    ).encode()


SLICE = [m.as_bytes() for m in __import__("mailbox").mbox(DATA / "kvmarm-slice.mbox")]


@pytest.fixture
async def bot(tmp_path, sink):
    b = await Bot(tmp_path / "var", sink).start()
    yield b
    await b.close()


def reply_text(received) -> str:
    """The decoded body, with the wire's CRLF line ends made LF again."""
    return received.message.get_payload(decode=True).decode().replace("\r\n", "\n")


async def test_help_reply_is_threaded_and_auto_replied(bot, sink):
    await bot.ask(command("help\n", msgid="<asked@example.org>"))
    (reply,) = sink.wait_for(1)
    msg = reply.message
    assert reply.recipients == ["una@example.org"]
    assert msg["In-Reply-To"] == "<asked@example.org>"
    assert msg["References"] == "<asked@example.org>"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["From"] == f"KVM digest <{BOT}>"
    text = reply_text(reply)
    for name in ("help", "subscribe", "confirm", "unsubscribe", "digest", "status"):
        assert f"\n  {name:<12} " in text
    # The examples are this archive's own newest messages, so they work as sent.
    ids = archive_ids(bot.store.root)
    start, end = ids[-11][:9], ids[-1][:9]
    assert f"\n    digest {start}..{end}\n" in text
    assert f"\n    digest {start} {end}\n" in text
    since = re.search(r"\n    (digest since \S+ until \S+)\n", text).group(1)
    assert all(len(line) < 80 for line in text.splitlines())
    # Each example, sent back as it is by a subscriber, gives a digest.
    bot.subscribe()
    await bot.ask(command(f"digest {start}..{end}\n"))
    assert sink.wait_for(2)[1].message["Subject"].endswith(f"update from {start} to {end}")
    await bot.ask(command(since + "\n"))
    assert "mailing list update from" in sink.wait_for(3)[2].message["Subject"]


async def test_subscribe_confirm_by_plain_reply_then_status_and_unsubscribe(bot, sink):
    await bot.ask(command("subscribe weekly\n"))
    (confirmation,) = sink.wait_for(1)
    subject = confirmation.message["Subject"]
    assert subject.startswith("confirm ")
    token = subject.split()[1]
    # The token is stored hashed only.
    assert not bot.store.index.conn.execute(
        "SELECT 1 FROM tokens WHERE token_hash = ?", (token,)
    ).fetchone()
    # A plain reply: "Re: confirm TOKEN", the same command typed again (it
    # counts once), a line of text, the quoted original.
    await bot.ask(
        command(
            f"Confirm {token}\nYes please.\n\n> Someone, probably you...\n",
            subject=f"Re: {subject}",
        )
    )
    text = reply_text(sink.wait_for(2)[1])
    assert "una@example.org now receives the weekly digest." in text
    assert "Error" not in text
    await bot.ask(command("status\n"))
    status = reply_text(sink.wait_for(3)[2])
    assert "una@example.org: active, weekly digest." in status
    assert "goes out every Monday at 06:00 UTC (cron '0 6 * * mon')." in status
    # Unsubscribing is confirmed by a token too.
    await bot.ask(command(subject="unsubscribe"))
    asked = sink.wait_for(4)[3].message["Subject"]
    assert asked.startswith("confirm ")
    await bot.ask(command(subject=f"Re: {asked}"))
    assert "will not receive the digest any more" in reply_text(sink.wait_for(5)[4])
    # The token was single use.
    await bot.ask(command(f"confirm {token}\n"))
    assert "token is unknown, used, expired" in reply_text(sink.wait_for(6)[5])


async def test_nobody_can_subscribe_someone_else(bot, sink):
    await bot.ask(
        command("subscribe\n", frm="Victim <victim@example.org>"), sender="attacker@example.org"
    )
    (confirmation,) = sink.wait_for(1)
    # The token goes to the address being subscribed, never to the asker...
    assert confirmation.recipients == ["victim@example.org"]
    token = confirmation.message["Subject"].split()[1]
    # ...and a stolen token does not work from another address.
    await bot.ask(command(f"confirm {token}\n", frm="Attacker <attacker@example.org>"))
    assert "sent to another address" in reply_text(sink.wait_for(2)[1])
    rows = bot.store.index.conn.execute("SELECT COUNT(*) FROM subscribers").fetchone()
    assert rows == (0,)


async def test_digest_by_mail_equals_the_cli_digest(bot, sink, cli, data_dir):
    ids = archive_ids(bot.store.root)
    a, b = ids[2][:9], ids[12][:9]
    bot.subscribe()  # only a confirmed subscriber gets a digest at once
    await bot.ask(command(f"digest {a}..{b}\n"))
    (reply,) = sink.wait_for(1)
    assert reply.message["Subject"] == f"KVM mailing list update from {a} to {b}"
    expected = cli("--data-dir", bot.store.root, "digest", "--range", f"{a}..{b}").out
    text = reply_text(reply)
    assert without_footer(text) == expected
    # The footer names the subscriber's own unsubscribe address and a person.
    secret = subscribers.unsubscribe_secret(bot.store.index.conn, "una@example.org")
    assert f"\n-- \nUnsubscribe: mail kvm-digest+unsubscribe-{secret}@example.org\n" in text
    assert text.endswith(
        "\nDiscuss on kvm@vger.kernel.org (replies here reach only the bot)\n"
        "Questions for a person: postmaster@example.org\n"
    )


@pytest.mark.parametrize(
    ("ask", "error"),
    [
        ("digest 1234567..abcdef0", "no message in the archive has a commit id starting"),
        ("digest last 3 fortnights", "write it as 'digest last N days'"),
        ("digest since 2019-01-01", "more than the limit of 20"),
        ("subscribe hourly", "subscribe takes daily or weekly"),
        ("unsubscribe", "una@example.org is not subscribed"),
    ],
)
async def test_error_replies_say_what_is_wrong(bot, sink, ask, error):
    await bot.ask(command(ask + "\n"))
    assert error in reply_text(sink.wait_for(1)[0])


async def test_range_longer_than_max_days(tmp_path, sink):
    strict = await Bot(tmp_path / "strict", sink, max_days=31).start()
    try:
        ids = archive_ids(strict.store.root)
        await strict.ask(command(f"digest {ids[2][:9]}..{ids[12][:9]}\n"))
    finally:
        await strict.close()
    assert "that range spans more than 31 days" in reply_text(sink.wait_for(1)[0])


async def test_range_start_after_end(bot, sink):
    ids = archive_ids(bot.store.root)
    await bot.ask(command(f"digest {ids[9][:9]} {ids[2][:9]}\n"))
    assert "comes after its end" in reply_text(sink.wait_for(1)[0])


async def test_mail_without_a_command_gets_one_short_answer_a_day(bot, sink):
    await bot.ask(command("subscirbe\n", subject="hello"))
    (reply,) = sink.wait_for(1)
    text = reply_text(reply)
    assert "holds no command I know; its first line was:\n\n    subscirbe\n" in text
    assert "Send 'help' to kvm-digest@example.org" in text
    assert "This is the KVM digest bot" not in text  # no help text: no backscatter
    assert len(reply.data) < 1000
    # The same day, more mail without a command gets nothing at all.
    await bot.ask(command("buy cheap watches\n", subject="hello again"))
    await bot.ask(command("", subject=""))
    await bot.ask(command("help\n"))  # a command still works
    got = sink.wait_for(2)
    assert len(got) == 2 and "This is the KVM digest bot" in reply_text(got[1])


async def test_several_commands_stop_at_signature(bot, sink):
    await bot.ask(command("help\nstatus\n-- \nsubscribe\n"))
    text = reply_text(sink.wait_for(1)[0])
    assert "> help\n" in text and "> status\n" in text
    assert "> subscribe" not in text


async def test_plus_address_shortcuts(bot, sink):
    await bot.ask(command(subject="anything"), rcpt="kvm-digest+subscribe@example.org")
    assert sink.wait_for(1)[0].message["Subject"].startswith("confirm ")
    await bot.ask(command(), rcpt="kvm-digest+help@example.org")
    assert "This is the KVM digest bot" in reply_text(sink.wait_for(2)[1])


async def test_foreign_recipients_are_refused_it_is_not_a_relay(bot):
    with pytest.raises(smtplib.SMTPRecipientsRefused) as err:
        await bot.deliver(command("help\n"), rcpt="someone@elsewhere.org")
    code, text = err.value.recipients["someone@elsewhere.org"]
    assert code == 550 and b"not a relay" in text


async def test_oversized_mail_is_refused_with_552(bot):
    # Refused at MAIL FROM when the client declares SIZE, else after DATA.
    with pytest.raises((smtplib.SMTPSenderRefused, smtplib.SMTPDataError)) as err:
        await bot.deliver(command("help\n" + "x" * 60_000))
    assert err.value.smtp_code == 552
    assert bot.store.index.conn.execute("SELECT COUNT(*) FROM inbound").fetchone() == (0,)


@pytest.mark.parametrize(
    ("headers", "frm", "sender"),
    [
        ("Auto-Submitted: auto-replied\r\n", USER, "una@example.org"),
        ("Precedence: bulk\r\n", USER, "una@example.org"),
        ("List-Id: <other.lists.example.org>\r\n", USER, "una@example.org"),
        ("", "MAILER-DAEMON <MAILER-DAEMON@example.org>", ""),
        ("", f"KVM digest <{BOT}>", BOT),
    ],
)
async def test_robots_and_loops_get_no_answer(bot, sink, headers, frm, sender):
    await bot.ask(command("help\n", headers=headers, frm=frm), sender=sender)
    await bot.ask(command("help\n"))  # a person's mail right after still works
    assert [r.recipients for r in sink.wait_for(1)] == [["una@example.org"]]


async def test_rate_limit_per_address_defers_then_refuses_with_451(tmp_path, sink):
    # The daily cap (which drops, not defers) is set above the hourly limit here.
    bot = await Bot(
        tmp_path / "limited", sink, max_waiting_per_address=10, per_address_per_day=50
    ).start()
    try:
        await rate_limit_per_address(bot, sink)
    finally:
        await bot.close()


async def rate_limit_per_address(bot: Bot, sink: Sink) -> None:
    for _ in range(12):
        await bot.deliver(command("help\n"))
        bot.desk.process()
    await bot.sender.flush()
    # [commands] per_address_per_hour answers, and one note that the rest waits.
    assert len(sink.received) == 11
    notes = [r for r in sink.received if "answer comes later" in r.message["Subject"]]
    assert len(notes) == 1
    # The other two wait for the hour to pass; nothing is dropped.
    conn = bot.store.index.conn
    waiting = conn.execute(
        "SELECT deferred_until - strftime('%s', 'now') FROM inbound WHERE NOT done"
    ).fetchall()
    assert len(waiting) == 2 and all(3500 < w < 3700 for (w,) in waiting)
    # Once max_waiting_per_address wait, more mail is refused with 451: the MTA keeps it.
    for _ in range(8):
        await bot.deliver(command("help\n"))
    with pytest.raises(smtplib.SMTPDataError) as err:
        await bot.deliver(command("help\n"))
    assert err.value.smtp_code == 451
    assert conn.execute("SELECT COUNT(*) FROM inbound WHERE NOT done").fetchone() == (10,)


async def test_no_header_injection_from_user_text(bot, sink):
    await bot.ask(command("help\n", subject="help =?utf-8?q?x=0D=0ABcc:_evil@example.org?="))
    msg = sink.wait_for(1)[0].message
    assert msg["Bcc"] is None
    assert "\n" not in msg["Subject"]


async def test_rate_limits_hold_under_a_flood_of_1000_command_mails(tmp_path, sink):
    flooded = await Bot(
        tmp_path / "flood", sink, per_hour=100, max_pending=1000, per_domain_per_day=10_000
    ).start()

    def flood():
        with smtplib.LMTP("127.0.0.1", flooded.port) as client:
            for i in range(1000):
                sender = f"user{i}@example.org"
                client.sendmail(sender, [BOT], command("help\n", frm=sender))

    try:
        await asyncio.to_thread(flood)
        assert flooded.desk.process() == 1000  # every mail queued and handled
        await flooded.sender.flush()
    finally:
        await flooded.close()
    assert len(sink.received) == 100  # [commands] per_hour
    # The rest waits for the limit to free up (deferred), none is dropped.
    deferred = flooded.store.index.conn.execute(
        "SELECT COUNT(*) FROM inbound WHERE NOT done AND deferred_until IS NOT NULL"
    ).fetchone()
    assert deferred == (900,)


async def test_digest_for_time_windows(bot, sink):
    bot.subscribe()
    await bot.ask(command("digest since 2019-05-01 until 2019-06-01\n"))
    first = sink.wait_for(1)[0]
    assert first.message["Subject"].startswith("KVM mailing list update from ")
    assert "New:  KVM/arm updates for 5.2-rc2" in reply_text(first)  # posted 2019-05-24
    from datetime import UTC, datetime

    days = (datetime.now(UTC) - datetime(2021, 6, 1, tzinfo=UTC)).days
    await bot.ask(command(f"DIGEST last {days} days\n"))
    last = reply_text(sink.wait_for(2)[1])
    assert "New:  A couple of EL2 refcounts fixes" in last  # 2021 mail only
    assert "KVM/arm updates for 5.2-rc2" not in last


async def test_smtp_instead_of_lmtp(tmp_path, sink):
    bot = Bot(tmp_path / "smtp", sink)
    server = await lmtp.serve(bot.desk, "127.0.0.1", bot.port, protocol="smtp")

    def session():
        with smtplib.SMTP("127.0.0.1", bot.port) as client:
            return client.sendmail("una@example.org", [BOT], command("help\n"))

    try:
        assert await asyncio.to_thread(session) == {}
        bot.desk.process()
        await bot.sender.flush()
    finally:
        server.close()
    assert "This is the KVM digest bot" in reply_text(sink.wait_for(1)[0])
