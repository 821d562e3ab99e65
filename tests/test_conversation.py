"""Writing to the bot as people write: the mail clients' real shapes, over LMTP.

Each mail is shaped as Gmail, Outlook, Thunderbird, mutt, Apple Mail or a
webmail sends it (top-posted above the quoted original, bottom-posted
below it, Outlook's unquoted copy, HTML only, multipart/alternative, a
greeting, a signature, "Sent from my iPhone"); the reply the relay gets is
what the person reads. Replies to a digest get the list and the series'
link; the welcome and status say how the subscription works; a deferral
is said once a day.
"""

from __future__ import annotations

import mailbox
import re

import pytest

from bot.delivery import periodic, subscribers
from bot.digest.build import environment
from tests import rfcmail
from tests.conftest import archive_ids
from tests.mailfactory import DATA
from tests.test_commands import BOT, Bot, command, reply_text

OWNER = "kvm-digest-owner@example.org"
GICV5 = "[PATCH 0/2] Enable GICv5 Legacy CPUIF trapping & fix TDIR cap test"
VFIO = "[PATCH] vfio/pci: Skip hot reset on Link-Down"


@pytest.fixture
async def bot(tmp_path, sink):
    b = await Bot(tmp_path / "var", sink, owner=OWNER).start()
    yield b
    await b.close()


def raw_mail(
    body: str,
    subject: str = "",
    *,
    content_type: str = "text/plain; charset=utf-8",
    headers: str = "",
    frm: str = "Una User <una@example.org>",
) -> bytes:
    text = (
        f"From: {frm}\r\nTo: {BOT}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{abs(hash((body, subject, headers)))}@mail.example.org>\r\n"
        f"MIME-Version: 1.0\r\nContent-Type: {content_type}\r\n{headers}\r\n"
    )
    return (text + body.replace("\n", "\r\n")).encode()


def alternative(plain: str, html: str, subject: str = "", boundary: str = "000b0c") -> bytes:
    """multipart/alternative as Gmail and webmail send it (quoted-printable parts)."""
    import quopri

    def part(kind: str, text: str) -> str:
        encoded = quopri.encodestring(text.encode()).decode()
        return (
            f'--{boundary}\nContent-Type: {kind}; charset="UTF-8"\n'
            f"Content-Transfer-Encoding: quoted-printable\n\n{encoded}\n"
        )

    body = part("text/plain", plain) + part("text/html", html) + f"--{boundary}--\n"
    return raw_mail(body, subject, content_type=f'multipart/alternative; boundary="{boundary}"')


def last_reply(sink, n: int) -> str:
    return reply_text(sink.wait_for(n)[n - 1])


QUOTED_HELP = "\n".join(
    [
        "This is the KVM digest bot at kvm-digest@example.org.",
        "",
        "Examples:",
        "",
        "    subscribe",
        "    unsubscribe",
        "    topic none",
    ]
)


# Each client's shape of "please do <command>", answering an earlier help mail.
SHAPES = {
    "gmail top-posted": (
        "status\n\nOn Mon, Mar 1, 2021 at 10:00 AM KVM digest <\nkvm-digest@example.org> wrote:\n\n"
        + "".join(f"> {line}\n" for line in QUOTED_HELP.splitlines())
    ),
    "outlook top-posted, unquoted original": (
        "status\n\nBest regards,\nUna\n\n________________________________\n"
        "From: KVM digest <kvm-digest@example.org>\nSent: Monday, March 1, 2021 10:00 AM\n"
        "To: Una User <una@example.org>\nSubject: Re: help\n\n" + QUOTED_HELP + "\n"
    ),
    "outlook, original message separator": (
        "Status\n\n-----Original Message-----\nFrom: KVM digest <kvm-digest@example.org>\n"
        "Sent: Monday, March 1, 2021 10:00 AM\n\n" + QUOTED_HELP + "\n"
    ),
    "thunderbird bottom-posted": (
        "On 3/1/21 10:00, KVM digest wrote:\n"
        + "".join(f"> {line}\n" for line in QUOTED_HELP.splitlines())
        + "\nstatus\n\n-- \nUna User\nunsubscribe\n"
    ),
    "mutt inline": (
        "* KVM digest <kvm-digest@example.org> [2021-03-01 10:00]:\n> This is the KVM digest bot\n"
        "> \n>     unsubscribe\n\nstatus\n\n> Examples:\n\nthanks\n"
    ),
    "apple mail, sent from my iphone": (
        "Status\n\nSent from my iPhone\n\n> On 1 Mar 2021, at 10:00, KVM digest "
        "<kvm-digest@example.org> wrote:\n> \n>     unsubscribe\n"
    ),
    "a greeting and a sign-off": "Hi,\n\nstatus please\n\nThanks!\nUna\n",
    "a sentence, then the command": "Hello bot, I would like to know:\n\nstatus\n",
}


@pytest.mark.parametrize("shape", SHAPES)
async def test_everyday_shapes_run_the_command_and_nothing_quoted(bot, sink, shape):
    bot.subscribe()
    await bot.ask(raw_mail(SHAPES[shape], "Re: help"))
    text = last_reply(sink, 1)
    assert "una@example.org: active, daily digest." in text
    assert "No command found" not in text and "Error" not in text
    # The quoted or copied 'unsubscribe' and 'topic none' did not run.
    assert subscribers.get(bot.store.index.conn, "una@example.org").status == "active"
    assert "> unsubscribe" not in text and "> topic" not in text


async def test_gmail_multipart_alternative_reads_the_plain_part(bot, sink):
    plain = "Hi,\n\nsubscribe weekly brief\n\nThanks,\nUna\n"
    html = '<div dir="ltr">Hi,<div><br></div><div>subscribe daily</div></div>'
    await bot.ask(alternative(plain, html))
    assert "weekly brief" in " ".join(last_reply(sink, 1).split())


async def test_html_only_webmail(bot, sink):
    html = (
        "<html><head><style>p{margin:0}</style></head><body>"
        '<div dir="ltr">Hi,<div><br></div><div>subscribe weekly</div><div><br></div>'
        "<div>Thanks &amp; regards,</div><div>Una</div>"
        '<blockquote class="gmail_quote"><div>unsubscribe</div></blockquote></div></body></html>'
    )
    await bot.ask(raw_mail(html, "", content_type="text/html; charset=utf-8"))
    reply = sink.wait_for(1)[0]
    assert rfcmail.field(reply.data, "Subject").value.startswith("confirm ")
    assert "to send the weekly KVM digest" in " ".join(reply_text(reply).split())


async def test_greeting_before_a_command_asks_for_the_subscription(bot, sink):
    await bot.ask(raw_mail("Hi,\n\nsubscribe weekly\n\nThanks,\nBob\n", ""))
    reply = sink.wait_for(1)[0]
    assert rfcmail.field(reply.data, "Subject").value.startswith("confirm ")
    assert "No command found" not in reply_text(reply)


async def test_too_much_prose_before_a_command_is_not_understood(bot, sink):
    prose = "".join(f"Line {i} of a long story.\n" for i in range(12))
    await bot.ask(raw_mail(prose + "subscribe\n", "hello"))
    text = last_reply(sink, 1)
    # The day's one short answer to mail without a command: no help text.
    assert "Your mail holds no command I know." in text
    assert "This is the KVM digest bot" not in text
    assert subscribers.pending(bot.store.index.conn, "una@example.org", "subscribe") is False


async def test_polite_words_are_not_arguments(bot, sink):
    bot.subscribe()
    await bot.ask(raw_mail("Please unsubscribe me.\n\nCheers\n", "Re: your digest"))
    reply = sink.wait_for(1)[0]
    assert rfcmail.field(reply.data, "Subject").value.startswith("confirm ")


async def test_a_bare_command_subject_gives_way_to_the_body(bot, sink):
    bot.subscribe()
    await bot.ask(raw_mail("topic dfn:arch/arm64/kvm/vgic/\n", "topic"))
    text = last_reply(sink, 1)
    assert "Error" not in text
    # The body's topic is the request (a change, so confirmed first).
    assert "only the series of\nthe KVM digest matching" in text
    assert "dfn:arch/arm64/kvm/vgic/" in text
    # ...and counts when the body has no command.
    await bot.ask(raw_mail("Hi, what is my subscription?\n", "Status"))
    assert "una@example.org: active, daily digest." in last_reply(sink, 2)


async def test_welcome_and_status_say_when_style_topic_and_how(bot, sink):
    await bot.ask(command("subscribe weekly classic\n"))
    token = sink.wait_for(1)[0].message["Subject"].split()[1]
    await bot.ask(raw_mail(f"confirm {token}\n", "Re: your request"))
    welcome = last_reply(sink, 2)
    assert "\nuna@example.org now receives the weekly digest.\n" in welcome
    assert "every Monday at 06:00 UTC (cron '0 6 * * mon')" in welcome
    assert "Style:  classic:" in welcome
    assert "Topic:  the whole list." in welcome
    assert "'topic s:vgic' or 'topic none'" in welcome
    assert "send 'unsubscribe'" in welcome
    assert "The list archive: https://lore.kernel.org/kvm" in welcome
    assert "kvm@vger.kernel.org" in welcome and OWNER in welcome
    assert all(len(line) < 80 for line in welcome.splitlines())
    await bot.ask(command("status\n"))
    status = last_reply(sink, 3)
    assert "Style: classic." in status and "Topic: none, the whole list." in status


async def test_brief_subscribers_get_the_digest_without_commit_messages(bot, sink):
    conn = bot.store.index.conn
    with conn:
        periodic.ensure(conn, "daily")
    await bot.ask(command("subscribe daily brief\n"))
    token = sink.wait_for(1)[0].message["Subject"].split()[1]
    await bot.ask(command(f"confirm {token}\n"))
    assert "Style:  brief:" in last_reply(sink, 2)
    with conn:
        subscribers.subscribe(conn, "full@example.org", "daily")
    later = [m.as_bytes() for m in mailbox.mbox(DATA / "reference" / "000.mbox")]
    bot.store.importer.run([(str(i), m) for i, m in enumerate(later)], "later")
    periodic.run(conn, bot.config, bot.outbox, environment(), "daily")
    await bot.sender.flush()
    got = {r.recipients[0]: reply_text(r) for r in sink.wait_for(4)[2:]}
    brief, full = got["una@example.org"], got["full@example.org"]
    assert "===== Patch Commit Messages ====" in full
    assert "===== Patch Commit Messages ====" not in brief and "New:  " not in brief
    # Everything else is the full digest's, line for line.
    cut = full.index("===== Patch Commit Messages ====")
    assert brief.split("\n-- \n")[0] == full[:cut].rstrip("\n") + "\n"


async def test_a_confirmed_digest_is_the_digest_alone(bot, sink):
    ids = archive_ids(bot.store.root)
    await bot.ask(command(f"digest {ids[2][:9]}..{ids[6][:9]}\n"))  # not a subscriber
    confirmation = sink.wait_for(1)[0]
    token = confirmation.message["Subject"].split()[1]
    await bot.ask(raw_mail("Yes please\n\n> Someone, probably you\n", f"Re: confirm {token}"))
    digest = sink.wait_for(2)[1]
    text = reply_text(digest)
    assert text.startswith(f"From {ids[2][:9]} to {ids[6][:9]}\n")
    assert "> confirm" not in text
    assert digest.message["Subject"].startswith("KVM mailing list update from ")
    footer = text[text.rindex("\n-- \n") :]
    assert "Subscribe: mail kvm-digest+subscribe@example.org" in footer
    assert f"Questions for a person: {OWNER}" in footer


async def test_every_reply_names_a_person(bot, sink):
    await bot.ask(command("help\n"))
    await bot.ask(command("frobnicate\n"))
    for r in sink.wait_for(2):
        assert reply_text(r).rstrip().endswith(f"questions for a person: {OWNER}")


async def periodic_digest(bot: Bot, sink) -> tuple[str, str]:
    """A real daily digest mailed to una: (its Message-ID, its text)."""
    conn = bot.store.index.conn
    with conn:
        periodic.ensure(conn, "daily")
    bot.subscribe()
    later = [m.as_bytes() for m in mailbox.mbox(DATA / "reference" / "000.mbox")]
    bot.store.importer.run([(str(i), m) for i, m in enumerate(later)], "later")
    periodic.run(conn, bot.config, bot.outbox, environment(), "daily")
    await bot.sender.flush()
    (digest,) = sink.wait_for(1)
    return digest.message["Message-ID"], reply_text(digest)


def quoted(text: str) -> str:
    return "".join(f"> {line}\n" if line else ">\n" for line in text.splitlines())


def lore(bot: Bot, subject: str) -> str:
    (mid,) = bot.store.index.conn.execute(
        "SELECT message_id FROM messages WHERE subject = ?", (subject,)
    ).fetchone()
    return f"https://lore.kernel.org/kvm/{mid}/"


async def test_an_inline_reply_to_a_digest_points_to_the_list_and_the_series(bot, sink):
    message_id, text = await periodic_digest(bot, sink)
    head, _, tail = text.partition(GICV5 + "\n")
    body = (
        "On Tue, Dec 2, 2025 at 06:00, KVM digest wrote:\n"
        + quoted(head + GICV5)
        + "\nIs the vgic-v4 change safe on GICv4.1?\n\n"
        + quoted(tail[:400])
    )
    await bot.ask(
        raw_mail(
            body,
            "Re: " + re.search(r"KVM mailing list update from \S+ to \S+", text)[0],
            headers=f"In-Reply-To: {message_id}\r\nReferences: {message_id}\r\n",
        )
    )
    answer = last_reply(sink, 2)
    assert "No command found" not in answer and "This is the KVM digest bot" not in answer
    assert "kvm@vger.kernel.org" in answer
    assert f"    {GICV5}\n    {lore(bot, GICV5)}\n" in answer
    assert len(answer.splitlines()) < 20
    reply = sink.wait_for(2)[1]
    assert reply.message["In-Reply-To"].startswith("<")
    assert reply.message["Subject"].startswith("Re: KVM mailing list update from ")


async def test_a_top_posted_question_is_matched_by_its_words(bot, sink):
    message_id, text = await periodic_digest(bot, sink)
    body = (
        "Does the Link-Down hot reset skip also cover the FLR path?\n\nThanks,\nAnn\n\n"
        "________________________________\nFrom: KVM digest <kvm-digest@example.org>\n"
        "Sent: Tuesday, December 2, 2025 6:00 AM\nSubject: KVM mailing list update\n\n" + text
    )
    subject = "RE: " + re.search(r"KVM mailing list update from \S+ to \S+", text)[0]
    await bot.ask(raw_mail(body, subject, headers=f"References: {message_id}\r\n"))
    answer = last_reply(sink, 2)
    assert f"    {VFIO}\n    {lore(bot, VFIO)}\n" in answer


async def test_a_reply_that_names_no_series_gets_the_digest_range(bot, sink):
    _, text = await periodic_digest(bot, sink)
    start, end = re.search(r"update from (\S+) to (\S+)", text).groups()
    # Found by its subject alone (no threading headers), as a forward would be.
    await bot.ask(
        raw_mail("Thanks for this!\n", f"Re: KVM mailing list update from {start} to {end}")
    )
    answer = last_reply(sink, 2)
    assert f"covered the archive from {start} to {end}" in answer
    assert re.search(r"https://lore\.kernel\.org/kvm/\?q=d:\d{8}\.\.\d{8}\n", answer)
    assert "This is the KVM digest bot" not in answer


async def test_a_command_in_a_reply_to_a_digest_still_runs(bot, sink):
    message_id, text = await periodic_digest(bot, sink)
    await bot.ask(
        raw_mail(
            "unsubscribe\n\n" + quoted(text[:300]),
            "Re: x",
            headers=f"In-Reply-To: {message_id}\r\n",
        )
    )
    reply = sink.wait_for(2)[1]
    assert rfcmail.field(reply.data, "Subject").value.startswith("confirm ")


async def test_a_deferral_is_said_once_a_day(tmp_path, sink):
    bot = await Bot(tmp_path / "limited", sink, per_address_per_hour=2).start()
    conn = bot.store.index.conn
    try:
        for _ in range(5):
            await bot.deliver(command("help\n"))
            bot.desk.process()
        await bot.sender.flush()
        got = sink.wait_for(3)
        notes = [r for r in got if "answer comes later" in r.message["Subject"]]
        assert len(got) == 3 and len(notes) == 1
        note = reply_text(notes[0])
        (due,) = conn.execute("SELECT MIN(deferred_until) FROM inbound WHERE NOT done").fetchone()
        import time

        assert time.strftime("%H:%M UTC on %Y-%m-%d", time.gmtime(due)) in note
        assert "at most once a day" in note
        rfcmail.check(notes[0].data)
        # An hour later the limit allows two more; the third waits again,
        # and still no second note that day.
        with conn:
            conn.execute("UPDATE inbound SET answered = answered - 3700, deferred_until = 0")
        bot.desk.process()
        for _ in range(2):
            await bot.deliver(command("help\n"))
            bot.desk.process()
        await bot.sender.flush()
        assert sum("answer comes later" in r.message["Subject"] for r in sink.received) == 1
        # The next day, it is said again.
        with conn:
            conn.execute("UPDATE notices SET sent = sent - 86400")
            conn.execute("UPDATE inbound SET answered = answered - 3700, deferred_until = 0")
        bot.desk.process()
        for _ in range(3):
            await bot.deliver(command("help\n"))
            bot.desk.process()
        await bot.sender.flush()
        assert sum("answer comes later" in r.message["Subject"] for r in sink.received) == 2
    finally:
        await bot.close()


@pytest.mark.parametrize(
    "question",
    [
        "Status of the GICv5 series? Is it queued?",
        "Digest looks great, but is the GICv5 trapping safe?",
        "Help, I do not understand the GICv5 TDIR change.",
    ],
)
async def test_a_sentence_that_starts_with_a_command_word_is_a_question(bot, sink, question):
    message_id, text = await periodic_digest(bot, sink)
    await bot.ask(
        raw_mail(
            question + "\n\n" + quoted(text[:500]),
            "Re: x",
            headers=f"In-Reply-To: {message_id}\r\n",
        )
    )
    answer = last_reply(sink, 2)
    assert f"    {GICV5}\n" in answer
    assert "una@example.org: active" not in answer and "Error" not in answer


HEAD = (
    "From: Una <una@example.org>\nTo: kvm-digest@example.org\nSubject: Re: hello\n"
    "MIME-Version: 1.0\n"
)
RAW_SHAPES = {
    "outlook html only, unquoted original below a rule": (
        'Content-Type: text/html; charset="us-ascii"\n\n<html><body><div class=WordSection1>'
        "<p class=MsoNormal>status<o:p></o:p></p><p class=MsoNormal><o:p>&nbsp;</o:p></p>"
        "<div style='border:none;border-top:solid #E1E1E1 1.0pt'><p class=MsoNormal>"
        "<b>From:</b> KVM digest &lt;kvm-digest@example.org&gt;<br><b>Sent:</b> Monday, "
        "March 1, 2021 10:00 AM<br><b>Subject:</b> help</p></div>"
        "<p class=MsoNormal>    unsubscribe</p></div></body></html>\n",
        ["status"],
    ),
    "thunderbird html with a cite blockquote": (
        'Content-Type: text/html; charset=UTF-8\n\n<html><body><p>topic s:vgic<br></p><div class="'
        'moz-cite-prefix">On 01/03/2021 10:00, KVM digest wrote:<br></div><blockquote type="cite">'
        "<pre>unsubscribe</pre></blockquote></body></html>\n",
        ["topic s:vgic"],
    ),
    "pgp inline signed": (
        "Content-Type: text/plain\n\n-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n"
        "subscribe weekly\n-----BEGIN PGP SIGNATURE-----\n\niQIzBAEBCAAdFiEE\n"
        "-----END PGP SIGNATURE-----\n",
        ["subscribe weekly"],
    ),
    "format=flowed with a greeting": (
        "Content-Type: text/plain; charset=utf-8; format=flowed\n\nHi there, \n\n"
        "subscribe daily \n\n-- \nUna\n",
        ["subscribe daily"],
    ),
    "multipart/mixed with an attachment": (
        "Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain\n\nstatus\n"
        "--b\nContent-Type: application/pdf\nContent-Disposition: attachment; filename=x.pdf\n"
        "Content-Transfer-Encoding: base64\n\nJVBERi0=\n--b--\n",
        ["status"],
    ),
    "windows-1252, quoted-printable, French": (
        "Content-Type: text/plain; charset=windows-1252\nContent-Transfer-Encoding: "
        "quoted-printable\n\nBonjour,\n\nsubscribe weekly\n\nMerci =E0 vous\n",
        ["subscribe weekly"],
    ),
    "a French attribution above the quote": (
        "Content-Type: text/plain; charset=utf-8\n\nstatus\n\nLe lun. 1 mars 2021 à 10:00, "
        "KVM digest <kvm-digest@example.org> a écrit :\n> unsubscribe\n",
        ["status"],
    ),
    "a German Outlook header block": (
        "Content-Type: text/plain; charset=utf-8\n\nstatus\n\nVon: KVM digest "
        "<kvm-digest@example.org>\nGesendet: Montag, 1. März 2021 10:00\n\n    unsubscribe\n",
        ["status"],
    ),
}


@pytest.mark.parametrize("shape", RAW_SHAPES)
def test_raw_client_shapes_give_exactly_their_commands(shape):
    from bot.commands import registry
    from bot.desk.inbound import Mail, command_lines

    text, expected = RAW_SHAPES[shape]
    raw = (HEAD + text).replace("\n", "\r\n").encode()
    mail = Mail.parse(raw, "una@example.org", BOT)
    commands = registry()
    bare = {name for name, c in commands.items() if not c.arguments}
    assert command_lines(mail, set(commands), bare)[0] == expected
