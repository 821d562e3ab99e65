"""Subject tags, as kernel lists spell them."""

import pytest

from bot.parse.subject import parse_subject


@pytest.mark.parametrize(
    ("subject", "reply", "version", "counter", "total", "title"),
    [
        ("[PATCH] KVM: x86: fix it", False, 1, None, None, "KVM: x86: fix it"),
        ("[PATCH v2 3/7] KVM: arm64: thing", False, 2, 3, 7, "KVM: arm64: thing"),
        ("[PATCH 03/32] KVM: arm64: thing", False, 1, 3, 32, "KVM: arm64: thing"),
        ("[RFC PATCH v3 0/4] big idea", False, 3, 0, 4, "big idea"),
        ("[PATCH RESEND] KVM: again", False, 1, None, None, "KVM: again"),
        ("[PATCH net-next v2 1/2] net: y", False, 2, 1, 2, "net: y"),
        ("[kvm-unit-tests PATCH] arm: test", False, 1, None, None, "arm: test"),
        (
            "[GIT PULL] KVM/arm64 fixes for 6.8",
            False,
            1,
            None,
            None,
            "KVM/arm64 fixes for 6.8",
        ),
        ("[RFC][PATCH 1/2] two groups", False, 1, 1, 2, "two groups"),
        ("[PATCH V2] capital V", False, 2, None, None, "capital V"),
        ("[PATCHv4 2/3] glued version", False, 4, 2, 3, "glued version"),
        ("Re: [PATCH v2 3/7] KVM: arm64: thing", True, 2, 3, 7, "KVM: arm64: thing"),
        ("RE: Re: AW: [PATCH] nested prefixes", True, 1, None, None, "nested prefixes"),
        ("Aw: Sv: Antw: question", True, 1, None, None, "question"),
        ("Fwd: [PATCH] forwarded", True, 1, None, None, "forwarded"),
        ("Fw: forwarded too", True, 1, None, None, "forwarded too"),
        (
            "Question about [PATCH] later",
            False,
            1,
            None,
            None,
            "Question about [PATCH] later",
        ),
        ("  [PATCH   v2   1/1]   spaced\n  out  ", False, 2, 1, 1, "spaced out"),
    ],
)
def test_parse_subject(subject, reply, version, counter, total, title):
    s = parse_subject(subject)
    assert (s.is_reply, s.version, s.counter, s.total, s.title) == (
        reply,
        version,
        counter,
        total,
        title,
    )


def test_reply_keeps_the_tags_it_answers():
    s = parse_subject("Re: [PATCH v2 3/7] KVM: arm64: thing")
    assert s.base == "[PATCH v2 3/7] KVM: arm64: thing"
    assert s.is_patch


def test_pull_and_rfc_tags():
    assert parse_subject("[GIT PULL] KVM changes").is_pull
    assert parse_subject("[RFC 0/3] idea").is_patch
    assert not parse_subject("Question: KVM").is_patch


@pytest.mark.parametrize(
    ("subject", "counter", "total", "version"),
    [
        ("[PATCH 1 of 2] hg: patchbomb numbering", 1, 2, 1),
        ("[PATCH v3 03 of 10] hg: zero padded", 3, 10, 3),
        ("[RFC] [PATCH 0 of 4] hg: cover", 0, 4, 1),
        ("[PATCH] one of many", None, None, 1),
    ],
)
def test_counter_spellings(subject, counter, total, version):
    s = parse_subject(subject)
    assert (s.counter, s.total, s.version) == (counter, total, version)


@pytest.mark.parametrize(
    "subject",
    [
        "RE: [PATCH] x",
        "Re[2]: [PATCH] x",
        "Re^3: [PATCH] x",
        "SV: VS: [PATCH] x",
        "Odp: [PATCH] x",
        "WG: [PATCH] x",
        "回复：[PATCH] x",
        "[External] Re: [PATCH] x",
    ],
)
def test_any_reply_prefix(subject):
    assert parse_subject(subject).is_reply


@pytest.mark.parametrize(
    ("subject", "notice"),
    [
        ('Patch "KVM: arm64: Fix exclusive limit" has been added to the 4.14-stable tree', True),
        ('patch "KVM: x86: fix" added to the 6.1-stable tree', True),
        ('FAILED: patch "[PATCH] KVM: x86: fix" failed to apply to 5.10-stable tree', True),
        ('Patch "KVM: x86: fix" has been removed from the 5.15-stable tree', True),
        ('patch "usb: fix" added to usb-linus', True),
        ("[tip: x86/urgent] x86/kvm: Fix the thing", True),
        ("+ mm-fix-it.patch added to mm-hotfixes-unstable branch", True),
        ('[PATCH] Revert "x86: patch" added to fix', False),
        ("[PATCH 5.10 012/150] KVM: x86: fix", False),
        ('Re: Patch "x" has been added to the 5.4-stable tree', False),
    ],
)
def test_notice_subjects(subject, notice):
    s = parse_subject(subject)
    assert s.is_notice == (notice and not s.is_reply)
