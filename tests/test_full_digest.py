"""The full digest style: links, reviews, versions, applied, earlier series.

tests/data/full-digest/ holds real kvmarm mail from the bundle, one file per
message, named by its position in the bundle's archive:

- 10977-10979, 11157-11164: Marc Zyngier's "Fixup PC updates on exit to
  userspace" v1 and v2; v2 got Reviewed-by/Tested-by in a reply to its cover
  letter (Zenghui Yu) and Reviewed-by in replies to both patches (Alexandru
  Elisei, once per person).
- 06803-06911: Xiaofei Tan's "fix doc warnings in mmu code" v1, v2, v3; v3
  Acked-by Will Deacon and "Applied to next, thanks!" by Marc Zyngier.
- 02290-02371: linmiaohe's v2 and v3; Marc's "Applied" reply quotes the
  patch's own Reviewed-by lines (`> Reviewed-by: Eric Auger`), which count
  for nobody.
- 12854-13441: Oliver Upton's selftests patch; Paolo Bonzini's "Queued,
  thanks." and Andrew Jones quoting it (`> Queued, thanks.`).
- 13778: a reply asking whether to respin or send "the bits and pieces that
  ought to be applied?" (a question, not an applied mark).
"""

from __future__ import annotations

import random
import re
import sqlite3
from pathlib import Path

import pytest

from bot.config import from_table
from bot.delivery import periodic, subscribers
from bot.delivery.mail import Identity
from bot.delivery.outbox import Outbox
from bot.digest import build, ranges, trailers
from bot.errors import ConfigError
from bot.parse.message import parse_message
from tests.mailfactory import DATA, Store

MAILS = sorted((DATA / "full-digest").glob("*.eml"))
LORE = "https://lore.kernel.org/kvm"


def raw(name: str) -> bytes:
    return (DATA / "full-digest" / f"{name}.eml").read_bytes()


def load(store: Store, names: list[Path] | None = None) -> sqlite3.Connection:
    store.add(*[p.read_bytes() for p in (MAILS if names is None else names)])
    return store.index.conn


def seq_of(conn: sqlite3.Connection, message_id: str) -> int:
    return conn.execute("SELECT seq FROM messages WHERE message_id = ?", (message_id,)).fetchone()[
        0
    ]


def upto(conn: sqlite3.Connection, start_seq: int, end_seq: int) -> ranges.Range:
    """The range (start_seq, end_seq] by position."""
    ids = dict(conn.execute("SELECT seq, commit_id FROM messages"))
    return ranges.Range(start_seq, end_seq, ids.get(start_seq, "0" * 40), ids[end_seq])


def facts(conn: sqlite3.Connection, rng: ranges.Range | None = None) -> dict[str, str]:
    """Patch-list subject -> its facts line, in the full style."""
    d = build.build(conn, rng or ranges.everything(conn), archive_url=LORE)
    return {s.subject: s.facts for s in d.series}


def text(conn: sqlite3.Connection, rng: ranges.Range, style: str = "full") -> str:
    d = build.build(conn, rng, style=style, archive_url=LORE)
    return build.render(d, build.environment())


FIXUP_V2 = "[PATCH v2 0/2] KVM: arm64: Fixup PC updates on exit to userspace"
DOC_V3 = "[PATCH v3] KVM: arm64: fix doc warnings in mmu code"
VGIC_V3 = "[PATCH v3] KVM: vgic: Use wrapper function to lock/unlock all vcpus in kvm_vgic_create()"
SELFTEST = "[PATCH] selftests: KVM: Gracefully handle missing vCPU features"
EXPECTED = {
    "[PATCH v2] KVM: vgic: Use wrapper function to lock/unlock all vcpus in kvm_vgic_create()": (
        "superseded by v3"
    ),
    VGIC_V3: "supersedes v2 (2019-11-28); applied by Marc Zyngier",
    "[PATCH] KVM: arm64: fix doc warnings in mmu code": "superseded by v2",
    "[PATCH v2] KVM: arm64: fix doc warnings in mmu code": "superseded by v3",
    # "Applied to next, thanks!": FORMAT.md names the branch the note names.
    DOC_V3: "1 Acked-by (Will Deacon); supersedes v2 (2020-09-16); applied by Marc Zyngier to next",
    "[PATCH 0/2] KVM: arm64: Fixup PC updates on exit to userspace": "superseded by v2",
    FIXUP_V2: "2 Reviewed-by (Zenghui Yu, Alexandru Elisei), 1 Tested-by (Zenghui Yu);"
    " supersedes v1 (2021-05-10)",
    SELFTEST: "applied by Paolo Bonzini",
}


def test_patch_list_facts_on_real_mail(store):
    conn = load(store)
    assert facts(conn) == EXPECTED


def test_trailers_to_the_cover_and_to_patches_count_once_per_person(store):
    conn = load(store)
    givers = conn.execute(
        """SELECT t.kind, t.who_key, m.subject FROM trailers t JOIN messages m USING (seq)
            WHERE m.series_id = (SELECT series_id FROM messages WHERE subject = ?)
            ORDER BY m.seq, t.kind""",
        (FIXUP_V2,),
    ).fetchall()
    # Zenghui on the cover letter; Alexandru on each of the two patches.
    assert givers == [
        ("Reviewed-by", "yuzenghui@huawei.com", "Re: " + FIXUP_V2),
        ("Tested-by", "yuzenghui@huawei.com", "Re: " + FIXUP_V2),
        (
            "Reviewed-by",
            "alexandru.elisei@arm.com",
            "Re: [PATCH v2 1/2] KVM: arm64: Move __adjust_pc out of line",
        ),
        (
            "Reviewed-by",
            "alexandru.elisei@arm.com",
            "Re: [PATCH v2 2/2] KVM: arm64: Commit "
            "pending PC adjustemnts before returning to userspace",
        ),
    ]
    assert facts(conn)[FIXUP_V2].startswith(
        "2 Reviewed-by (Zenghui Yu, Alexandru Elisei), 1 Tested-by (Zenghui Yu);"
    )


def test_a_quoted_trailer_does_not_count(store):
    reply = raw("02371")
    assert b"\n> Reviewed-by: Eric Auger <eric.auger@redhat.com>" in reply
    assert parse_message(reply).notes.trailers == []
    conn = load(store)
    assert "Reviewed-by" not in facts(conn)[VGIC_V3]


def test_versions_v1_to_v3_as_they_arrive(store):
    conn = load(store)
    v2 = seq_of(conn, "1600221639-4471-1-git-send-email-tanxiaofei@huawei.com")
    v3 = seq_of(conn, "1600307269-50957-1-git-send-email-tanxiaofei@huawei.com")
    # A digest ending with v2: v1 is superseded, v2 supersedes v1, v3 unknown yet.
    before_v3 = facts(conn, upto(conn, 0, v3 - 1))
    assert before_v3["[PATCH] KVM: arm64: fix doc warnings in mmu code"] == "superseded by v2"
    assert before_v3["[PATCH v2] KVM: arm64: fix doc warnings in mmu code"] == (
        "supersedes v1 (2020-09-15)"
    )
    assert DOC_V3 not in before_v3
    # Once v3 is in, v2 reads "superseded by v3" and v3 names v2.
    assert facts(conn, upto(conn, v2, v3))[DOC_V3] == "supersedes v2 (2020-09-16)"
    assert facts(conn)["[PATCH v2] KVM: arm64: fix doc warnings in mmu code"] == (
        "superseded by v3"
    )


def test_applied_only_from_the_unquoted_words_of_someone_else(store):
    queued, quoting = raw("13440"), raw("13441")
    assert b"\nQueued, thanks." in queued
    assert b"\n> Queued, thanks." in quoting
    assert parse_message(queued).notes.applied
    assert not parse_message(quoting).notes.applied
    # Without Paolo's reply, the quote alone marks nothing.
    conn = load(store, [p for p in MAILS if p.stem != "13440"])
    assert SELFTEST not in {k for k, v in facts(conn).items() if v}


def test_a_question_about_applying_is_not_applied():
    question = raw("13778")
    assert b"bits and pieces that ought to\nbe applied?" in question
    assert not parse_message(question).notes.applied


@pytest.mark.parametrize(
    "sentence",
    [
        "Applied to kvm-arm64/next, thanks!",
        "Queued, thanks.",
        "Pushed to kvm/queue",
        "Thanks, applied.",
        "I've queued patches 1-3 for 5.12.",
        "Patch 2 applied to my kvm-ppc-next branch.",
    ],
)
def test_applied_sentences(sentence):
    assert trailers.says_applied(["On Mon, X wrote:", "", sentence, "", "M."])


@pytest.mark.parametrize(
    "sentence",
    [
        "Was this applied?",
        "Has this been queued yet",
        "Could this be applied for 5.12?",
        "> Applied to kvm/next, thanks!",
        "I applied it on top of rc3 and it crashes.",
        "I applied this locally, but I see a failure.",
        "Applied patch hw/serial.c cleanly.",
        "I've pushed out a branch with the fixes.",
        "It was already applied by Marc.",
    ],
)
def test_not_applied_sentences(sentence):
    assert not trailers.says_applied(trailers.own_lines(sentence))


def test_trailer_lines_only_at_the_start_of_an_own_line():
    lines = trailers.own_lines(
        "Looks good.\n\nReviewed-by: Ann <Ann@Example.org>\n"
        "  Acked-by: Pasted <p@example.org>\n> Tested-by: Quoted <q@example.org>\n"
        "Tested-by: Sumit Garg <sumit.garg@linaro.org> (Developerbox)\n"
        "-- \nReviewed-by: Sig <s@example.org>\n"
    )
    assert trailers.trailers(lines) == [
        ("Reviewed-by", "Ann", "ann@example.org"),
        ("Tested-by", "Sumit Garg", "sumit.garg@linaro.org"),
    ]


def test_b4_change_id_links_versions_with_other_titles(store):
    def cover(version: int, title: str, msgid: str, minutes: int) -> bytes:
        return (
            f"From: Ann Author <ann@example.org>\nSubject: [PATCH v{version} 0/1] {title}\n"
            f"Date: Mon, 1 Mar 2021 09:{minutes:02d}:00 +0000\nMessage-ID: <{msgid}>\n\n"
            "Intro.\n\n---\nbase-commit: 1234\nchange-id: 20210301-thing-0123abcd\n\n"
            "Best regards,\n-- \nAnn\n"
        ).encode()

    store.add(cover(1, "Old name", "c1@x", 0), cover(2, "New name", "c2@x", 5))
    got = facts(store.index.conn)
    assert got == {
        "[PATCH v1 0/1] Old name": "superseded by v2",
        "[PATCH v2 0/1] New name": "supersedes v1 (2021-03-01)",
    }


def test_facts_do_not_depend_on_arrival_order(tmp_path):
    # The same facts whatever the order; only the givers' names follow the
    # order in which their trailers arrived, so they are compared as sets.
    def unordered(found: dict[str, str]) -> dict[str, str]:
        return {
            subject: re.sub(
                r"\(([^()]*)\)", lambda m: "(" + ", ".join(sorted(m[1].split(", "))) + ")", text
            )
            for subject, text in found.items()
        }

    expected = unordered(EXPECTED)
    for n, order in enumerate([list(reversed(MAILS)), random.Random(13).sample(MAILS, len(MAILS))]):
        conn = load(Store(tmp_path / f"s{n}"), order)
        assert unordered(facts(conn)) == expected


def test_links_are_percent_encoded_as_lore_does():
    assert build.link(LORE, "20210301142315.30920-1-steven.price@arm.com") == (
        "https://lore.kernel.org/kvm/20210301142315.30920-1-steven.price@arm.com/"
    )
    assert build.link(LORE + "/", "a/b%c d+e=f!$&'()*,;:@x") == (
        "https://lore.kernel.org/kvm/a%2Fb%25c%20d+e=f!$&'()*,;:@x/"
    )
    assert build.link(LORE, "caf\u00e9#?@x") == "https://lore.kernel.org/kvm/caf%C3%A9%23%3F@x/"
    assert build.link("", "x@y") == ""


def test_full_text_adds_lines_and_classic_is_the_documented_layout(store):
    conn = load(store)
    rng = ranges.everything(conn)
    full = text(conn, rng).splitlines()
    classic = text(conn, rng, "classic").splitlines()
    # Every classic line is still there, in the same order.
    it = iter(full)
    assert all(line in it for line in classic)
    i = full.index(FIXUP_V2)
    assert full[i + 1 : i + 4] == [
        "    Marc Zyngier <maz@kernel.org>, 2/2 patches, cover letter, 4 replies",
        "    2 Reviewed-by (Zenghui Yu, Alexandru Elisei), 1 Tested-by (Zenghui Yu);"
        " supersedes v1 (2021-05-10)",
        "    https://lore.kernel.org/kvm/20210514104042.1929168-1-maz@kernel.org/",
    ]
    j = full.index("New:  KVM: arm64: fix doc warnings in mmu code")
    assert full[j + 2 : j + 4] == [
        "Author: Xiaofei Tan <tanxiaofei@huawei.com>",
        "Link: https://lore.kernel.org/kvm/1600175890-7435-1-git-send-email-tanxiaofei@huawei.com/",
    ]
    assert not any(line.startswith("Link: ") or "lore.kernel.org/kvm/" in line for line in classic)
    assert "===== Discussion on earlier series =====" not in full  # nothing was earlier


def test_discussion_on_earlier_series(store):
    conn = load(store)
    last_patch = seq_of(conn, "20210514104042.1929168-3-maz@kernel.org")
    end = conn.execute("SELECT MAX(seq) FROM messages").fetchone()[0]
    lines = text(conn, upto(conn, last_patch, end)).splitlines()
    k = lines.index("===== Discussion on earlier series =====")
    # After the patch list (the selftest patch came later) and its blank line.
    assert lines[k - 2 : k] == [
        "    https://lore.kernel.org/kvm/20210818212940.1382549-1-oupton@google.com/",
        "",
    ]
    assert lines[k + 1 : k + 7] == [
        "",
        FIXUP_V2,
        "    Marc Zyngier <maz@kernel.org>, posted 2021-05-14, 4 replies",
        "    2 Reviewed-by (Zenghui Yu, Alexandru Elisei), 1 Tested-by (Zenghui Yu)",
        "    https://lore.kernel.org/kvm/20210514104042.1929168-1-maz@kernel.org/",
        "",
    ]
    assert lines[k + 7] == "===== Patch Commit Messages ===="
    # The classic style has no such section.
    assert "===== Discussion on earlier series =====" not in text(
        conn, upto(conn, last_patch, end), "classic"
    )


def test_cli_style_flag_and_config(cli, tmp_path):
    mbox = tmp_path / "in.mbox"
    mbox.write_bytes(
        b"".join(b"From x Thu Jan  1 00:00:00 1970\n" + p.read_bytes() + b"\n" for p in MAILS[:4])
    )
    assert cli("import", mbox).code == 0
    full = cli("digest", "--all")
    classic = cli("digest", "--all", "--style", "classic")
    assert full.code == classic.code == 0
    assert "    https://lore.kernel.org/kvm/" in full.out
    assert "lore.kernel.org" not in classic.out
    config = tmp_path / "c.toml"
    config.write_text('[digest]\nstyle = "classic"\n[list]\narchive_url = ""\n')
    assert cli("--config", config, "digest", "--all").out == classic.out
    assert cli("--config", config, "digest", "--all", "--style", "full").out != classic.out
    # brief: the full digest up to its commit messages, and nothing after.
    brief = cli("digest", "--all", "--style", "brief").out
    assert "===== Patch Commit Messages ====" not in brief and "New:  " not in brief
    cut = full.out.index("===== Patch Commit Messages ====")
    assert brief == full.out[:cut]
    config.write_text('[digest]\nstyle = "brief"\n')
    assert cli("--config", config, "digest", "--all").out == brief
    bad = tmp_path / "bad.toml"
    bad.write_text('[digest]\nstyle = "fancy"\n')
    err = cli("--config", bad, "check-config").err.strip()
    assert err.endswith("[digest] style must be full, classic or brief, not 'fancy'")
    with pytest.raises(ConfigError, match="archive_url must start with https://"):
        from_table({"list": {"archive_url": "lore.kernel.org/kvm"}})


def test_periodic_digest_is_rendered_once_per_style(store):
    conn = store.index.conn
    config = from_table({"commands": {"address": "bot@example.org"}})
    outbox = Outbox(conn, Identity("bot@example.org"))
    with conn:
        periodic.ensure(conn, "daily")
        subscribers.subscribe(conn, "a@example.org", "daily")
        subscribers.subscribe(conn, "b@example.org", "daily", style="classic")
        subscribers.subscribe(conn, "c@example.org", "daily", style="classic")
    load(store)
    result = periodic.run(conn, config, outbox, build.environment(), "daily")
    assert result.recipients == 3 and len(result.digests) == 2
    rows = conn.execute(
        """SELECT o.recipient, d.body FROM outbox o JOIN digests d ON d.id = o.digest_id
            ORDER BY o.recipient"""
    ).fetchall()
    bodies = {recipient: body for recipient, body in rows}
    assert "\n    applied by Paolo Bonzini\n" in bodies["a@example.org"]
    assert "applied by" not in bodies["b@example.org"]
    assert bodies["b@example.org"] == bodies["c@example.org"]


def test_subscribe_daily_classic_and_digest_by_mail_in_that_style(store):
    from bot.commands import CommandError, Context
    from bot.commands.confirm import Confirm
    from bot.commands.digest import Digest
    from bot.commands.subscribe import Subscribe

    conn = load(store)
    config = from_table({"commands": {"address": "bot@example.org"}})

    def ctx(sender: str) -> Context:
        return Context(conn, config, Identity("bot@example.org"), sender, build.environment())

    asking = ctx("reader@example.org")
    with conn:
        reply = Subscribe().run(asking, ["daily", "classic"])
    assert "asked to send the daily classic KVM digest" in " ".join(reply.split())
    token = asking.reply_subject.split()[1]
    with conn:
        Confirm().run(ctx("reader@example.org"), [token])
    assert subscribers.get(conn, "reader@example.org").style == "classic"
    with pytest.raises(CommandError, match="full, classic or brief"):
        Subscribe().run(ctx("x@example.org"), ["daily", "weekly"])
    with pytest.raises(CommandError, match="full, classic or brief"):
        Subscribe().run(ctx("x@example.org"), ["classic", "full"])
    # The v2 "Fixup PC updates" series and its replies: a few days.
    v2 = seq_of(conn, "20210514104042.1929168-1-maz@kernel.org")
    rng = upto(conn, v2 - 1, v2 + 6)
    args = [f"{rng.start_id[:12]}..{rng.end_id[:12]}"]
    # The subscriber gets classic; another, with no style, the configured full.
    with conn:
        subscribers.subscribe(conn, "other@example.org", "daily")
    assert "lore.kernel.org" not in Digest().run(ctx("reader@example.org"), args)
    assert "    https://lore.kernel.org/kvm/" in Digest().run(ctx("other@example.org"), args)


def test_versions_go_by_posting_time_and_a_resend_is_not_a_version(tmp_path):
    from tests.mailfactory import mail

    posts = [
        mail("[RFC PATCH v2] KVM: Foo the bar", "rfc2@x", minutes=0),
        mail("[PATCH] KVM: Foo the bar", "p1@x", minutes=60 * 24),
        mail("[PATCH RESEND] KVM: Foo the bar", "p1r@x", minutes=60 * 48),
    ]
    for n, order in enumerate([posts, list(reversed(posts))]):
        store = Store(tmp_path / f"s{n}")
        store.add(*order)
        assert facts(store.index.conn) == {
            # numbering restarted after the RFC: the later series is the newer one
            "[RFC PATCH v2] KVM: Foo the bar": "superseded by v1",
            "[PATCH] KVM: Foo the bar": "supersedes v2 (2021-03-01)",
            "[PATCH RESEND] KVM: Foo the bar": "supersedes v2 (2021-03-01)",
        }
