"""The two reference digests, rebuilt from raw mail, line by line.

tests/data/reference/NNN.mbox holds the messages behind
shared/reference/digests/NNN_*.txt, written as git send-email writes them
(the vfio patch quoted-printable, the 1/2 subject folded, the cover letter of
000 sent twice, the TSAN patch of 002 before its cover letter, 01/32 with an
in-body From). NNN.expected.txt is the original digest with FORMAT.md's
deliberate improvements applied; {A} and {B} stand for the range ids.
The originals themselves are copied into tests/data/reference/original/ (28
KB), so these tests run on a clone with no ../shared beside it; a test checks
the copies against ../shared where it is present.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import archive_ids
from tests.mailfactory import DATA, SHARED, need_shared

REFERENCE = DATA / "reference"
ORIGINALS = REFERENCE / "original"


def digest_for(cli, data_dir: Path, name: str) -> tuple[str, str, str]:
    result = cli("import", REFERENCE / f"{name}.mbox")
    assert result.code == 0, result.err
    ids = archive_ids(data_dir)
    # The first message is an earlier one: the range starts after it, as the
    # originals' ranges start after the previous digest's last message.
    a, b = ids[0][:9], ids[-1][:9]
    # The reference digests are the classic style, line for line.
    out = cli("digest", "--range", f"{a}..{b}", "--style", "classic")
    assert out.code == 0, out.err
    return out.out, a, b


@pytest.mark.parametrize("name", ["000", "002"])
def test_reference_digest_line_by_line(cli, data_dir, name):
    text, a, b = digest_for(cli, data_dir, name)
    expected = (REFERENCE / f"{name}.expected.txt").read_text()
    expected = expected.replace("{A}", a).replace("{B}", b)
    assert text.splitlines() == expected.splitlines()
    assert text == expected  # and the same trailing blank line


def original_lines(name: str) -> list[str]:
    (path,) = ORIGINALS.glob(f"{name}_*.txt")
    return path.read_text().splitlines()


def test_the_copied_originals_are_the_shared_reference_digests():
    shared = need_shared(SHARED / "reference" / "digests")
    copies = {p.name: p.read_bytes() for p in ORIGINALS.glob("*.txt")}
    assert copies == {p.name: p.read_bytes() for p in shared.glob("*.txt")}


def test_000_differs_from_the_original_only_by_the_documented_improvements(cli, data_dir):
    text, _, _ = digest_for(cli, data_dir, "000")
    ours = text.splitlines()
    original = original_lines("000")
    # 1. subjects unfolded in full
    assert "New:  KVM: arm64: gic: Enable GICv3 CPUIF trapping on GICv5" in original
    assert "New:  KVM: arm64: gic: Enable GICv3 CPUIF trapping on GICv5 hosts if required" in ours
    # 2. bodies decoded
    assert "1. A PCIe-fault brings B=E2=80=99s link down, then A=E2=80=99s." in original
    assert "1. A PCIe-fault brings B’s link down, then A’s." in ours
    # 5. no quotes, ties ordered by name
    assert '      1  "Jinhui Guo" <guojinhui.liam@bytedance.com>' in original
    people = ours[ours.index("Top 15 contributors (Based on Email Body)") + 2 :][:3]
    assert people == [
        "      4  Sascha Bischoff <Sascha.Bischoff@arm.com>",
        "      1  Jinhui Guo <guojinhui.liam@bytedance.com>",
        "      1  Max Gurtovoy <mgurtovoy@nvidia.com>",
    ]
    # The commit-message section is otherwise the original's, line for line.
    start = original.index("===== Patch Commit Messages ====")
    improved = {
        i
        for i, line in enumerate(original)
        if "=E2=80=99" in line or "CPUIF trapping on GICv5" in line
    }
    kept = [line for i, line in enumerate(original[start:], start) if i not in improved]
    ours_start = ours.index("===== Patch Commit Messages ====")
    assert [
        line
        for line in ours[ours_start:]
        if "’" not in line and "CPUIF trapping on GICv5" not in line
    ] == kept


def test_002_in_body_author_and_out_of_order_cover(cli, data_dir):
    text, _, _ = digest_for(cli, data_dir, "002")
    lines = text.splitlines()
    assert (
        "Author: Marc Zyngier <maz@kernel.org> (sent by Sascha Bischoff <Sascha.Bischoff@arm.com>)"
    ) in lines
    # The in-body From line and the blank line after it are gone.
    i = lines.index("[PATCH 01/32] KVM: arm64: Account for RES1 bits in DECLARE_FEAT_MAP()")
    assert lines[i + 2] == ""
    assert lines[i + 3].startswith("None of the registers we manage")
    # Marc Zyngier counts for kernel.org, through the in-body From.
    assert "      1 kernel.org" in lines
    assert "      1  Marc Zyngier <maz@kernel.org>" in lines
    # The cover letter arrived after its patch and still names the series.
    assert "[PATCH 0/1] Clean up TSAN warnings" in lines
    j = lines.index("[PATCH 0/1] Clean up TSAN warnings")
    assert lines[j + 1] == "    Marc Morcos <marcmorcos@google.com>, 1/1 patches, cover letter"
