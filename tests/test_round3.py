"""Correctness on real mail, round 3: series grouping, resends, in-body From, applied.

tests/data/round3/ holds real kvmarm mail, one file per message, named by its
position in the bundle's archive:

- 00198-00213: Sudeep Holla's `[PATCH 00/15]` cover letter whose patches say
  `[PATCH v2 k/15]` (the cover letter lost its version);
- 05399-05424: Jianyong Wu's `[RFC PATCH v13 0/9]`, then the same series as
  `[PATCH v13 0/9]` three and a half hours later, its `3/9` an unchanged copy
  of the first posting's, and Christoph Hellwig's reply to that copy;
- 10933: David Laight's Outlook reply, starting with the quoted `From:`;
- 08617: the kernel test robot's `[kvmarm:next 29/32] ... warning` (no diff);
- 00021, 04709, 05086: maintainers' "applied" notes that do not start with
  the verb, or name the tree later in the sentence.

The rest is shaped with tests/mailfactory.py as the mail of other lists is
(the kernel.org patchwork bot, Outlook, `Last, First` names).
"""

from __future__ import annotations

import sqlite3
import time

import pytest

from bot.digest import build, ranges, trailers
from bot.parse import mime
from bot.parse.message import parse_message
from bot.parse.subject import parse_subject
from tests.mailfactory import COVER_BODY, DATA, PATCH_BODY, Store, mail

ROUND3 = DATA / "round3"
ANN = "Ann Author <ann@example.org>"
BOB = "Bob Reviewer <bob@example.org>"
MAINTAINER = "Marc Maintainer <marc@example.org>"


def real(*numbers: int) -> list[bytes]:
    return [(ROUND3 / f"{n:05d}.eml").read_bytes() for n in numbers]


def upto(conn: sqlite3.Connection, start_seq: int, end_seq: int | None = None) -> ranges.Range:
    """The range (start_seq, end_seq] by archive position (end: the last message)."""
    ids = dict(conn.execute("SELECT seq, commit_id FROM messages"))
    end = end_seq if end_seq is not None else max(ids)
    return ranges.Range(start_seq, end, ids.get(start_seq, "0" * 40), ids[end])


def lines(conn: sqlite3.Connection, rng: ranges.Range | None = None) -> list[str]:
    """The patch list as `subject | summary` items."""
    rng = rng or ranges.everything(conn)
    return [f"{s.subject} | {s.summary}" for s in build.patch_list(conn, rng)]


def text(conn: sqlite3.Connection, rng: ranges.Range | None = None, style: str = "classic") -> str:
    d = build.build(conn, rng or ranges.everything(conn), style=style)
    return build.render(d, build.environment())


def facts(conn: sqlite3.Connection, rng: ranges.Range | None = None) -> dict[str, str]:
    d = build.build(conn, rng or ranges.everything(conn), style="full")
    return {s.subject: s.facts for s in d.series + d.discussion}


def seq_of(conn: sqlite3.Connection, message_id: str) -> int:
    row = conn.execute("SELECT seq FROM messages WHERE message_id = ?", (message_id,)).fetchone()
    return row[0]


# -- 1. a patch answering its sender's cover letter joins it -------------------


def test_patches_of_another_version_join_the_cover_letter_they_answer(store):
    # Real: `[PATCH 00/15]` whose patches all say `[PATCH v2 k/15]`.
    store.add(*real(198, 199, 200, 213))
    assert lines(store.index.conn) == [
        "[PATCH 00/15] arm64: KVM: add SPE profiling support for guest | 3/15 patches, cover letter"
    ]


@pytest.mark.parametrize("order", [(0, 1, 2, 3), (3, 2, 1, 0), (1, 0, 3, 2)])
def test_a_v3_under_a_v2_cover_letter_is_one_series_in_any_order(tmp_path, order):
    msgs = [mail("[Patch v2 0/3] net: thing", "c@x", body=COVER_BODY)]
    msgs += [
        mail(f"[Patch v3 {n}/3] net: part {n}", f"p{n}@x", irt="c@x", refs=["c@x"], minutes=n)
        for n in (1, 2, 3)
    ]
    store = Store(tmp_path / "s")
    store.add(*[msgs[i] for i in order])
    assert lines(store.index.conn) == ["[Patch v2 0/3] net: thing | 3/3 patches, cover letter"]


def test_an_unnumbered_patch_under_its_0_of_1_cover_letter_joins_it(store):
    store.add(
        mail("[PATCH v4 0/1] KVM: x86: one thing", "c@x", body=COVER_BODY),
        mail("[PATCH v4] KVM: x86: one thing", "p@x", irt="c@x", refs=["c@x"], minutes=1),
    )
    assert lines(store.index.conn) == [
        "[PATCH v4 0/1] KVM: x86: one thing | 1/1 patches, cover letter"
    ]


def test_a_newer_version_answering_a_cover_letter_with_its_own_patches_is_new(store):
    # `A v2 is a different series from its v1, even when sent in reply to it`,
    # whichever arrives first.
    v1 = [mail("[PATCH 0/2] the thing", "v1@x", body=COVER_BODY)]
    v1 += [mail(f"[PATCH {n}/2] part {n}", f"v1-{n}@x", irt="v1@x", refs=["v1@x"]) for n in (1, 2)]
    v2 = [
        mail(f"[PATCH v2 {n}/2] part {n}", f"v2-{n}@x", irt="v1@x", refs=["v1@x"], minutes=60)
        for n in (1, 2)
    ]
    store.add(v2[0], *v1, v2[1])
    assert store.series_of("v2-1@x") == store.series_of("v2-2@x") != store.series_of("v1@x")
    assert sorted(lines(store.index.conn)) == [
        "[PATCH 0/2] the thing | 2/2 patches, cover letter",
        "[PATCH v2 1/2] part 1 | 2/2 patches",
    ]


# -- 2. numbered patches answering an unnumbered one -----------------------------


def test_numbered_patches_answering_an_unnumbered_patch_are_series_of_their_own(store):
    store.add(mail("[PATCH] arch: um: fix the thing", "u@x"))
    for n in range(4):
        store.add(
            mail(f"[PATCH 1/2] arch: um: try {n}", f"t{n}@x", irt="u@x", refs=["u@x"], minutes=n)
        )
    # The 2/2 of the second try answers its 1/2, as git send-email threads it.
    store.add(
        mail("[PATCH 2/2] arch: um: try 1, part 2", "t1-2@x", irt="t1@x", refs=["u@x", "t1@x"])
    )
    assert lines(store.index.conn) == [
        "[PATCH] arch: um: fix the thing | 1/1 patches",
        "[PATCH 1/2] arch: um: try 0 | 1/2 patches",
        "[PATCH 1/2] arch: um: try 1 | 2/2 patches",
        "[PATCH 1/2] arch: um: try 2 | 1/2 patches",
        "[PATCH 1/2] arch: um: try 3 | 1/2 patches",
    ]
    # Every first patch is a "New:" entry of its own.
    assert text(store.index.conn).count("New:  arch: um: try") == 4


def test_k_never_exceeds_n(store):
    store.add(
        mail("[PATCH 1/1] KVM: one", "a@x"),
        mail("[PATCH 2/1] KVM: an afterthought", "b@x", irt="a@x", refs=["a@x"], minutes=1),
    )
    assert lines(store.index.conn) == ["[PATCH 1/1] KVM: one | 1/1 patches"]


# -- 3. and 4. resends: duplicates belong to their original's series ------------


def fifteen(prefix: str, minutes: int, changed: tuple[int, ...] = ()) -> list[bytes]:
    """A 15-patch series without a cover letter, deep-threaded on its 01/15."""
    out = []
    for n in range(1, 16):
        body = PATCH_BODY if n not in changed else "Changed after review.\n\n" + PATCH_BODY
        first = f"{prefix}-1@x"
        out.append(
            mail(
                f"[PATCH {n:02d}/15] KVM: part {n}",
                f"{prefix}-{n}@x",
                irt=None if n == 1 else first,
                refs=[] if n == 1 else [first],
                body=body,
                minutes=minutes + n,
            )
        )
    return out


def test_a_resend_whose_first_patch_is_unchanged_keeps_its_line(store):
    conn = store.index.conn
    store.add(*fifteen("a", 0))
    resend = fifteen("b", 1440, changed=(12, 13, 14))
    store.add(*resend)
    rng = upto(conn, seq_of(conn, "a-15@x"))
    assert lines(conn, rng) == ["[PATCH 12/15] KVM: part 12 | 3/15 patches"]
    digest = text(conn, rng)
    assert "Exist: [PATCH 01/15] KVM: part 1\n Skip: [PATCH 01/15] KVM: part 1\n" in digest
    # A reply to an unchanged copy counts for the first posting, which the
    # next digest shows as earlier series, under the subject it was shown with.
    store.add(
        mail(
            "Re: [PATCH 02/15] KVM: part 2",
            "r@x",
            frm=BOB,
            irt="b-2@x",
            refs=["b-1@x", "b-2@x"],
            body="Reviewed-by: Bob Reviewer <bob@example.org>\n",
            minutes=3000,
        )
    )
    later = build.build(conn, upto(conn, seq_of(conn, "b-15@x")), style="full")
    assert [(s.subject, s.summary) for s in later.discussion] == [
        ("[PATCH 01/15] KVM: part 1", "posted 2021-03-01, 1 reply")
    ]
    assert later.discussion[0].facts.startswith("1 Reviewed-by")


def test_real_resend_with_one_unchanged_patch_and_a_reply_to_that_copy(store):
    conn = store.index.conn
    store.add(*real(5399, 5402, 5414, 5415, 5417, 5418, 5424))
    rfc = "20200619093033.58344-1-jianyong.wu@arm.com"
    copy = "20200619130120.40556-4-jianyong.wu@arm.com"
    # The unchanged 3/9 and Christoph Hellwig's reply to it are the RFC's.
    assert store.series_of(copy) == store.series_of(rfc)
    assert store.series_of("20200619135716.GA14308@infradead.org") == store.series_of(rfc)
    rng = upto(conn, seq_of(conn, "20200619093033.58344-4-jianyong.wu@arm.com"))
    assert lines(conn, rng) == [
        "[PATCH v13 0/9] Enable ptp_kvm for arm64 | 2/9 patches, cover letter"
    ]
    d = build.build(conn, rng, style="full")
    assert [(s.subject, s.summary) for s in d.discussion] == [
        ("[RFC PATCH v13 0/9] Enable ptp_kvm for arm64", "posted 2020-06-19, 1 reply")
    ]


def test_replies_to_a_resent_copy_count_for_the_original(store):
    conn = store.index.conn
    store.add(mail("[PATCH] KVM: x86: fix", "orig@x"))
    store.add(mail("[PATCH] KVM: x86: fix", "copy@x", minutes=1440))  # resent unchanged
    store.add(
        mail(
            "Re: [PATCH] KVM: x86: fix",
            "r1@x",
            frm=BOB,
            irt="copy@x",
            refs=["copy@x"],
            body="Reviewed-by: Bob Reviewer <bob@example.org>\n",
            minutes=1500,
        ),
        mail(
            "Re: [PATCH] KVM: x86: fix",
            "r2@x",
            frm=MAINTAINER,
            irt="copy@x",
            refs=["copy@x"],
            body="Applied to kvm/queue, thanks!\n",
            minutes=1501,
        ),
    )
    assert {store.series_of(m) for m in ("copy@x", "r1@x", "r2@x")} == {store.series_of("orig@x")}
    # All in one range: one line, both replies, the trailer and the note.
    assert lines(conn) == ["[PATCH] KVM: x86: fix | 1/1 patches, 2 replies"]
    assert facts(conn) == {
        "[PATCH] KVM: x86: fix": "1 Reviewed-by (Bob Reviewer);"
        " applied by Marc Maintainer to kvm/queue"
    }
    # From the copy on: no line of its own, the replies under discussion.
    rng = upto(conn, seq_of(conn, "orig@x"))
    d = build.build(conn, rng, style="full")
    assert d.series == []
    assert [(s.subject, s.summary) for s in d.discussion] == [
        ("[PATCH] KVM: x86: fix", "posted 2021-03-01, 2 replies")
    ]


# -- 5. and 6. in-body From ---------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Last, First <first.last@example.org>", ("Last, First", "first.last@example.org")),
        ('"Liu, Yi L" <yi.l.liu@intel.com>', ("Liu, Yi L", "yi.l.liu@intel.com")),
        ("maz@kernel.org (Marc Zyngier)", ("Marc Zyngier", "maz@kernel.org")),
        ("=?utf-8?q?J=C3=B6rg_R=C3=B6del?= <joro@8bytes.org>", ("Jörg Rödel", "joro@8bytes.org")),
        ("Edgecombe, Rick P <rick.p.edgecombe@intel.com> Sent: Monday, May 1, 2023", None),
        ("Name <user () host ! com>", None),
        ("Ann <ann@example.org>, Bob <bob@example.org>", None),
    ],
)
def test_one_address(value, expected):
    assert mime.one_address(value) == expected


def test_a_patch_by_last_first_names_its_author_whole(store):
    body = "From: Kicinski, Jakub <kuba@example.org>\n\n" + PATCH_BODY
    store.add(mail("[PATCH net] net: fix", "p@x", body=body))
    digest = text(store.index.conn)
    assert "Author: Kicinski, Jakub <kuba@example.org> (sent by Ann Author <ann@example.org>)" in (
        digest
    )
    assert "      1  Kicinski, Jakub <kuba@example.org>" in digest


OUTLOOK = """\
From: Edgecombe, Rick P <rick.p.edgecombe@intel.com> Sent: Monday, May 1, 2023 10:00 AM
To: kvm@vger.kernel.org
Subject: Re: [PATCH] KVM: x86: fix

Looks right to me.
"""


def test_messages_whose_in_body_from_is_not_one_address_still_count(store):
    mangled = "From: Ann Author <ann () example ! org>\n\n" + PATCH_BODY
    store.add(
        mail("[PATCH] KVM: x86: fix", "p@x", body=mangled),
        mail("RE: [PATCH] KVM: x86: fix", "r@x", frm=BOB, irt="p@x", refs=["p@x"], body=OUTLOOK),
        mail("[PATCH] KVM: x86: other", "q@x", frm=BOB, body=OUTLOOK + "\n" + PATCH_BODY),
    )
    digest = text(store.index.conn)
    people = digest[digest.index("Top 15 contributors") : digest.index("===== Patch list")]
    counts = [int(line.split()[0]) for line in people.splitlines()[2:] if line.strip()]
    assert sum(counts) == 3  # every message counts once
    assert "      2  Bob Reviewer <bob@example.org>" in people
    assert "      1  Ann Author <ann@example.org>" in people
    assert "Edgecombe" not in people


def test_an_outlook_reply_counts_for_its_sender_not_the_quoted_person(store):
    # Real: David Laight's reply starts with "From: Steven Price <...>".
    (raw,) = real(10933)
    assert b"\nFrom: Steven Price <steven.price@arm.com>" in raw
    parsed = parse_message(raw)
    assert (parsed.kind, parsed.author_addr) == ("reply", "David.Laight@ACULAB.COM")
    store.add(raw)
    digest = text(store.index.conn)
    assert "      1  David Laight <David.Laight@ACULAB.COM>" in digest
    assert "Steven Price" not in digest


# -- 7. no diff, no patch ---------------------------------------------------------------


def test_a_numbered_message_without_a_diff_is_not_a_patch(store):
    (robot,) = real(8617)
    assert parse_message(robot).kind == "other"
    lost_re = mail(
        "[PATCH 2/3] KVM: part 2",
        "t@x",
        frm=BOB,
        irt="p2@x",
        refs=["p2@x"],
        body="Tested-by: Bob Reviewer <bob@example.org>\n",
    )
    assert parse_message(lost_re).kind == "other"
    store.add(robot, lost_re)
    digest = text(store.index.conn)
    assert lines(store.index.conn) == []
    assert "New:" not in digest
    assert "      1  kernel test robot <lkp@intel.com>" in digest  # still counted


# -- 8. applied -------------------------------------------------------------------------------

PATCHWORK_NOTE = """\
Hello:

This series was applied to netdev/net.git (main)
by Jakub Kicinski <kuba@kernel.org>:

On Tue, 2 Mar 2021 09:00:00 +0000 you wrote:
> This series makes the thing work.
>
> [...]

Here is the summary with links:
  - [net,1/2] KVM: one
    https://git.kernel.org/netdev/net/c/0123456789ab
  - [net,2/2] KVM: two
    https://git.kernel.org/netdev/net/c/ba9876543210

You are awesome, thank you!
--
Deet-doot-dot, I am a bot.
https://korg.docs.kernel.org/patchwork/pwbot.html
"""


def test_the_patchwork_bot_names_who_applied_it_and_where(store):
    store.add(mail("[PATCH net 0/2] net: the thing", "c@x", body=COVER_BODY))
    for n in (1, 2):
        store.add(mail(f"[PATCH net {n}/2] net: part {n}", f"p{n}@x", irt="c@x", refs=["c@x"]))
    store.add(
        mail(
            "Re: [PATCH net 0/2] net: the thing",
            "pw@x",
            frm="patchwork-bot+netdevbpf@kernel.org",
            irt="c@x",
            refs=["c@x"],
            body=PATCHWORK_NOTE,
            minutes=600,
        )
    )
    assert facts(store.index.conn) == {
        "[PATCH net 0/2] net: the thing": "applied by Jakub Kicinski to netdev/net.git (main)"
    }


def test_an_older_patchwork_note_without_a_name_is_its_senders():
    note = trailers.applied_note(
        ["Hello:", "", "This patch was applied to netdev/net-next.git (refs/heads/master):", ""]
    )
    assert note == trailers.Applied(by="", to="netdev/net-next.git (refs/heads/master)")


def test_a_quoted_patchwork_note_is_not_applied():
    quoted = "\n".join("> " + line for line in PATCHWORK_NOTE.splitlines())
    assert not trailers.says_applied(trailers.own_lines("Thanks!\n\n" + quoted))


@pytest.mark.parametrize(
    ("sentence", "where"),
    [
        ("Fixed the typo and applied to hyperv-next.", "hyperv-next"),
        ("Ok, this is queued in my for-next branch.", "for-next"),
        ("I've pushed these three patches to hyperv-next.", "hyperv-next"),
        ("Applied to kvm-x86 misc, thanks!", "kvm-x86 misc"),
        ("Applied to arm64 (for-next/fixes), thanks!", "arm64 (for-next/fixes)"),
        (
            "Thanks, patches 3 and 4 of this series applied to my kvm-ppc-next branch.",
            "kvm-ppc-next",
        ),
        ("Applied and pushed to -next.", "-next"),
        ("Rebased, and queued with the fix that Sean suggested.", ""),
        ("Both backports now queued up, thanks.", ""),
        ("For now I've queued it, for 5.16 we can do it in vm_create().", ""),
        ("Queued 1-20 and 22-28.", ""),
        ("With regrets: applied as a fix for 5.2.", ""),
        ("Series applied, thanks.", ""),
        ("Applied to pci/misc for v6.9, thanks!", "pci/misc"),
        ("Applied to the togreg branch of iio.git and pushed out as testing.", "togreg"),
        (
            "Thank you for your patch, I've applied this patch to my review-hans branch:",
            "review-hans",
        ),
    ],
)
def test_applied_sentences_where_the_verb_is_not_first(sentence, where):
    note = trailers.applied_note(trailers.own_lines(f"On Mon, X wrote:\n> ...\n\n{sentence}\n"))
    assert note == trailers.Applied(to=where)


@pytest.mark.parametrize(
    "sentence",
    [
        "Applied on top of 6.8.4, it prevents the oops.",
        "The series applies cleanly on top of kvm/next.",
        "Applied on v6.8-rc3 and tested on my Graviton box.",
        "I applied your fix to kvm_tlb_flush_vmid, and I was able to boot a guest.",
        "I can apply it once Paolo agrees.",
        "If this is applied, the warning goes away.",
        "This should be queued for stable.",
        "Will this be pushed to Linus for rc4?",
        "It was already applied by Marc.",
        "Marc has already applied this to kvmarm/next.",
        "I see you silently applied this series to kvm/master, but there is a v2.",
        "I've pushed out a branch with everything at [1].",
        "I've queued the below patch on top of the existing series.",
        "I have pushed the updated version.",
        "Thanks, all corrections applied.",
        "Thanks for that, I've applied it to the patch and will push out the update.",
        "I picked up the work and applied the patches to our 4.19.36 stable branch.",
        "Not yet applied, I'm waiting for Paolo.",
        "I applied this series and ran the selftests, all passed.",
        "Applied to my local tree for testing.",
    ],
)
def test_not_applied_sentences(sentence):
    assert not trailers.says_applied(trailers.own_lines(sentence))


def test_applied_with_the_tree_in_the_next_paragraph():
    # Mark Brown's notes name the tree on a line of its own.
    note = trailers.applied_note(
        trailers.own_lines(
            "Applied to\n\n   https://git.kernel.org/pub/scm/linux/kernel/git/broonie/spi.git"
            " for-next\n\nThanks!\n\n[1/1] spi: fix\n      commit: 0123456789ab\n\nAll being"
            " well this means that it will be integrated into the linux-next\ntree.\n"
        )
    )
    assert note == trailers.Applied(
        to="https://git.kernel.org/pub/scm/linux/kernel/git/broonie/spi.git for-next"
    )


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        (21, trailers.Applied(to="-next")),  # "Applied and pushed to -next."
        (4709, trailers.Applied()),  # "Ok, I pushed this out along with the follow-up patch."
        (5086, trailers.Applied(to="kvm-ppc-next")),  # "Thanks, patches 3 and 4 of this series..."
    ],
)
def test_real_applied_notes(number, expected):
    (raw,) = real(number)
    notes = parse_message(raw).notes
    assert notes.applied
    assert trailers.Applied(by=notes.applied_by, to=notes.applied_to) == expected


def test_a_tester_applying_the_patches_is_not_applied(store):
    store.add(mail("[PATCH] KVM: x86: fix", "p@x"))
    store.add(
        mail(
            "Re: [PATCH] KVM: x86: fix",
            "t@x",
            frm=BOB,
            irt="p@x",
            refs=["p@x"],
            body="Applied on top of 6.8.4, it prevents the oops.\n\nTested-by: Bob Reviewer"
            " <bob@example.org>\n",
            minutes=30,
        )
    )
    assert facts(store.index.conn) == {"[PATCH] KVM: x86: fix": "1 Tested-by (Bob Reviewer)"}


# -- 9. every series has a title; v0 --------------------------------------------------------


def test_versions_of_series_whose_cover_and_first_patch_never_arrived(store):
    # A list Cc'd on patch 3 of 9 only, in v4 and v5.
    store.add(
        mail("[PATCH v4 3/9] mm: the third part", "v4@x", irt="v4-cover@x", refs=["v4-cover@x"]),
        mail(
            "[PATCH v5 3/9] mm: the third part",
            "v5@x",
            irt="v5-cover@x",
            refs=["v5-cover@x"],
            minutes=60 * 24 * 7,
        ),
    )
    v5 = seq_of(store.index.conn, "v5@x")
    assert facts(store.index.conn, upto(store.index.conn, v5 - 1)) == {
        "[PATCH v5 3/9] mm: the third part": "supersedes v4 (2021-03-01)"
    }
    assert facts(store.index.conn, upto(store.index.conn, 0, v5 - 1)) == {
        "[PATCH v4 3/9] mm: the third part": ""  # v5 was not there yet
    }
    assert facts(store.index.conn)["[PATCH v4 3/9] mm: the third part"] == "superseded by v5"


def test_v0_is_a_version_of_its_own(store):
    assert parse_subject("[PATCH v0 1/2] x").version == 0
    assert parse_subject("[PATCH 1/2] x").version == 1
    store.add(
        mail("[RFC PATCH v0] KVM: try a thing", "v0@x"),
        mail("[PATCH v1] KVM: try a thing", "v1@x", minutes=60 * 24),
    )
    assert store.series_of("v0@x") != store.series_of("v1@x")
    assert facts(store.index.conn) == {
        "[RFC PATCH v0] KVM: try a thing": "superseded by v1",
        "[PATCH v1] KVM: try a thing": "supersedes v0 (2021-03-01)",
    }


def test_an_index_from_round_2_is_rebuilt_with_these_rules(tmp_path):
    store = Store(tmp_path / "s")
    store.add(*real(198, 199, 200, 213, 5399, 5402, 5414, 5415, 5417, 5418, 5424))
    expected = text(store.index.conn, style="full")
    conn = store.index.conn
    with conn:  # the round-2 shape and rules: no dup_of, applied without who/where
        conn.execute("DROP INDEX messages_dup_of")
        conn.execute("ALTER TABLE messages DROP COLUMN dup_of")
        conn.execute("DROP TABLE applied")
        conn.execute("CREATE TABLE applied (seq INTEGER PRIMARY KEY REFERENCES messages(seq))")
        conn.execute("UPDATE messages SET series_id = NULL")
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'rules_version'")
        conn.execute("DELETE FROM meta WHERE key = 'schema_stamp'")
    store.index.close()
    reopened = Store(tmp_path / "s")  # opening migrates; the catch-up rebuilds
    reopened.index.catch_up(reopened.archive, max_size=None)
    assert text(reopened.index.conn, style="full") == expected
    assert (
        "[PATCH 00/15] arm64: KVM: add SPE profiling support for guest\n"
        "    Sudeep Holla <sudeep.holla@arm.com>, 3/15 patches, cover letter\n"
    ) in expected


def _notes_seconds(words: int) -> float:
    raw = mail("Re: [PATCH] x", "long@x", frm=BOB, body="the thing applied " * words + "\n")
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        parse_message(raw)
        best = min(best, time.perf_counter() - started)
    return best


def test_reading_a_hostile_one_sentence_reply_is_linear():
    """A reply that is one long sentence of verbs: ten times the text, about ten times the time."""
    ratio = _notes_seconds(20_000) / _notes_seconds(2_000)
    assert ratio < 30, f"10x the sentence took {ratio:.0f}x the time"
