"""Correctness on real mail, round 2: pulls, cover letters, versions, duplicates.

tests/data/kvmarm-round2.mbox holds 33 real kvmarm messages, one group per
finding of issue 12, in archive order:

- `[RFC PATCH v6 4/7]` whose in-body `From:` has no blank line after it;
- `[GIT PULL 00/23]` with its 01/23 and 02/23;
- `[PULL kvm-unit-tests 00/39]` with its 01/39 and 02/39;
- a `[kvm-unit-tests PATCH v2 0/8]` sent twice (a typo fixed in the second
  copy), the patches answering the second copy;
- `[PATCH v2 0/1]` whose cover letter embeds a hack as a diff, and its 1/1;
- `[PATCH] ... Fix nVHE hyp panic` posted, then reposted 24 days later with
  changed text, twice 34 seconds apart (the second copy says 5.10, not 5.11);
- `[PATCH 0/4]` sent twice 44 seconds apart (same text), patches answering
  the second copy;
- a `Patch "..." has been added to the 4.14-stable tree` notice;
- `[PATCH 00/15]` whose cover letter quotes a diff before its shortlog;
- `[PATCH 0/2]` and its patches, the same three resent a day later, then a
  `[PATCH v2 0/2]` and its v2 patches all in reply to the resent v1 cover.
"""

from __future__ import annotations

import re
import sqlite3

import pytest

from bot.parse.message import parse_message
from bot.store.archive import Archive
from tests.mailfactory import DATA, mail

ROUND2 = DATA / "kvmarm-round2.mbox"


def patch_list(text: str) -> list[str]:
    lines = text.splitlines()
    start = lines.index("===== Patch list in this time period =====") + 2
    end = lines.index("===== Patch Commit Messages ====") - 1
    items = lines[start:end]
    return [f"{items[i]} | {items[i + 1].strip()}" for i in range(0, len(items), 2)]


def entry(text: str, title: str) -> str:
    """The text of the `New:` entry with this title, up to its separator."""
    start = text.index(f"New:  {title}\n")
    return text[start : text.index("-" * 70, start)]


@pytest.fixture
def digest(cli) -> str:
    result = cli("import", ROUND2)
    assert result.out.strip().endswith("33 imported, 0 duplicates, 0 rejected"), result.err
    return cli("digest", "--all", "--style", "classic").out


def test_numbered_pulls_are_a_series_with_their_cover_letter(digest):
    items = patch_list(digest)
    assert (
        "[PULL kvm-unit-tests 00/39] arm/arm64: The old and new"
        " | Andrew Jones <drjones@redhat.com>, 2/39 patches, cover letter"
    ) in items
    assert (
        "[GIT PULL 00/23] KVM/arm updates for 5.6"
        " | Marc Zyngier <maz@kernel.org>, 2/23 patches, cover letter"
    ) in items
    # Two entries each: the cover letter (still a pull request) and 1/n.
    assert "New:  arm/arm64: The old and new\n" in digest
    assert "New:  Makefile: Use no-stack-protector compiler options\n" in digest
    assert "New:  arm/arm64: psci: Don't run C code without stack or vectors" not in digest
    assert "New:  KVM/arm updates for 5.6\n" in digest
    assert "New:  KVM: arm/arm64: vgic-its: Fix restoration of unmapped" not in digest
    # The pull request's cover letter runs through its diffstat.
    pull = entry(digest, "arm/arm64: The old and new")
    assert "are available in the Git repository at:" in pull
    assert re.search(r"(?m)^ \d+ files changed, \d+ insertions", pull)


def test_cover_letters_are_not_cut_at_a_diff_they_embed(digest):
    perf = entry(digest, "perf: KVM: Fix, optimize, and clean up callbacks")
    # The quoted diff, then the rest of the letter: shortlog and diffstat.
    assert "diff --git a/arch/x86/events/core.c b/arch/x86/events/core.c" in perf
    assert "Sean Christopherson (15):" in perf
    assert " 28 files changed, 204 insertions(+), 231 deletions(-)" in perf
    assert "\n-- \n" not in perf and "mailing list" not in perf
    mmio = entry(digest, "KVM: arm64: fix the mmio faulting")
    assert "Santosh Shukla (1):" in mmio
    assert mmio.rstrip().endswith("1 file changed, 1 insertion(+)")
    assert (
        "[PATCH v2 0/1] KVM: arm64: fix the mmio faulting"
        " | Santosh Shukla <sashukla@nvidia.com>, 1/1 patches, cover letter"
    ) in patch_list(digest)


def test_v2_sent_in_reply_to_the_v1_cover_is_its_own_series(digest):
    items = [i for i in patch_list(digest) if "refcount" in i]
    assert items == [
        "[PATCH 0/2] A couple of EL2 refcounts fixes"
        " | Quentin Perret <qperret@google.com>, 2/2 patches, cover letter",
        "[PATCH v2 0/2] A couple of EL2 refcounts fixes"
        " | Quentin Perret <qperret@google.com>, 2/2 patches, cover letter",
    ]


def test_in_body_from_without_a_blank_line_names_the_author(digest):
    people = digest[: digest.index("===== Patch list")]
    assert "      1  Thomas Gleixner <tglx@linutronix.de>" in people
    assert "Jianyong Wu" not in people


def test_duplicates_are_by_subject_sender_and_text(digest):
    # A repost with changed text is a new entry each time.
    assert digest.count("New:  KVM: arm64: Fix nVHE hyp panic host context restore\n") == 3
    # The same text again is a duplicate, however long after.
    assert (
        "Exist: [PATCH 0/2] A couple of EL2 refcounts fixes\n"
        " Skip: [PATCH 0/2] A couple of EL2 refcounts fixes\n"
    ) in digest
    assert "Exist: [PATCH 1/2] KVM: arm64: Fix host stage-2 PGD refcount\n" in digest
    assert len(re.findall(r"(?m)^Exist: ", digest)) == 3


def test_a_cover_letter_sent_twice_is_one_series_with_its_cover_letter(digest):
    items = patch_list(digest)
    wxn = [i for i in items if "with WXN" in i]
    assert wxn == [
        "[PATCH 0/4] KVM: arm64: Running the EL2 nVHE code with WXN"
        " | Marc Zyngier <maz@kernel.org>, 4/4 patches, cover letter"
    ]
    assert "Exist: [PATCH 0/4] KVM: arm64: Running the EL2 nVHE code with WXN\n" in digest
    # Sent twice with a typo fixed: two entries, still one series line.
    latency = [i for i in items if "latency test" in i]
    assert latency == [
        "[kvm-unit-tests PATCH v2 0/8] arm/arm64: Add IPI/LPI/vtimer latency test"
        " | Jingyi Wang <wangjingyi11@huawei.com>, 2/8 patches, cover letter"
    ]
    assert digest.count("New:  arm/arm64: Add IPI/LPI/vtimer latency test\n") == 2


def test_stable_tree_notices_count_only_in_the_statistics(digest):
    assert "has been added to the 4.14-stable tree" not in digest
    assert "      1  gregkh@linuxfoundation.org" in digest


def test_redelivery_counts_once_in_mirror_mode_as_on_import(cli, tmp_path, data_dir):
    first = mail("[PATCH] KVM: x86: one fix", "fix@x")
    again = b"Received: from elsewhere; Mon, 1 Mar 2021 10:00:00 +0000\n" + first
    reply = mail(
        "Re: [PATCH] KVM: x86: one fix",
        "re@x",
        frm="Bob Reviewer <bob@example.org>",
        irt="fix@x",
        refs=["fix@x"],
        body="Applied.\n",
        minutes=5,
    )
    # An epoch that holds the patch twice, as a mirror may.
    upstream = Archive.create(tmp_path / "upstream.git")
    upstream.append([(raw, parse_message(raw)) for raw in (first, again, reply)])
    mirrored = cli(
        "--archive", tmp_path / "upstream.git", "digest", "--all", "--style", "classic"
    ).out
    mbox = tmp_path / "two.mbox"
    mbox.write_bytes(
        b"".join(b"From x Thu Jan  1 00:00:00 1970\n" + r + b"\n" for r in (first, again, reply))
    )
    assert cli("import", mbox).out.strip().endswith("2 imported, 1 duplicates, 0 rejected")
    imported = cli("digest", "--all", "--style", "classic").out
    for text in (mirrored, imported):
        assert "      1  Ann Author <ann@example.org>" in text
        assert "      1 example.org" not in text  # Ann and Bob: 2
        assert "      2 example.org" in text
        assert patch_list(text) == [
            "[PATCH] KVM: x86: one fix | Ann Author <ann@example.org>, 1/1 patches, 1 reply"
        ]
        assert text.count("New:  KVM: x86: one fix\n") == 1
        assert "Exist:" not in text
    # Everything below the range line is the same.
    assert mirrored.split("\n", 2)[2] == imported.split("\n", 2)[2]


def test_an_index_from_before_these_rules_is_rebuilt(cli, data_dir, digest):
    # An index written by the previous version: no text_hash/redelivered
    # columns, no 'notice' kind. Opening it rebuilds it from the archive.
    conn = sqlite3.connect(data_dir / "index.sqlite3")
    with conn:
        conn.execute("DROP INDEX messages_copies")
        conn.execute("ALTER TABLE messages DROP COLUMN text_hash")
        conn.execute("ALTER TABLE messages DROP COLUMN redelivered")
        conn.execute("UPDATE messages SET kind = 'patch' WHERE kind = 'notice'")
        # ...and it never recorded this version's schema stamp.
        conn.execute("DELETE FROM meta WHERE key = 'schema_stamp'")
        conn.execute("PRAGMA user_version = 1")
    conn.close()
    assert cli("digest", "--all", "--style", "classic").out == digest
    assert cli("reindex").out.strip() == "indexed 33 messages"
    assert cli("digest", "--all", "--style", "classic").out == digest
