"""Forged mail changes nothing it must not (issue 21, abuse round 2).

Through the real interface: a Desk behind a real LMTP session, replies and
digests caught by a real aiosmtpd relay that records what each mailbox
receives. The forgeries come in several shapes each: the rules are general.
"""

from __future__ import annotations

import asyncio
import smtplib
import socket
import time

import pytest

from bot.delivery import periodic, subscribers
from bot.digest.build import environment
from bot.store import retention
from tests.conftest import archive_ids
from tests.test_abuse import FORMS, VICTIM, mailbox
from tests.test_bounces import BounceBot, postfix_dsn
from tests.test_commands import BOT, Bot, reply_text
from tests.test_commands import bot as bot
from tests.test_commands import command as lf_command


def command(*args, **kwargs) -> bytes:
    """A command mail with CRLF line ends throughout, as SMTP carries it."""
    return lf_command(*args, **kwargs).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


DAY = 86400


# -- bounces: only proof scores --------------------------------------------


def dsn(to: str, blocks: list[tuple[str, str, str]], subject: str = "Delivery report") -> bytes:
    """An RFC 3464 report with one per-recipient block per (address, action, status)."""
    per_recipient = "".join(
        f"\nFinal-Recipient: rfc822; {a}\nAction: {action}\nStatus: {status}\n"
        for a, action, status in blocks
    )
    return f"""\
From: Mail Delivery System <MAILER-DAEMON@mx.example.net>
To: {to}
Subject: {subject}
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B"
Message-ID: <{hash((to, tuple(blocks))) & 0xFFFFFFF}.{subject[:5]}@mx.example.net>

--B
Content-Type: text/plain

A delivery report.

--B
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.net
{per_recipient}
--B--
""".replace("\n", "\r\n").encode()


@pytest.fixture
async def strict(tmp_path, sink):
    """Bounce handling that disables at the first point (threshold 1)."""
    b = await BounceBot(tmp_path / "strict", sink, threshold=1).start()
    yield b
    await b.close()


async def test_a_forged_report_to_the_plain_address_scores_nobody(strict, caplog):
    readers = [f"reader{i}@example.net" for i in range(50)]
    strict.subscribe(*readers)
    failed = [(a, "failed", "5.1.1") for a in readers]
    with caplog.at_level("DEBUG", logger="bot.delivery.bounces"):
        for day in range(5):  # one a day, as the attack did
            forged = dsn(BOT, failed, subject=f"Undelivered day {day}")
            await strict.deliver(forged, rcpt=BOT, sender="")
            # qmail's and Exim's shapes too, and with a person's sender.
            await strict.deliver(postfix_dsn(readers[day], BOT), rcpt=BOT, sender="")
            strict.desk.process()
    assert strict.conn.execute("SELECT COUNT(*) FROM bounces").fetchone() == (0,)
    assert {strict.status(a) for a in readers} == {"active"}
    assert "proves nothing; not counted" in caplog.text
    # Nobody was told anything.
    assert strict.conn.execute("SELECT COUNT(*) FROM outbox").fetchone() == (0,)


def vacation(to: str, headers: str, subject: str, text: str) -> bytes:
    return (
        f"From: Away Reader <away@example.net>\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{abs(hash(headers + subject))}@example.net>\r\n{headers}\r\n{text}\r\n"
    ).encode()


AWAY = "I am out of the office until Monday with no access to email.\r\n"
# Bounce-like words in an auto-reply's text must not make it a bounce.
BAIT = (
    "Delivery to the following recipients failed permanently:\r\n\r\n"
    "    away@example.net\r\n\r\n550 5.1.1 <away@example.net>: user unknown\r\n"
)


@pytest.mark.parametrize(
    ("headers", "subject", "text"),
    [
        ("Auto-Submitted: auto-replied\r\n", "Out of office", AWAY),  # RFC 3834
        ("Auto-Submitted: auto-replied (vacation)\r\n", "Re: KVM digest", BAIT),
        ("X-Autoreply: yes\r\n", "Away", BAIT),
        ("X-Auto-Response-Suppress: All\r\n", "Automatic reply: KVM mailing list update", AWAY),
        ("Precedence: auto_reply\r\n", "Abwesenheitsnotiz", BAIT),
        ("", "Out of Office: KVM mailing list update", BAIT),
        ("", "[Auto-Reply] I am on leave", AWAY),
    ],
)
async def test_automatic_replies_to_the_verp_address_score_nothing(
    strict, sink, caplog, headers, subject, text
):
    strict.subscribe("away@example.net")
    await strict.digest()
    (digest,) = sink.wait_for(1)
    with caplog.at_level("DEBUG", logger="bot.delivery.bounces"):
        for sender in ("", "away@example.net"):  # RFC 3834: null sender; some use their own
            raw = vacation(digest.sender, headers + f"X-Try: {sender or 'null'}\r\n", subject, text)
            await strict.deliver(raw, rcpt=digest.sender, sender=sender)
        strict.desk.process()
    assert strict.score("away@example.net") == 0
    assert strict.status("away@example.net") == "active"
    assert "not counted" in caplog.text
    assert strict.conn.execute("SELECT COUNT(*) FROM outbox WHERE kind != 'digest'").fetchone() == (
        0,
    )


@pytest.mark.parametrize(
    ("action", "status", "who"),
    [
        ("delivered", "2.0.0", "self"),
        ("relayed", "2.0.0", "self"),
        ("expanded", "2.0.0", "self"),
        ("delayed", "4.4.7", "self"),
        ("failed", "4.2.2", "self"),  # failed, but not permanently
        ("failed", "5.1.1", "other"),  # permanent, for someone else
    ],
)
async def test_reports_that_prove_no_permanent_failure_score_nothing(
    strict, sink, action, status, who
):
    strict.subscribe("reader@example.net", "other@example.net")
    await strict.digest()
    verp = {r.recipients[0]: r.sender for r in sink.wait_for(2)}["reader@example.net"]
    named = "reader@example.net" if who == "self" else "other@example.net"
    await strict.deliver(dsn(verp, [(named, action, status)]), rcpt=verp, sender="")
    strict.desk.process()
    assert strict.conn.execute("SELECT COUNT(*) FROM bounces").fetchone() == (0,)
    # The proof itself does count: a permanent failure for it, at its own address.
    await strict.deliver(
        dsn(verp, [("Reader@Example.NET", "failed", "5.1.1")]), rcpt=verp, sender=""
    )
    strict.desk.process()
    assert strict.status("reader@example.net") == "disabled"
    assert strict.status("other@example.net") == "active"


# -- every change to a subscription is confirmed -----------------------------


async def test_a_forged_topic_changes_nothing_until_its_owner_confirms(bot, sink):
    bot.subscribe(VICTIM)
    conn = bot.store.index.conn
    for form in FORMS:
        await bot.ask(command("topic s:qqqqzzzzxxxx\n", frm=form), sender="attacker@evil.com")
    assert subscribers.get(conn, VICTIM).topic == ""
    # One confirmation, however the victim is written (victim+x@ is another
    # subscriber, not subscribed: it is told so).
    (asked,) = [r for r in mailbox(sink) if r.message["Subject"].startswith("confirm ")]
    assert asked.message["Subject"].startswith("confirm ")
    assert "s:qqqqzzzzxxxx" in reply_text(asked)
    await bot.ask(command(subject="Re: " + asked.message["Subject"], frm=VICTIM))
    assert subscribers.get(conn, VICTIM).topic == "s:qqqqzzzzxxxx"
    # Back to the whole list: a change, so confirmed too.
    await bot.ask(command("topic none\n", frm=VICTIM), sender="attacker@evil.com")
    assert subscribers.get(conn, VICTIM).topic == "s:qqqqzzzzxxxx"


@pytest.mark.parametrize(
    "ask",
    [
        "subscribe weekly",
        "subscribe daily classic",
        "subscribe daily full s:nothing-ever-matches",
        "unsubscribe",
        "help\nsubscribe weekly classic",
    ],
)
async def test_no_forged_mail_changes_schedule_style_or_subscription(bot, sink, ask):
    bot.subscribe(VICTIM)
    conn = bot.store.index.conn
    before = subscribers.get(conn, VICTIM)
    for form in FORMS:
        await bot.ask(command(ask + "\n", frm=form), sender="attacker@evil.com")
    await bot.ask(
        command(frm=VICTIM), rcpt="kvm-digest+subscribe@example.org", sender="attacker@evil.com"
    )
    assert subscribers.get(conn, VICTIM) == before
    confirmations = [r for r in mailbox(sink) if r.message["Subject"].startswith("confirm ")]
    assert 1 <= len(confirmations) <= 2  # one per kind of request, never repeated


async def test_the_secret_address_rotates_when_a_subscription_is_made_again(bot, sink):
    conn = bot.store.index.conn
    bot.subscribe(VICTIM)
    old = subscribers.unsubscribe_secret(conn, VICTIM)
    goodbye = command(frm=VICTIM)
    await bot.ask(goodbye, rcpt=f"kvm-digest+unsubscribe-{old}@example.org")
    assert subscribers.get(conn, VICTIM).status == "unsubscribed"
    await bot.ask(command("subscribe\n", frm=VICTIM))
    token = mailbox(sink)[-1].message["Subject"]
    await bot.ask(command(subject="Re: " + token, frm=VICTIM))
    assert subscribers.get(conn, VICTIM).status == "active"
    new = subscribers.unsubscribe_secret(conn, VICTIM)
    assert new and new != old
    # The old address, from an old digest, no longer ends the new subscription.
    await bot.ask(command(frm=VICTIM), rcpt=f"kvm-digest+unsubscribe-{old}@example.org")
    assert subscribers.get(conn, VICTIM).status == "active"
    assert "unsubscribe address is unknown" in reply_text(mailbox(sink)[-1])
    # A change of schedule is no new subscription: the secret stays.
    with conn:
        subscribers.subscribe(conn, VICTIM, "weekly")
    assert subscribers.unsubscribe_secret(conn, VICTIM) == new


# -- a command mail runs at most once, ever ---------------------------------


async def test_an_old_command_mail_never_runs_again(bot, sink):
    conn = bot.store.index.conn
    bot.subscribe(VICTIM)
    secret = subscribers.unsubscribe_secret(conn, VICTIM)
    old = command(frm=VICTIM, msgid="<list-unsubscribe-1@example.com>")
    rcpt = f"kvm-digest+unsubscribe-{secret}@example.org"
    await bot.ask(old, rcpt=rcpt)
    assert subscribers.get(conn, VICTIM).status == "unsubscribed"
    # Subscribed again by the admin (the secret is reused by no one), and the
    # old mail comes back: by LMTP, as a mailbox copy (its server's own
    # Return-Path and Received on top), and two months later, after retention.
    with conn:
        subscribers.subscribe(conn, VICTIM)
        conn.execute("UPDATE subscribers SET unsub_secret = ? WHERE address = ?", (secret, VICTIM))
    replies = len(sink.received)
    await bot.ask(old, rcpt=rcpt)
    copy = b"Return-Path: <victim@example.com>\r\nReceived: from x by y; now\r\n" + old
    bot.desk.queue_fetched(copy, rcpt)
    bot.desk.process()
    counts = retention.purge(conn, 30, 90, now=time.time() + 60 * DAY)
    assert counts["inbound"] >= 1
    await bot.ask(old, rcpt=rcpt)
    bot.desk.queue_fetched(copy, rcpt)
    bot.desk.process()
    await bot.sender.flush()
    assert subscribers.get(conn, VICTIM).status == "active"
    assert len(sink.received) == replies  # not even a reply
    # What is remembered is small: two 16-byte hashes a mail.
    assert conn.execute("SELECT COUNT(*), MAX(length(key)) FROM seen_mail").fetchone() == (2, 16)


async def test_a_new_uidvalidity_or_imap_host_runs_no_old_command(bot, sink):
    from bot.intake.imap import Listener, Route
    from tests.dovecot import Dovecot

    conn = bot.store.index.conn
    bot.subscribe(VICTIM)
    secret = subscribers.unsubscribe_secret(conn, VICTIM)
    unsubscribe = command(frm=VICTIM, msgid="<old-unsubscribe@example.com>").replace(
        f"To: {BOT}".encode(), f"To: kvm-digest+unsubscribe-{secret}@example.org".encode()
    )
    server = Dovecot().start()

    async def listen(**changes) -> None:
        listener = Listener(
            server.imap_settings(**changes),
            bot.store.importer,
            Route("kvmarm.lists.cs.columbia.edu", "", BOT),
            on_command=lambda raw, parsed: bot.desk.queue_fetched(raw, parsed.recipients[0]),
        )
        stop = asyncio.Event()
        task = asyncio.create_task(listener.run(stop))
        await asyncio.wait_for(listener.ready.wait(), 30)
        stop.set()
        await task
        bot.desk.process()
        await bot.sender.flush()

    try:
        server.append(b"Return-Path: <victim@example.com>\r\n" + unsubscribe, command("help\n"))
        await listen()
        assert subscribers.get(conn, VICTIM).status == "unsubscribed"
        with conn:  # back, by the admin, with the same secret (the worst case)
            subscribers.subscribe(conn, VICTIM)
            conn.execute("UPDATE subscribers SET unsub_secret = ?", (secret,))
        replies = len(sink.received)
        retention.purge(conn, 30, 90, now=time.time() + 60 * DAY)
        server.set_uidvalidity(4242)
        await listen()  # everything is fetched again
        await listen(host="localhost")  # a new [imap] host: no state, all again
    finally:
        server.cleanup()
    assert subscribers.get(conn, VICTIM).status == "active"
    assert len(sink.received) == replies


async def test_two_copies_waiting_at_once_are_answered_once(bot, sink):
    raw = command("help\n", msgid="<twice@example.org>")
    await bot.deliver(raw)
    bot.desk.queue_fetched(b"Return-Path: <una@example.org>\r\n" + raw, BOT)
    assert bot.desk.waiting() == 2
    bot.desk.process()
    await bot.sender.flush()
    assert len(sink.received) == 1


# -- no echo ------------------------------------------------------------------

BAIT_WORDS = [f"URGENT-account-locked-{i}-visit-evil.example/login-now-{i:03d}" for i in range(12)]
QUERY = " ".join(BAIT_WORDS)  # a topic query of ~500 characters, every word valid


def echoed(received) -> list[str]:
    """The lines of a reply that carry the bait."""
    return [line for line in reply_text(received).splitlines() if "evil.example" in line]


@pytest.mark.parametrize(
    "ask",
    [
        f"subscribe daily {QUERY}",
        f"subscribe weekly classic {QUERY}",
        "digest {a}..{b} " + QUERY,
        "digest last 3 days " + QUERY,
        f"topic {QUERY}",
        f"topic {QUERY}\nsubscribe daily {QUERY}\ndigest {{a}}..{{b}} {QUERY}\nstatus",
    ],
)
async def test_no_reply_quotes_more_than_one_short_line(bot, sink, ask):
    assert len(QUERY) >= 500
    ids = archive_ids(bot.store.root)
    text = ask.replace("{a}", ids[2][:9]).replace("{b}", ids[5][:9])
    if ask.startswith("topic"):
        bot.subscribe(VICTIM)
    await bot.ask(command(text + "\n", frm=VICTIM), sender="attacker@evil.com")
    (reply,) = mailbox(sink)
    lines = echoed(reply)
    assert len(lines) <= 1 and all(len(line) <= 80 for line in lines), lines
    assert QUERY not in reply.data.decode(errors="replace")
    assert "evil.example" not in reply.message["Subject"]
    # Confirmed, the reply still quotes at most one line.
    if reply.message["Subject"].startswith("confirm "):
        await bot.ask(command(subject="Re: " + reply.message["Subject"], frm=VICTIM))
        lines = echoed(mailbox(sink)[-1])
        assert len(lines) <= 1 and all(len(line) <= 80 for line in lines), lines


# -- backscatter --------------------------------------------------------------

SPAM = "Dear friend, claim your prize at http://evil.example/prize today.\n"


async def test_spam_with_a_forged_sender_gets_one_short_answer_a_day(bot, sink):
    for i, form in enumerate(FORMS * 3):
        await bot.ask(command(SPAM, subject=f"prize {i}", frm=form), sender="spam@evil.com")
    (reply,) = mailbox(sink)
    assert len(reply.data) < 1000  # no help text, no amplification
    assert "no command I know" in reply_text(reply)


async def test_past_the_daily_cap_mail_is_dropped_not_deferred(bot, sink):
    for i in range(30):
        form = FORMS[i % len(FORMS)]
        await bot.deliver(command("help\n", frm=form), sender="attacker@evil.com")
    bot.desk.process()
    await bot.sender.flush()
    assert len(mailbox(sink)) == 10  # [commands] per_address_per_day, as Mailman
    conn = bot.store.index.conn
    assert conn.execute("SELECT COUNT(*) FROM inbound WHERE NOT done").fetchone() == (0,)
    assert conn.execute("SELECT COUNT(*) FROM inbound WHERE outcome = 'dropped'").fetchone() == (
        20,
    )


async def test_one_domain_gets_at_most_its_daily_cap(bot, sink):
    for i in range(40):
        victim = f"user{i}@victim.example"
        await bot.deliver(command("help\n", frm=victim), sender="attacker@evil.com")
        await bot.deliver(command(SPAM, frm=victim), sender="attacker@evil.com")
    await bot.deliver(command("help\n"))  # someone elsewhere is still answered
    bot.desk.process()
    await bot.sender.flush()
    at_victim = [r for r in sink.received if r.recipients[0].endswith("@victim.example")]
    assert len(at_victim) == 20  # [commands] per_domain_per_day
    assert len(mailbox(sink, "una@example.org")) == 1


# -- command mail is bounded in bytes -----------------------------------------


def fat(i: int, size: int) -> bytes:
    """A mail nobody answers (bulk), of about `size` bytes."""
    body = ("x" * 69 + "\n") * (size // 70)
    return command(body, headers="Precedence: bulk\r\n", msgid=f"<fat{i}@example.org>")


async def test_command_mail_is_bounded_per_sender_and_kept_small(tmp_path, sink):
    b = await Bot(tmp_path / "bytes", sink, max_size=50_000, sender_bytes_per_day=130_000).start()
    try:
        refused = []
        for i in range(6):
            try:
                await b.deliver(fat(i, 40_000), sender="flood@evil.com")
            except smtplib.SMTPSenderRefused as err:
                refused.append(err.smtp_code)
            b.desk.process()
        await b.deliver(fat(99, 40_000), sender="someone@example.org")  # others still get in
        b.desk.process()
    finally:
        await b.close()
    assert refused == [452] * 3
    conn = b.store.index.conn
    rows = conn.execute("SELECT sender, size, length(raw), message_id FROM inbound").fetchall()
    assert len(rows) == 4
    # Once handled, only what the limits need is kept: no raw mail.
    assert {length for _, _, length, _ in rows} == {0}
    assert all(size > 39_000 and mid.startswith("fat") for _, size, _, mid in rows)


async def test_too_many_bytes_waiting_in_all_get_452(tmp_path, sink):
    b = await Bot(tmp_path / "total", sink, max_size=50_000, max_pending_bytes=100_000).start()
    try:
        await b.deliver(fat(1, 45_000), sender="a@example.org")
        await b.deliver(fat(2, 45_000), sender="b@example.org")
        with pytest.raises(smtplib.SMTPSenderRefused) as err:
            await b.deliver(fat(3, 45_000), sender="c@example.org")
        assert err.value.smtp_code == 452
        b.desk.process()  # handled: room again
        await b.deliver(fat(3, 45_000), sender="c@example.org")
    finally:
        await b.close()


# -- RFC 2033: one reply per accepted recipient after DATA ---------------------


class RawLMTP:
    """An LMTP client on a plain socket that counts the replies it reads."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buffer = b""
        self.reply()  # the greeting

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def reply(self) -> bytes:
        """One (possibly multi-line) reply; its last line."""
        while (line := self.line())[3:4] == b"-":
            pass
        return line

    def say(self, text: bytes) -> bytes:
        self.sock.sendall(text + b"\r\n")
        return self.reply()

    def data(self, body: bytes, accepted: int) -> list[bytes]:
        assert self.say(b"DATA").startswith(b"354")
        self.sock.sendall(body + b"\r\n.\r\n")
        replies = [self.reply() for _ in range(accepted)]
        # Nothing more comes: a NOOP is answered next, not a stray reply.
        assert self.say(b"NOOP").startswith(b"250")
        return replies

    def close(self) -> None:
        self.sock.close()


async def lmtp_session(port: int, rcpts: list[str], body: bytes) -> list[bytes]:
    def run() -> list[bytes]:
        c = RawLMTP(port)
        try:
            assert c.say(b"LHLO test.example").startswith(b"250")
            assert c.say(b"MAIL FROM:<una@example.org>").startswith(b"250")
            accepted = sum(c.say(f"RCPT TO:<{r}>".encode()).startswith(b"250") for r in rcpts)
            return c.data(body, accepted)
        finally:
            c.close()

    return await asyncio.to_thread(run)


TWO = [BOT, "kvm-digest+help@example.org"]


async def test_lmtp_answers_each_recipient_on_every_outcome(tmp_path, sink):
    b = await Bot(tmp_path / "lmtp", sink, max_size=5_000, max_waiting_per_address=1).start()
    try:
        ok = command("help\n")
        assert [r[:3] for r in await lmtp_session(b.port, TWO, ok)] == [b"250", b"250"]
        # Too much data (aiosmtpd's own 552), a line too long (its 500).
        big = command(("z" * 70 + "\n") * 200)
        assert [r[:3] for r in await lmtp_session(b.port, TWO, big)] == [b"552", b"552"]
        long = command("w" * 2000 + "\n")
        assert [r[:3] for r in await lmtp_session(b.port, TWO, long)] == [b"500", b"500"]
        # The mailbox has too much waiting (two copies are stored as one).
        again = command("status\n")
        replies = await lmtp_session(b.port, TWO, again)
        assert [r[:3] for r in replies] == [b"451", b"451"]
        # One recipient refused at RCPT: one reply for the one accepted.
        one = await lmtp_session(b.port, [BOT, "x@elsewhere.example"], command("help\n"))
        assert len(one) == 1
    finally:
        await b.close()


async def test_lmtp_answers_each_recipient_when_storing_fails(tmp_path, sink, monkeypatch):
    b = await Bot(tmp_path / "broken", sink).start()

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(b.desk, "queue", broken)
    try:
        replies = await lmtp_session(b.port, TWO, command("help\n"))
    finally:
        await b.close()
    assert [r[:3] for r in replies] == [b"451", b"451"]


# -- control characters never reach a digest -----------------------------------

NASTY = "\x1b]52;c;ZXZpbCBjbGlwYm9hcmQ=\x07\x1b[2J\x1b[1;1H\x08\x08\x9b31m\x07"


async def test_control_characters_never_reach_a_digest(tmp_path, sink, cli):
    from tests.mailfactory import mail

    b = await Bot(tmp_path / "ctl", sink).start()
    try:
        cover = mail(
            "[PATCH 0/1] KVM: tidy" + "\u009b",
            "ctl-0@example.org",
            frm="=?utf-8?q?Mal=1B[31mory?= <mallory@example.org>",
            body=f"A cover letter.{NASTY}\n\nMallory (1):\n  KVM: tidy\n",
            minutes=10_000,
        )
        patch = mail(
            "[PATCH 1/1] KVM: tidy",
            "ctl-1@example.org",
            frm="Mallory <mallory@example.org>",
            body=f"Tidy it.{NASTY}\r\nTab\tstays.\n\nSigned-off-by: M <m@example.org>\n---\n"
            " a.c | 1 +\n\ndiff --git a/a.c b/a.c\n--- a/a.c\n+++ b/a.c\n@@ -1 +1,2 @@\n x\n+y\n",
            irt="ctl-0@example.org",
            refs=["ctl-0@example.org"],
            minutes=10_001,
        )
        b.store.add(cover, patch)
        ids = archive_ids(b.store.root)
        b.subscribe()
        with b.store.index.conn:
            periodic.ensure(b.store.index.conn, "daily")
            periodic.move(b.store.index.conn, "daily", len(ids) - 2)
        periodic.run(b.store.index.conn, b.config, b.outbox, environment(), "daily")
        await b.ask(command(f"digest {ids[-3][:9]}..{ids[-1][:9]}\n"))
    finally:
        await b.close()
    printed = cli("--data-dir", b.store.root, "digest", "--range", f"{ids[-3]}..{ids[-1]}").out
    mailed = [reply_text(r) for r in sink.wait_for(2)]
    for text in [printed, *mailed]:
        assert "Tidy it." in text and "A cover letter." in text
        bad = {c for c in text if (ord(c) < 32 and c not in "\t\n") or 0x7F <= ord(c) <= 0x9F}
        assert not bad, sorted(map(hex, map(ord, bad)))
        assert "^[]52;c;" in text  # shown, not obeyed
        assert "Tab\tstays." in text
