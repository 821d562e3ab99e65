"""Every kind of mail the bot sends, read from the raw bytes a relay received.

Digests, replies, confirmations, the welcome, notices (deferral, bounces,
one-click goodbye): each is parsed with tests/rfcmail.py, our own reading
of RFC 5322 and RFC 2369, never with the library that wrote it.
"""

from __future__ import annotations

from email.utils import make_msgid

import pytest

from bot.delivery import periodic, subscribers
from bot.delivery.bounces import Bounces
from bot.delivery.mail import Identity, compose
from bot.digest.build import environment
from bot.web import unsubscribe
from tests import rfcmail
from tests.conftest import archive_ids
from tests.mailfactory import PATCH_BODY, mail
from tests.test_commands import BOT, Bot, command

WEB = "https://digest.example.org"
VGIC_PATCH = PATCH_BODY.replace("virt/kvm/thing.c", "arch/arm64/kvm/vgic/vgic.c")
LONG_TOPIC = 'dfn:arch/arm64/kvm/vgic/ OR s:"vgic v5" OR s:its OR dfn:include/kvm/arm_vgic.h'


@pytest.fixture
async def web_bot(tmp_path, sink):
    b = Bot(tmp_path / "var", sink, web={"url": WEB}, owner="kvm-digest-owner@example.org")
    await b.start()
    yield b
    await b.close()


def all_mail(sink) -> list[bytes]:
    return [r.data for r in sink.received]


async def test_periodic_digests_carry_clickable_list_headers(web_bot, sink):
    bot = web_bot
    conn = bot.store.index.conn
    with conn:
        periodic.ensure(conn, "daily")
        subscribers.subscribe(conn, "una@example.org", "daily")
        subscribers.subscribe(conn, "topic@example.org", "daily", LONG_TOPIC)
    bot.store.add(
        mail("[PATCH] KVM: arm64: vgic: a change", "p1@x", body=VGIC_PATCH),
        mail("[PATCH] KVM: x86: another change", "p2@x", minutes=1),
    )
    result = periodic.run(conn, bot.config, bot.outbox, environment(), "daily")
    assert result.recipients == 2
    await bot.sender.flush()
    got = {r.recipients[0]: r.data for r in sink.wait_for(2)}
    for reader, raw in got.items():
        rfcmail.check(raw)
        secret = subscribers.unsubscribe_secret(conn, reader)
        assert rfcmail.urls(raw, "List-Unsubscribe") == [
            f"{WEB}/u/{secret}",
            f"mailto:kvm-digest+unsubscribe-{secret}@example.org?subject=unsubscribe",
        ]
        post = rfcmail.field(raw, "List-Unsubscribe-Post")
        assert post is not None
        assert post.lines == ["List-Unsubscribe-Post: List-Unsubscribe=One-Click"]
        assert rfcmail.urls(raw, "List-Help") == ["mailto:kvm-digest+help@example.org?subject=help"]
        assert rfcmail.urls(raw, "List-Archive") == ["https://lore.kernel.org/kvm"]
        assert rfcmail.field(raw, "List-Id").value == "KVM digest <kvm-digest.example.org>"
        subject = rfcmail.field(raw, "Subject")
        assert subject.lines[0].startswith("Subject: KVM mailing list update from ")
        # The footer: the reader's own link, how to change, the list, a person.
        text = rfcmail.body_text(raw)
        footer = text[text.rindex("\n-- \n") + 5 :].splitlines()
        assert 1 <= len(footer) <= 4
        assert footer[0] == f"Unsubscribe: {WEB}/u/{secret}"
        assert "kvm@vger.kernel.org" in footer[2]
        assert footer[3] == "Questions for a person: kvm-digest-owner@example.org"
        assert all(len(line) < 80 for line in footer)
    # The long topic makes a subject longer than a line: folded inside its
    # text only, and unfolded it is the digest's subject.
    long = rfcmail.field(got["topic@example.org"], "Subject")
    assert len(long.lines) > 1
    assert long.value.endswith(f" [{LONG_TOPIC}]")
    assert all(len(line) <= 78 for line in long.lines)


async def test_quoted_printable_digest_keeps_a_readable_footer(web_bot, sink):
    bot = web_bot
    conn = bot.store.index.conn
    with conn:
        periodic.ensure(conn, "daily")
        subscribers.subscribe(conn, "una@example.org", "daily")
    bot.store.add(mail("[PATCH] one long line", "q@x", body="x" * 1500 + "\n\n" + PATCH_BODY))
    periodic.run(conn, bot.config, bot.outbox, environment(), "daily")
    await bot.sender.flush()
    (raw,) = all_mail(sink)
    rfcmail.check(raw)
    assert rfcmail.field(raw, "Content-Transfer-Encoding").value == "quoted-printable"
    text = rfcmail.body_text(raw)
    assert "x" * 1500 in text
    assert "\n\n-- \nUnsubscribe: https://digest.example.org/u/" in text


async def test_every_reply_and_notice_is_well_formed(web_bot, sink):
    bot = web_bot
    conn = bot.store.index.conn
    long_id = "<" + "a" * 200 + "@example.org>"
    refs = " ".join(f"<r{i}.{'b' * 60}@example.org>" for i in range(5)) + " " + long_id
    await bot.ask(command("help\n", headers=f"References: {refs}\r\nIn-Reply-To: {long_id}\r\n"))
    await bot.ask(command("subscribe weekly classic\n"))
    token = rfcmail.field(sink.wait_for(2)[1].data, "Subject").value.split()[1]
    await bot.ask(command(f"confirm {token}\n"))  # the welcome
    await bot.ask(command("status\nfrobnicate\n"))
    ids = archive_ids(bot.store.root)
    await bot.ask(command(f"digest {ids[2][:9]}..{ids[8][:9]}\n"))  # a digest as a reply
    await bot.ask(command("digest 1234567..abcdef0\n"))  # an error
    # A notice: bounces disabled the subscription.
    with conn:
        Bounces(conn, bot.config.bounces, bot.outbox)._tell("una@example.org", 5)
    # A notice: the one-click goodbye.
    secret = subscribers.unsubscribe_secret(conn, "una@example.org")
    assert unsubscribe.unsubscribe(conn, bot.me, bot.outbox, secret).status == 200
    await bot.sender.flush()
    received = sink.wait_for(8)
    for r in received:
        rfcmail.check(r.data)
        assert rfcmail.field(r.data, "Auto-Submitted").value in ("auto-replied", "auto-generated")
    help_reply = received[0].data
    # References keep every id whole, folded only between ids.
    references = rfcmail.field(help_reply, "References")
    # (the last five the asker gave, and the mail itself)
    assert references.value.split()[:-1] == refs.split()[-5:]
    assert any(len(line) > 78 and "a" * 200 in line for line in references.lines)
    welcome = rfcmail.body_text(received[2].data)
    assert "classic" in welcome and "kvm-digest-owner@example.org" in welcome
    digest = received[4].data
    assert rfcmail.field(digest, "Subject").value.startswith("KVM mailing list update from ")
    assert rfcmail.body_text(digest).startswith("From ")  # not "> digest ..."
    goodbye = received[-1].data
    assert rfcmail.field(goodbye, "Subject").value.startswith("You are unsubscribed")


def test_a_non_ascii_title_is_encoded_in_the_subject_and_plain_in_list_id():
    me = Identity(BOT, list_title="KVM Ünïcode")
    subject = "Re: KVM Ünïcode digest " + "w " * 40
    raw = compose(me, "a@example.org", subject, "text\n", make_msgid())
    rfcmail.check(raw)
    assert rfcmail.field(raw, "Subject").lines[0].startswith("Subject: =?utf-8?")
    from bot.delivery.mail import list_id_field, prepare_digest

    prepared = prepare_digest(me, "KVM Ünïcode mailing list update from a to b", "x\n")
    head = prepared.head + b"\r\n"
    rfcmail.check(head)
    assert rfcmail.field(head, "List-Id").value == "KVM Unicode digest <kvm-digest.example.org>"
    assert list_id_field(me).isascii()


def test_a_readers_fields_are_what_the_email_package_writes():
    """The fan-out writes To, Date and Message-ID itself for plain addresses:
    byte for byte what the email package makes of them, for every shape of
    address an addr-spec allows (and long or odd ones go through it)."""
    from email.message import EmailMessage
    from email.policy import SMTP
    from email.utils import formatdate, make_msgid

    from bot.delivery.mail import reader_fields

    date = formatdate(usegmt=True)
    ids = [make_msgid(domain="digest.example.org"), "<a.b@x>", "<" + "l" * 70 + "@x>"]
    locals_ = ["reader1", "a+b", "o'neil", "x!#$%&*/=?^_`{|}~-y", "d.o.t", "q" * 64, "Big.Case"]
    domains = ["example.org", "sub.example-1.org", "e" * 60 + ".org"]
    for local in locals_:
        for domain in domains:
            for mid in ids:
                to = f"{local}@{domain}"
                own = EmailMessage(policy=SMTP)
                own["To"], own["Date"], own["Message-ID"] = to, date, mid
                data = own.as_bytes()
                assert reader_fields(to, False, date, mid) == data[: data.index(b"\r\n\r\n") + 2]
