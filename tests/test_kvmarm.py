"""Real kvmarm mail: a fixed slice in tests/data, and the whole bundle end to end.

tests/data/kvmarm-slice.mbox is 27 real messages picked from the kvmarm
archive for their shape: folded subjects, base64 and quoted-printable bodies,
multipart mail with a Mailman footer part, in-body From lines, a [GIT PULL]
whose patches reply to it, a v2 posted in reply to v1, patches sent with no
References, kvm-unit-tests and kvmtool patches.
"""

from __future__ import annotations

import re

from tests.mailfactory import BUNDLE, DATA, need_shared

SLICE = DATA / "kvmarm-slice.mbox"


def section(text: str, start: str, end: str) -> list[str]:
    lines = text.splitlines()
    return lines[lines.index(start) + 2 : lines.index(end) - 1]


def test_slice_digest(cli):
    assert cli("import", SLICE).out.strip().endswith("27 imported, 0 duplicates, 0 rejected")
    text = cli("digest", "--all").out
    # No Mailman footer or signature reaches the digest.
    assert "mailing list" not in text.replace("KVM mailing list update", "")
    assert "lists.cs.columbia.edu/mailman" not in text
    assert not re.search(r"(?m)^-- $", text)
    series = section(
        text,
        "===== Patch list in this time period =====",
        "===== Patch Commit Messages ====",
    )
    # Folded subjects are whole.
    assert series[0] == (
        "[RFC PATCH 0/5] KVM: arm64: Add support for contiguous PTE/PMD hugepages at stage2"
    )
    # Patches sent in reply to a pull request form one series.
    assert "    Marc Zyngier <marc.zyngier@arm.com>, 2/56 patches" in series
    # v1 and the v2 posted in reply to it are two series.
    assert "[PATCH 0/2] A couple of EL2 refcounts fixes" in series
    assert "[PATCH v2 0/2] A couple of EL2 refcounts fixes" in series
    # In-body From names the author; the header From the sender.
    assert (
        "Author: Christoffer Dall <christoffer.dall@arm.com> (sent by "
        "Marc Zyngier <marc.zyngier@arm.com>)"
    ) in text
    # kvm-unit-tests and kvmtool tags are stripped from titles.
    assert "New:  arm: Add PL031 test" in text
    assert "New:  Add emulation for CFI compatible flash memory" in text
    # The pull request is an entry that ends with its diffstat.
    pull = text[text.index("New:  KVM/arm updates for 5.2-rc2") :]
    pull = pull[: pull.index("-" * 70)]
    assert pull.rstrip().endswith("8 files changed, 177 insertions(+), 164 deletions(-)")


def test_slice_no_references_series(cli):
    cli("import", SLICE)
    text = cli("digest", "--all").out
    # 1/2 and 2/2 of this series carry no References at all; the same sender,
    # version and total within the hour make them one series.
    assert "[PATCH 1/2] arm64: KVM: regmap: Mark expected switch fall-through" in text.splitlines()
    i = text.splitlines().index("[PATCH 1/2] arm64: KVM: regmap: Mark expected switch fall-through")
    assert text.splitlines()[i + 1].endswith(", 2/2 patches")


def test_whole_bundle_end_to_end(cli):
    """The whole kvmarm bundle: imported once, then a day's digest and --all."""
    result = cli("import", need_shared(BUNDLE))
    assert result.code == 0, result.err
    assert result.out.strip().endswith("15000 imported, 0 duplicates, 0 rejected")
    # Idempotent: a second run reads nothing new.
    again = cli("import", BUNDLE)
    assert again.out.strip().endswith("0 imported, 0 duplicates, 0 rejected")
    day = cli("digest", "--since", "2021-03-01", "--until", "2021-03-02")
    assert day.code == 0, day.err
    assert "[PATCH v9 0/6] MTE support for KVM guest" in day.out
    everything = cli("digest", "--all").out
    assert everything.count("\nNew:  ") + everything.count("\nExist: ") == 1806
