"""The command address is no reflector, amplifier or lever (issue 11).

Forged mail through a real LMTP session; the replies land in a real
aiosmtpd relay, and each test counts what the victim's mailbox receives,
in mails and in bytes.
"""

from __future__ import annotations

import os
import smtplib
from pathlib import Path

import aiosmtplib
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from bot.config import ConfigError, SmtpSection, from_table, load
from bot.delivery.relay import Relay
from bot.desk import addresses
from tests.conftest import archive_ids
from tests.test_commands import BOT, Bot, command, reply_text
from tests.test_commands import bot as bot

VICTIM = "victim@example.com"
FORMS = [
    "victim@example.com",
    "Victim@EXAMPLE.com",
    "victim+1@example.com",
    "victim+digest@Example.Com.",
    '"victim"@example.com',
    '"vic\\tim"@example.com',
    "Someone <victim+x@example.com>",
]
"""Ways to write the victim's mailbox that a naive per-address limit counts apart."""


def mailbox(sink, address: str = VICTIM) -> list:
    """What one mailbox received (by canonical address)."""
    key = addresses.limit_key(address)
    return [r for r in sink.received if addresses.limit_key(r.recipients[0]) == key]


def size(received: list) -> int:
    return sum(len(r.data) for r in received)


@given(
    st.text(alphabet="ab-.", max_size=140)
    | st.builds(".".join, st.lists(st.text("x", max_size=70)))
)
@example("x" * 63 + ".org")
@example("x" * 64 + ".org")
@example("kernel." + "x" * 64)
@example("a..b")
def test_an_ascii_domain_is_judged_as_the_idna_codec_judges_it(domain):
    """domain_ascii skips the codec for ASCII names; its answers are the codec's."""
    stripped = domain.strip().rstrip(".")
    try:
        expected = stripped.encode("idna").decode("ascii") if stripped else None
    except UnicodeError:
        expected = None
    assert addresses.domain_ascii(domain) == expected


async def test_canonical_addresses_are_one_mailbox():
    keys = {addresses.limit_key(addresses.from_header(f) or "") for f in FORMS}
    assert keys == {"victim@example.com"}
    assert addresses.from_header("Ünä <una@Bücher.DE>") == "una@xn--bcher-kva.de"
    # The display name never wins over the angle address a relay delivers to.
    for trick in (
        "victim@example.com <attacker@evil.com>",
        '"victim@example.com" <attacker@evil.com>',
        "=?utf-8?q?victim=40example.com?= <attacker@evil.com>",
        "victim@example.com<attacker@evil.com>",
        "(victim@example.com) <attacker@evil.com>",
    ):
        assert addresses.from_header(trick) == "attacker@evil.com", trick
    for ambiguous in ("a@example.com, b@example.com", "x <a@example.com> <b@example.org>", "<>"):
        assert addresses.from_header(ambiguous) is None


async def test_forged_digest_requests_get_one_short_confirmation(bot, sink):
    ids = archive_ids(bot.store.root)
    ranges = "".join(f"digest {ids[i][:9]}..{ids[i + 9][:9]}\n" for i in range(10))
    for form in FORMS:
        await bot.ask(command(ranges, frm=form), sender="attacker@evil.com")
    got = mailbox(sink)
    # One pending confirmation for the mailbox, however it is written.
    assert len(got) == 1 and size(got) < 4000
    assert got[0].message["Subject"].startswith("confirm ")
    # Replying to it is what gets the digest: the victim must have asked.
    await bot.ask(command(subject="Re: " + got[0].message["Subject"], frm=VICTIM))
    (_, digest) = mailbox(sink)
    assert digest.message["Subject"].startswith("KVM mailing list update from ")


async def test_subscriber_replies_have_a_daily_byte_budget(tmp_path, sink):
    b = await Bot(
        tmp_path / "budget", sink, max_reply_bytes=30_000, reply_bytes_per_day=40_000
    ).start()
    try:
        b.subscribe(VICTIM)
        ids = archive_ids(b.store.root)
        ask = "".join(f"digest {ids[i][:9]}..{ids[i + 3][:9]}\n" for i in range(10))
        for form in FORMS:
            await b.ask(command(ask, frm=form), sender="attacker@evil.com")
        got = mailbox(sink)
        assert size(got) <= 40_000 + 2_000  # the budget, give or take the last header
        waiting = b.store.index.conn.execute(
            "SELECT COUNT(*) FROM inbound WHERE NOT done AND deferred_until IS NOT NULL"
        ).fetchone()[0]
        assert waiting >= 1  # the rest is deferred to tomorrow, not dropped
    finally:
        await b.close()


async def test_a_digest_larger_than_a_reply_may_be_is_refused_with_halves(tmp_path, sink):
    b = await Bot(tmp_path / "big", sink, max_reply_bytes=2_000).start()
    try:
        b.subscribe("una@example.org")
        ids = archive_ids(b.store.root)
        await b.ask(command(f"digest {ids[2][:9]}..{ids[12][:9]}\n"))
    finally:
        await b.close()
    (reply,) = sink.wait_for(1)
    text = reply_text(reply)
    assert len(reply.data) < 3_000
    assert "KB a reply may be; ask for a smaller range" in text
    assert f"'digest {ids[2][:9]}.." in text and f"..{ids[12][:9]}'" in text


async def test_several_digests_in_one_mail_share_the_reply_size(tmp_path, sink):
    b = await Bot(tmp_path / "many", sink, max_reply_bytes=12_000).start()
    try:
        b.subscribe(VICTIM)
        ids = archive_ids(b.store.root)
        ask = "".join(f"digest {ids[i][:9]}..{ids[i + 2][:9]}\n" for i in range(10))
        await b.ask(command(ask, frm=VICTIM))
    finally:
        await b.close()
    (reply,) = mailbox(sink)
    assert len(reply.data) < 12_000
    assert "KB a reply may be. Send one digest request" in reply_text(reply)


async def test_no_echo_of_user_text(bot, sink):
    bait = "URGENT your account is locked visit http://evil.example/login now " * 6
    await bot.ask(command(bait + "\n" + bait + "\n", subject=bait[:500], frm=VICTIM))
    # Another mailbox: a victim's second mail without a command gets nothing today.
    other = "other-victim@example.com"
    await bot.ask(command(f"digest {bait}\n", subject="Re: " + bait[:300], frm=other))
    got = mailbox(sink) + mailbox(sink, other)
    assert len(got) == 2
    for r in got:
        assert "URGENT" not in r.message["Subject"]
        quoted = [line for line in reply_text(r).splitlines() if "URGENT" in line]
        assert len(quoted) <= 1 and all(len(line) <= 80 for line in quoted)
        assert sum(line.count("evil.example") for line in quoted) <= 1
    assert "evil.example" not in reply_text(got[1])  # arguments are never quoted whole


async def test_no_echo_through_threading_headers(bot, sink):
    huge = "x" * 900  # an SMTP line holds at most 1000
    await bot.ask(command("help\n", msgid=f"<{huge}@evil.example>"))
    refs = "\r\n ".join(f"<ref{i}.{'y' * 200}@example.org>" for i in range(200))
    await bot.ask(command("help\n", headers=f"References: {refs}\r\n"))
    first, second = sink.wait_for(2)
    assert "x" * 300 not in first.data.decode()
    assert first.message["In-Reply-To"] is None
    assert len(second.data) < 6_000
    assert second.message["References"].count("<ref") <= 5


async def test_subscribe_confirmations_are_not_repeated(bot, sink):
    for form in FORMS * 3:
        await bot.ask(command("subscribe\n", frm=form), sender="attacker@evil.com")
    got = mailbox(sink)
    assert len(got) == 1 and size(got) < 3000
    # A pending unsubscribe or digest request is separate, and is sent once too.
    for form in FORMS:
        await bot.ask(
            command("subscribe weekly\ndigest since 2019-05-01 until 2019-05-09\n", frm=form)
        )
    assert len(mailbox(sink)) == 2


async def test_nobody_can_unsubscribe_someone_else(bot, sink):
    bot.subscribe(VICTIM)
    conn = bot.store.index.conn
    for form in FORMS:
        await bot.ask(command("unsubscribe\n", frm=form), sender="attacker@evil.com")
    for trick in ("victim@example.com <attacker@evil.com>", '"victim@example.com" <a@evil.com>'):
        await bot.ask(
            command(frm=trick), rcpt="kvm-digest+unsubscribe@example.org", sender="a@evil.com"
        )
    await bot.ask(command(frm=VICTIM), rcpt="kvm-digest+unsubscribe-0123456789ab@example.org")
    status = conn.execute("SELECT status FROM subscribers WHERE address = ?", (VICTIM,))
    assert status.fetchone() == ("active",)
    got = mailbox(sink)
    confirmations = [r for r in got if r.message["Subject"].startswith("confirm ")]
    assert len(confirmations) == 1  # one token, however often it is asked
    assert "unsubscribe address is unknown" in reply_text(got[-1])
    # The victim's own secret address, from its digests, works at once.
    (secret,) = conn.execute(
        "SELECT unsub_secret FROM subscribers WHERE address = ?", (VICTIM,)
    ).fetchone()
    await bot.ask(command(frm=VICTIM), rcpt=f"kvm-digest+unsubscribe-{secret}@example.org")
    assert "will not receive the digest any more" in reply_text(mailbox(sink)[-1])
    status = conn.execute("SELECT status FROM subscribers WHERE address = ?", (VICTIM,))
    assert status.fetchone() == ("unsubscribed",)


async def test_a_flood_does_not_lock_out_a_real_request(tmp_path, sink):
    b = await Bot(tmp_path / "lock", sink, per_hour=5).start()
    try:
        for i in range(77):
            await b.deliver(command("help\n", frm=f"user{i}@evil.com"), sender=f"u{i}@evil.com")
        await b.deliver(command("subscribe\n"))
        assert b.desk.process() == 78
        await b.sender.flush()
        # The real request was answered in the first round, not after the flood.
        assert len(mailbox(sink, "una@example.org")) == 1
        assert len(sink.received) == 5
        conn = b.store.index.conn
        (deferred,) = conn.execute(
            "SELECT COUNT(*) FROM inbound WHERE NOT done AND deferred_until IS NOT NULL"
        ).fetchone()
        assert deferred == 73  # not dropped: answered when the hour is over
        rows = b.desk.deferred()
        assert len(rows) == 73 and all(key.endswith("@evil.com") for _, key, _ in rows)
    finally:
        await b.close()


@pytest.mark.parametrize(
    "headers",
    [
        "Auto-Submitted: nonsense-auto\r\n",
        "Auto-Submitted: auto-replied (vacation)\r\n",
        "Auto-Submitted: Auto-Generated; owner-email=x@example.org\r\n",
        "Precedence: auto_reply\r\n",
        "Precedence: JUNK\r\n",
        "X-Autoreply: yes\r\n",
        "X-Autorespond: on vacation\r\n",
        "X-Auto-Response-Suppress: All\r\n",
        "List-Unsubscribe: <mailto:leave@lists.example.org>\r\n",
        "MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status;"
        ' boundary="b"\r\n',
        'Content-Type: Multipart/Report; report-type="disposition-notification"; boundary=b\r\n',
        "Auto-Submitted: auto-notified\r\nAuto-Submitted: no\r\n",
        "Auto-Submitted:\r\n",
        "Precedence: bulk (newsletter)\r\n",
        f"X-Loop: {BOT}\r\n",
    ],
)
async def test_robots_get_no_answer(bot, sink, headers):
    await bot.ask(command("help\n", headers=headers, frm=VICTIM))
    await bot.ask(command("help\n", headers="Auto-Submitted: No (a person)\r\n"))
    assert [r.recipients for r in sink.wait_for(1)] == [["una@example.org"]]


@pytest.mark.parametrize(
    ("sender", "frm"),
    [
        ("list-bounces+victim=example.com@lists.example.org", VICTIM),
        ("una@example.org", "noreply@example.org"),
        ("una@example.org", "a@example.org, b@example.org"),
    ],
)
async def test_robot_and_ambiguous_senders_get_no_answer(bot, sink, sender, frm):
    await bot.ask(command("help\n", frm=frm), sender=sender)
    await bot.ask(command("help\n"))
    assert [r.recipients for r in sink.wait_for(1)] == [["una@example.org"]]


async def test_mailbox_copies_use_return_path_as_the_envelope_sender(bot, sink):
    # IMAP-fetched mail has no SMTP envelope: the delivering server's Return-Path is it.
    bounce = b"Return-Path: <>\r\n" + command("help\n", frm=VICTIM)
    bot.desk.queue_fetched(bounce, BOT)
    person = b"Return-Path: <una@example.org>\r\n" + command("help\n")
    bot.desk.queue_fetched(person, BOT)
    bot.desk.process()
    await bot.sender.flush()
    assert [r.recipients for r in sink.wait_for(1)] == [["una@example.org"]]


def test_clear_text_only_on_loopback():
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.53"):
        from_table({"smtp": {"host": host, "security": "none"}})
    for section in ("smtp", "imap"):
        with pytest.raises(ConfigError, match="only allowed for a loopback host"):
            from_table({section: {"host": "mail.example.org", "security": "none"}})
    with pytest.raises(ConfigError, match="never sent without TLS"):
        from_table({"smtp": {"host": "127.0.0.1", "security": "none", "user": "bot"}})


def test_errors_never_show_a_secret(tmp_path):
    with pytest.raises(ConfigError) as err:
        from_table({"smtp": {"password": 12345678}})
    assert "12345678" not in str(err.value) and "must be a string" in str(err.value)
    path = tmp_path / "bot.toml"
    path.write_text('[smtp]\nuser = "bot"\npassword = "hunter2hunter2"\n')
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600") as err:
        load(path)
    assert "hunter2" not in str(err.value)
    os.chmod(path, 0o600)
    assert load(path).smtp.secret() == "hunter2hunter2"


async def test_relay_never_logs_in_without_tls(sink):
    settings = SmtpSection(host="127.0.0.1", port=sink.port, user="bot", password="hunter2")
    # As if a config check were bypassed: the relay itself still refuses.
    object.__setattr__(settings, "security", "none")
    relay = Relay(settings)
    with pytest.raises(Exception, match="clear text"):
        await relay.send(BOT, "una@example.org", b"Subject: x\r\n\r\nx\r\n")
    await relay.close()
    assert sink.received == []


async def test_relay_logs_in_after_starttls(tmp_path):
    from tests.dovecot import make_certificates
    from tests.smtpsink import Sink

    (tmp_path / "certs").mkdir()
    make_certificates(tmp_path / "certs")
    tls = Sink(tmp_path / "certs").start()
    try:
        relay = Relay(
            SmtpSection(
                host="localhost",
                port=tls.port,
                security="starttls",
                user="bot",
                password="hunter2",
                cafile=str(tmp_path / "certs" / "ca.pem"),
            )
        )
        # Over TLS the login is tried (and this sink knows no users: 535).
        with pytest.raises(aiosmtplib.SMTPAuthenticationError):
            await relay.send(BOT, "una@example.org", b"Subject: x\r\n\r\nx\r\n")
        await relay.close()
    finally:
        tls.stop()


def test_example_config_needs_no_inline_password():
    text = (Path(__file__).resolve().parents[1] / "config" / "kvm-digest.toml").read_text()
    assert "max_reply_bytes" in text and "reply_bytes_per_day" in text


async def test_bot_refuses_foreign_rcpt_even_with_secret_shape(bot):
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        await bot.deliver(command("help\n"), rcpt="someone+unsubscribe-0123456789ab@evil.org")


def test_check_config_refuses_clear_text_to_a_remote_host(cli, tmp_path):
    path = tmp_path / "plain.toml"
    for section in ("imap", "smtp"):
        path.write_text(f'[{section}]\nhost = "mail.example.org"\nsecurity = "none"\n')
        result = cli("--config", path, "check-config")
        assert result.code == 1 and result.out == ""
        (line,) = result.err.strip().splitlines()
        assert f"[{section}] security" in line and "loopback" in line
    path.write_text("[smtp]\npassword = 12345678\n")
    result = cli("--config", path, "check-config")
    assert result.code == 1 and "12345678" not in result.err + result.out


async def test_admin_outbox_shows_deferred_command_mail(tmp_path, sink, cli):
    b = await Bot(tmp_path / "adm", sink, per_address_per_hour=3).start()
    try:
        for i in range(5):
            await b.deliver(command("help\n", frm=FORMS[i]), sender="attacker@evil.com")
            b.desk.process()
        await b.sender.flush()
    finally:
        await b.close()
    # Three answers, and one note (once a day) that the rest comes later.
    got = mailbox(sink)
    assert len(got) == 4
    assert sum("the answer comes later" in r.message["Subject"] for r in got) == 1
    out = cli("--data-dir", b.store.root, "outbox").out
    deferred = [line for line in out.splitlines() if "deferred until" in line]
    assert len(deferred) == 2 and all(VICTIM in line for line in deferred)
    # Nothing outgoing waits (the 3 replies were sent): said without calling
    # the outbox empty above the mail that waits.
    assert out.splitlines()[0] == "no outgoing mail is queued; command mail waiting to be answered:"
    assert "empty" not in out
    assert cli("--data-dir", b.store.root, "outbox", "--failed").out == "no failed mail\n"


async def test_subscriber_lookup_uses_the_canonical_address(bot, sink):
    bot.subscribe("Una@Bücher.DE")  # as `subscribers add` would store it
    ids = archive_ids(bot.store.root)
    await bot.ask(command(f"digest {ids[2][:9]}..{ids[5][:9]}\n", frm="una@XN--BCHER-KVA.de"))
    (reply,) = sink.wait_for(1)
    assert reply.recipients == ["una@xn--bcher-kva.de"]
    assert reply.message["Subject"].startswith("KVM mailing list update from ")
