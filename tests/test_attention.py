"""What needs a reader: "Waiting for review" and "For you" (FORMAT.md).

The mail is shaped as git send-email and mail clients write it (cover
letters, numbered patches threaded under them, replies quoting them, real
Cc lines with quoted names, encoded words and plus addresses), goes through
the real importer into a real git archive and SQLite index, and the
sections are read from the rendered digest text.
"""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.config import from_table
from bot.delivery import periodic, subscribers
from bot.delivery.mail import Identity, prepare_digest, with_section
from bot.delivery.outbox import Outbox
from bot.digest import build, layout, personal, ranges
from bot.parse.mime import mailboxes
from bot.store.index import Index
from tests.mailfactory import COVER_BODY, PATCH_BODY, mail

DAY = 24 * 60  # minutes
LORE = "https://lore.kernel.org/kvm"
ANN = "Ann Author <ann@example.org>"
BOB = "Bob Reviewer <bob@example.org>"
JANE = "jane.doe@example.org"
CC_JANE = '"Doe, Jane" <Jane.Doe+kvm@Example.ORG>, kvmarm@lists.cs.columbia.edu'


def reply(subject: str, msgid: str, parent: str, frm: str, minutes: int, text: str = "") -> bytes:
    """A reply quoting its parent, as a mail client writes it."""
    body = (text or "Looks fine to me, but see below.") + "\n\nOn Mon, someone wrote:\n> +int x;\n"
    return mail(
        f"Re: {subject}", msgid, frm=frm, body=body, irt=parent, refs=[parent], minutes=minutes
    )


def series(
    title: str,
    tag: str,
    minutes: int,
    frm: str = ANN,
    version: str = "",
    cc: str = "",
    patches: int = 2,
) -> list[bytes]:
    """A cover letter and its patches, each in reply to the cover letter."""
    v = f" {version}" if version else ""
    cover = f"{tag}-0@example.org"
    headers = {"Cc": cc} if cc else None
    out = [
        mail(
            f"[PATCH{v} 0/{patches}] {title}",
            cover,
            frm=frm,
            body=COVER_BODY,
            minutes=minutes,
            headers=headers,
        )
    ]
    for n in range(1, patches + 1):
        out.append(
            mail(
                f"[PATCH{v} {n}/{patches}] {title} part {n}",
                f"{tag}-{n}@example.org",
                frm=frm,
                body=PATCH_BODY,
                irt=cover,
                refs=[cover],
                minutes=minutes + n,
                headers=headers,
            )
        )
    return out


def other(tag: str, minutes: int) -> bytes:
    """Unrelated list traffic, so a range can end at a given time."""
    return mail(
        "KVM: a question about vcpu ids",
        f"{tag}@example.org",
        frm=BOB,
        body="How are vcpu ids chosen?\n",
        minutes=minutes,
    )


def seq_of(conn, message_id: str) -> int:
    return conn.execute("SELECT seq FROM messages WHERE message_id = ?", (message_id,)).fetchone()[
        0
    ]


def upto(conn, start_seq: int, end_seq: int) -> ranges.Range:
    ids = dict(conn.execute("SELECT seq, commit_id FROM messages"))
    return ranges.Range(start_seq, end_seq, ids.get(start_seq, "0" * 40), ids[end_seq])


def digest(conn, rng: ranges.Range, **kwargs) -> str:
    d = build.build(conn, rng, archive_url=LORE, **kwargs)
    return build.render(d, build.environment())


def section(text: str, title: str) -> str:
    """The lines of one `===== title... =====` section of a digest ('' if absent):
    to the next section, or for "For you" to the statistics."""
    lines = text.split("\n")
    start = next((i for i, line in enumerate(lines) if line.startswith(f"===== {title}")), None)
    if start is None:
        return ""
    end = next(
        (
            i
            for i in range(start + 1, len(lines))
            if lines[i].startswith(("=====", "Top 15 contributor"))
        ),
        len(lines),
    )
    return "\n".join(lines[start:end]).strip() + "\n"


def waiting_subjects(text: str) -> list[str]:
    return [
        line for line in section(text, "Waiting for review").split("\n") if line.startswith("[")
    ]


def for_you(conn, rng: ranges.Range, reader: str) -> dict[str, list[str]]:
    """The reader's "For you" groups: title -> subjects shown."""
    pool = personal.pool(conn, rng, LORE)
    _shown, key = personal.reader(reader)
    return {title: [s.subject for s in lines] for title, lines in pool.groups(key)}


# -- Waiting for review ------------------------------------------------------


def test_a_series_answered_only_by_its_submitter_is_waiting(store):
    store.add(
        *series("KVM: arm64: Tidy the vgic", "tidy", 0),
        # Ann pings her own series from a plus address, another case: still Ann.
        reply(
            "[PATCH 0/2] KVM: arm64: Tidy the vgic",
            "ping@example.org",
            "tidy-0@example.org",
            "Ann Author <Ann+lists@EXAMPLE.org>",
            3 * DAY,
            "Ping?",
        ),
        other("q1", 6 * DAY),
        other("q2", 8 * DAY),
    )
    conn = store.index.conn
    text = digest(conn, upto(conn, seq_of(conn, "q1@example.org"), seq_of(conn, "q2@example.org")))
    assert section(text, "Waiting for review") == (
        "===== Waiting for review (7 days, no reply) =====\n"
        "\n"
        "[PATCH 0/2] KVM: arm64: Tidy the vgic\n"
        "    Ann Author <ann@example.org>, posted 2021-03-01, 2/2 patches, cover letter\n"
        "    https://lore.kernel.org/kvm/tidy-0@example.org/\n"
    )
    # It sits after the patch list (and the discussion), before the entries.
    assert (
        text.index("===== Patch list")
        < text.index("===== Waiting for review")
        < text.index("===== Patch Commit Messages")
    )


def test_a_reply_by_anyone_else_ends_the_wait(store):
    store.add(
        *series("KVM: arm64: Tidy the vgic", "tidy", 0),
        *series("KVM: x86: Tidy the mmu", "mmu", 10),
        reply(
            "[PATCH 1/2] KVM: x86: Tidy the mmu part 1",
            "r1@example.org",
            "mmu-1@example.org",
            BOB,
            2 * DAY,
        ),
        other("q1", 6 * DAY),
        other("q2", 8 * DAY),
    )
    conn = store.index.conn
    text = digest(conn, upto(conn, seq_of(conn, "q1@example.org"), seq_of(conn, "q2@example.org")))
    assert waiting_subjects(text) == ["[PATCH 0/2] KVM: arm64: Tidy the vgic"]


def test_a_v2_ends_the_wait_of_v1_and_waits_itself(store):
    store.add(
        *series("KVM: arm64: Tidy the vgic", "v1", 0),
        *series("KVM: arm64: Tidy the vgic", "v2", 5 * DAY, version="v2"),
        other("q1", 6 * DAY),
        other("q2", 8 * DAY),
        other("q3", 13 * DAY),
    )
    conn = store.index.conn
    q1, q2, q3 = (seq_of(conn, f"{q}@example.org") for q in ("q1", "q2", "q3"))
    assert waiting_subjects(digest(conn, upto(conn, q1, q2))) == []  # v1 turned 7: superseded
    later = digest(conn, upto(conn, q2, q3))
    assert waiting_subjects(later) == ["[PATCH v2 0/2] KVM: arm64: Tidy the vgic"]
    assert "    supersedes v1 (2021-03-01)\n" in section(later, "Waiting for review")


def test_an_applied_note_ends_the_wait(store):
    store.add(
        *series("KVM: arm64: Tidy the vgic", "tidy", 0),
        reply(
            "[PATCH 0/2] KVM: arm64: Tidy the vgic",
            "applied@example.org",
            "tidy-0@example.org",
            "Marc Zyngier <maz@kernel.org>",
            4 * DAY,
            "Applied to kvmarm/next, thanks!\n\n\tM.",
        ),
        other("q1", 6 * DAY),
        other("q2", 8 * DAY),
    )
    conn = store.index.conn
    text = digest(conn, upto(conn, seq_of(conn, "q1@example.org"), seq_of(conn, "q2@example.org")))
    assert "applied by Marc Zyngier to kvmarm/next" not in section(text, "Waiting")
    assert waiting_subjects(text) == []


def test_only_the_end_of_the_range_counts_a_reply_after_it_does_not(store):
    """Open or not is decided by what the archive held at the range's end."""
    store.add(
        *series("KVM: arm64: Tidy the vgic", "tidy", 0),
        other("q1", 6 * DAY),
        other("q2", 8 * DAY),
        reply(
            "[PATCH 0/2] KVM: arm64: Tidy the vgic",
            "late@example.org",
            "tidy-0@example.org",
            BOB,
            9 * DAY,
        ),
    )
    conn = store.index.conn
    text = digest(conn, upto(conn, seq_of(conn, "q1@example.org"), seq_of(conn, "q2@example.org")))
    assert waiting_subjects(text) == ["[PATCH 0/2] KVM: arm64: Tidy the vgic"]


def test_each_series_waits_in_exactly_one_digest_of_a_schedule(store):
    """Cut the archive into consecutive ranges anywhere: every open series is
    listed by exactly one of them, the one whose range holds its 7th day."""
    mails = []
    for i in range(12):
        mails += series(f"KVM: arm64: Change number {i}", f"s{i}", i * DAY // 2)
        if i % 3 == 0:  # a third of them get a review
            mails.append(
                reply(
                    f"[PATCH 1/2] KVM: arm64: Change number {i} part 1",
                    f"rv{i}@example.org",
                    f"s{i}-1@example.org",
                    BOB,
                    i * DAY // 2 + DAY,
                )
            )
    mails += [other(f"t{k}", 6 * DAY + k * 190) for k in range(60)]  # traffic over 8 days
    store.add(*mails)
    conn = store.index.conn
    last = conn.execute("SELECT MAX(seq) FROM messages").fetchone()[0]
    expected = sorted(f"[PATCH 0/2] KVM: arm64: Change number {i}" for i in range(12) if i % 3)
    rand = random.Random(24)
    for _ in range(5):
        cuts = sorted(rand.sample(range(1, last), rand.randint(1, 12)))
        bounds = [0, *cuts, last]
        listed = []
        for lo, hi in itertools.pairwise(bounds):
            listed += waiting_subjects(digest(conn, upto(conn, lo, hi)))
        assert sorted(listed) == expected, cuts


def test_a_filtered_digest_shows_the_waiting_series_its_query_matches(store):
    store.add(
        *series("KVM: arm64: Tidy the vgic", "arm", 0),
        *series("KVM: x86: Tidy the mmu", "x86", 10),
        other("q1", 6 * DAY),
        other("q2", 8 * DAY),
    )
    conn = store.index.conn
    rng = upto(conn, seq_of(conn, "q1@example.org"), seq_of(conn, "q2@example.org"))
    assert len(waiting_subjects(digest(conn, rng))) == 2
    assert waiting_subjects(digest(conn, rng, query="s:x86")) == [
        "[PATCH 0/2] KVM: x86: Tidy the mmu"
    ]
    assert waiting_subjects(digest(conn, rng, query="s:riscv")) == []
    assert "Waiting for review" not in digest(conn, rng, style="classic")
    assert "Waiting for review" not in digest(conn, rng, review_wait_days=0)


# -- For you -------------------------------------------------------------------


def test_mailboxes_read_where_mail_is_delivered():
    assert mailboxes(CC_JANE) == ["Jane.Doe+kvm@Example.ORG", "kvmarm@lists.cs.columbia.edu"]
    # A display name that looks like an address is not one: John gets the mail.
    assert mailboxes('"jane.doe@example.org" <john@example.org>') == ["john@example.org"]
    assert mailboxes("jane.doe@example.org <john@example.org>") == ["john@example.org"]
    assert mailboxes(
        '=?UTF-8?q?Andr=C3=A9=20Przywara?= <andre.przywara@arm.com>, "Zengtao \\(B\\)"'
        " <prime.zeng@hisilicon.com>, jane.doe@example.org (Jane), undisclosed-recipients:;"
    ) == ["andre.przywara@arm.com", "prime.zeng@hisilicon.com", "jane.doe@example.org"]
    assert mailboxes('"jane doe"@example.org') == ['"jane doe"@example.org']


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet='ab@.<>"(),;:\\ +\u00e9\n', max_size=200))
def test_mailboxes_never_raise_and_only_give_addresses(value):
    for found in mailboxes(value):
        assert "@" in found and len(found) <= 254 and "<" not in found and ">" not in found


def test_a_reader_cc_d_through_a_display_name_or_a_plus_address_is_recognised(store):
    store.add(
        *series("KVM: arm64: Cc Jane with a plus address", "plus", 0, cc=CC_JANE),
        *series(
            "KVM: arm64: Jane by an encoded name",
            "enc",
            10,
            frm=BOB,
            cc="=?utf-8?q?Jane_Doe?= <JANE.DOE@EXAMPLE.ORG.>",
        ),
        # Jane's address only in a display name: the mail went to John.
        *series(
            "KVM: arm64: Not for Jane", "john", 20, cc='"jane.doe@example.org" <john@example.org>'
        ),
        other("q1", 30),
    )
    conn = store.index.conn
    rng = ranges.everything(conn)
    expected = [
        "[PATCH 0/2] KVM: arm64: Cc Jane with a plus address",
        "[PATCH 0/2] KVM: arm64: Jane by an encoded name",
    ]
    for reader in (JANE, "Jane.Doe+digest@example.org", "Jane Doe <jane.doe@EXAMPLE.org>"):
        assert for_you(conn, rng, reader) == {"Addressed to you": expected}
    assert for_you(conn, rng, "john@example.org") == {
        "Addressed to you": ["[PATCH 0/2] KVM: arm64: Not for Jane"]
    }


def test_waiting_for_your_answer_until_the_reader_replies(store):
    subject = "[PATCH 0/2] KVM: arm64: Asks Jane"
    store.add(
        *series("KVM: arm64: Asks Jane", "ask", 0, cc=CC_JANE),
        other("q1", 1 * DAY),
        reply(subject, "bob1@example.org", "ask-0@example.org", BOB, 2 * DAY),
        other("q2", 3 * DAY),
        # Jane answers from another spelling of her address.
        reply(
            subject,
            "jane1@example.org",
            "bob1@example.org",
            "Jane Doe <JANE.DOE@example.org>",
            4 * DAY,
            "Acked-by: Jane Doe <jane.doe@example.org>",
        ),
        reply(subject, "bob2@example.org", "jane1@example.org", BOB, 4 * DAY + 60),
        other("q3", 5 * DAY),
    )
    conn = store.index.conn
    q1, q2, q3 = (seq_of(conn, f"{q}@example.org") for q in ("q1", "q2", "q3"))
    assert for_you(conn, upto(conn, q1, q2), JANE) == {"Waiting for your answer": [subject]}
    assert for_you(conn, upto(conn, q2, q3), JANE) == {}
    # Bob's replies are news of Ann's series: hers, not his.
    assert for_you(conn, upto(conn, q1, q2), "ann@example.org") == {"Your series": [subject]}
    assert for_you(conn, upto(conn, q1, q2), "bob@example.org") == {}


def test_your_series_with_news_and_the_version_it_replaced(store):
    store.add(
        *series("KVM: arm64: Jane's work", "jv1", 0, frm=f"Jane Doe <{JANE}>"),
        *series("KVM: arm64: Jane's quiet work", "quiet", 5, frm=f"Jane Doe <{JANE}>"),
        other("q1", 1 * DAY),
        *series("KVM: arm64: Jane's work", "jv2", 2 * DAY, frm=f"Jane Doe <{JANE}>", version="v2"),
        reply(
            "[PATCH v2 1/2] KVM: arm64: Jane's work part 1",
            "rb@example.org",
            "jv2-1@example.org",
            BOB,
            2 * DAY + 30,
            "Reviewed-by: Bob Reviewer <bob@example.org>",
        ),
    )
    conn = store.index.conn
    rng = upto(
        conn,
        seq_of(conn, "q1@example.org"),
        conn.execute("SELECT MAX(seq) FROM messages").fetchone()[0],
    )
    pool = personal.pool(conn, rng, LORE)
    (group,) = pool.groups(JANE)
    assert group[0] == "Your series"
    lines = {line.subject: line for line in group[1]}
    assert sorted(lines) == [
        "[PATCH 0/2] KVM: arm64: Jane's work",
        "[PATCH v2 0/2] KVM: arm64: Jane's work",
    ]
    old = lines["[PATCH 0/2] KVM: arm64: Jane's work"]
    assert (old.summary, old.facts) == ("posted 2021-03-01", "superseded by v2")
    assert old.link == "https://lore.kernel.org/kvm/jv1-0@example.org/"
    assert lines["[PATCH v2 0/2] KVM: arm64: Jane's work"].facts.startswith("1 Reviewed-by")


def test_the_section_sits_between_the_header_lines_and_the_statistics(store, cli, data_dir):
    raws = [*series("KVM: arm64: Cc Jane", "cc", 0, cc=CC_JANE), other("q1", 30)]
    for i, raw in enumerate(raws):
        (data_dir.parent / f"{i}.eml").write_bytes(raw)
    assert cli("import", *sorted(data_dir.parent.glob("*.eml"))).code == 0
    out = cli("digest", "--all", "--for", "Jane <jane.doe+x@example.org>").out
    _head, rest = out.split("\n\n", 1)
    assert rest.startswith(
        "===== For you (jane.doe+x@example.org) =====\n"
        "\n"
        "Addressed to you:\n"
        "[PATCH 0/2] KVM: arm64: Cc Jane\n"
        "    Ann Author <ann@example.org>, 2/2 patches, cover letter\n"
        "    https://lore.kernel.org/kvm/cc-0@example.org/\n"
        "\n"
        "Top 15 contributor Email domains"
    )
    assert cli("digest", "--all").out == out.replace(section(out, "For you") + "\n", "")
    bad = cli("digest", "--all", "--for", "not an address")
    assert bad.code != 0 and "--for needs an address" in bad.err
    # Nobody's reader: no section at all.
    assert "For you" not in cli("digest", "--all", "--for", "nobody@example.org").out


# -- delivery: the common part once, each reader's section spliced in ----------


@pytest.mark.parametrize("long_line", [False, True])
def test_a_section_spliced_into_the_encoded_digest_equals_encoding_it_whole(long_line):
    me = Identity("kvm-digest@example.org")
    body = "From a to b\nKVM mailing list update from a to b\n\nTop 15 x\n\n" + "café\n" * 40
    if long_line:  # quoted-printable for the whole body
        body += "x" * 1200 + "\n"
    own = "===== For you (j@example.org) =====\n\nYour series:\n[PATCH] café " + "y" * 90 + "\n\n"
    prepared = prepare_digest(me, "s", body, layout.split_point(body))
    assert prepared.cte == ("quoted-printable" if long_line else "8bit")
    spliced = with_section(prepared, own)
    assert spliced is not None
    assert spliced.body == prepare_digest(me, "s", layout.insert(body, own)).body
    # A line too long for an 8bit body cannot be spliced: the caller re-encodes.
    assert (with_section(prepared, "z" * 1200 + "\n") is None) == (not long_line)


def test_periodic_renders_once_and_only_personal_readers_get_a_section(store, tmp_path):
    conn = store.index.conn
    config = from_table(
        {"commands": {"address": "kvm-digest@example.org"}, "list": {"archive_url": LORE}}
    )
    with conn:
        periodic.ensure(conn, "daily")
        subscribers.subscribe(conn, JANE)
        subscribers.set_personal(conn, JANE, True)
        subscribers.subscribe(conn, "john@example.org")  # personal off (the default)
    store.add(*series("KVM: arm64: Cc Jane", "cc", 0, cc=CC_JANE))
    outbox = Outbox(conn, Identity("kvm-digest@example.org"))
    result = periodic.run(conn, config, outbox, build.environment(), "daily")
    assert len(result.digests) == 1  # one rendering for both readers
    rows = dict(conn.execute("SELECT recipient, id FROM outbox"))
    by_id = {item.recipient: item for item in outbox.due(10)}
    jane = outbox.render(by_id[JANE]).decode()
    john = outbox.render(by_id["john@example.org"]).decode()
    assert "===== For you (jane.doe@example.org) =====\r\n\r\nAddressed to you:\r\n" in jane
    assert "For you" not in john
    # Apart from the headers and footer each copy has of its own (the reader's
    # unsubscribe link), they differ by the section.
    body = lambda raw: raw.split("\r\n\r\n", 1)[1].rsplit("\r\n-- \r\n", 1)[0]  # noqa: E731
    assert body(jane).replace(
        section(body(jane).replace("\r\n", "\n"), "For you").replace("\n", "\r\n") + "\r\n", ""
    ) == body(john)
    assert set(rows) == {JANE, "john@example.org"}
    # Once sent, the section is not kept (the copy was rendered from it).
    outbox.sent(by_id[JANE])
    kept = conn.execute("SELECT personal FROM outbox WHERE recipient = ?", (JANE,)).fetchone()
    assert kept == ("",)


def test_recipients_are_derived_and_rebuilt_with_the_index(store, tmp_path):
    store.add(*series("KVM: arm64: Cc Jane", "cc", 0, cc=CC_JANE))
    conn = store.index.conn
    keys = sorted(
        r[0]
        for r in conn.execute(
            "SELECT DISTINCT b.key FROM recipients r JOIN mailboxes b ON b.id = r.mailbox"
        )
    )
    assert keys == ["jane.doe@example.org", "kvm@vger.kernel.org", "kvmarm@lists.cs.columbia.edu"]
    store.index.clear()
    store.index.catch_up(store.archive, max_size=None)
    again = Index(store.root / "index.sqlite3").conn
    assert again.execute("SELECT COUNT(*) FROM recipients").fetchone()[0] == 3 * 3


# -- personal on|off by mail, confirmed like every change ----------------------


async def test_personal_on_by_mail_is_confirmed_by_a_token_from_its_owner(tmp_path, sink):
    from tests.test_commands import Bot, command, reply_text

    bot = await Bot(tmp_path / "var", sink).start()
    try:
        conn = bot.store.index.conn
        await bot.ask(command("personal on\n"))
        assert "una@example.org is not subscribed; send 'subscribe' first" in reply_text(
            sink.wait_for(1)[0]
        )
        with conn:
            subscribers.subscribe(conn, "una@example.org")
        await bot.ask(command("personal on\n"))
        asked = sink.wait_for(2)[1]
        assert asked.message["Subject"].startswith("confirm ")
        assert "turn 'For you' on" in " ".join(reply_text(asked).split())
        # While it waits, the same request (another spelling) sends nothing new,
        # and nothing has changed yet.
        await bot.ask(command("personal on\n", frm="Una <UNA@Example.ORG>"))
        await bot.ask(command("status\n"))
        status = reply_text(sink.wait_for(3)[2])
        assert "For you: off ('personal on|off' to change)." in status
        assert len(sink.received) == 3
        # Someone else cannot use Una's token.
        token = asked.message["Subject"].split()[1]
        await bot.ask(
            command(f"confirm {token}\n", frm="eve@example.org"), sender="eve@example.org"
        )
        assert "token is unknown" in reply_text(sink.wait_for(4)[3])
        await bot.ask(command(f"confirm {token}\n"))
        assert "'For you' is now on for una@example.org" in reply_text(sink.wait_for(5)[4])
        assert subscribers.get(conn, "una@example.org").personal == "on"
        await bot.ask(command("personal on\n"))
        assert "'For you' is already on for una@example.org." in reply_text(sink.wait_for(6)[5])
        await bot.ask(command("personal maybe\n"))
        assert "personal takes on or off" in reply_text(sink.wait_for(7)[6])
        await bot.ask(command("personal off\n"))
        off = sink.wait_for(8)[7].message["Subject"].split()[1]
        await bot.ask(command(f"confirm {off}\n"))
        assert "'For you' is now off for una@example.org." in reply_text(sink.wait_for(9)[8])
        assert not subscribers.get(conn, "una@example.org").is_personal(True)
    finally:
        await bot.close()


def test_for_a_subscriber_uses_its_topic_and_style_unless_told_otherwise(cli, data_dir):
    raws = [
        *series("KVM: arm64: Cc Jane", "cc", 0, cc=CC_JANE),
        *series("KVM: x86: Not Jane's topic", "x86", 10, frm=BOB, cc=CC_JANE),
    ]
    for i, raw in enumerate(raws):
        (data_dir.parent / f"{i}.eml").write_bytes(raw)
    assert cli("import", *sorted(data_dir.parent.glob("*.eml"))).code == 0
    added = cli("subscribers", "add", JANE, "--topic", "s:arm64", "--personal", "on")
    assert added.code == 0
    assert "\tfor you on" in cli("subscribers", "list").out
    out = cli("digest", "--all", "--for", JANE).out
    assert out.split("\n")[1].endswith("[s:arm64]")
    # "For you" is not filtered by the topic: what is sent to Jane is for Jane.
    assert section(out, "For you").count("\n[PATCH 0/2]") == 2
    patch_list = section(out, "Patch list")
    assert "Cc Jane" in patch_list and "Not Jane's topic" not in patch_list
    told = cli("digest", "--all", "--for", JANE, "--query", "s:x86", "--style", "classic").out
    assert told.split("\n")[1].endswith("[s:x86]")
    assert "https://" not in told.split("Top 15")[1]  # classic: no links outside "For you"
