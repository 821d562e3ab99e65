"""Real mail is messy: headers, charsets, MIME, in-body headers, the cut."""

from __future__ import annotations

import base64
import quopri

import pytest

from bot.errors import MailError
from bot.parse.body import cut_commit_message, split_inbody_headers, strip_footer
from bot.parse.message import parse_message
from bot.parse.mime import decode_header_value, parse_address
from tests.mailfactory import PATCH_BODY, mail


def test_rfc2047_and_folding():
    assert decode_header_value("=?UTF-8?q?Philippe=20Mathieu-Daud=C3=A9?=") == (
        "Philippe Mathieu-Daudé"
    )
    assert decode_header_value("[PATCH 1/2] KVM: a long\n subject\r\n\tfolded") == (
        "[PATCH 1/2] KVM: a long subject folded"
    )
    assert decode_header_value("=?utf-8?b?w6k=?= =?utf-8?q?t=C3=A9?=") == "été"


def test_wrong_and_unknown_charsets_never_crash():
    assert decode_header_value("=?x-unknown?q?caf=C3=A9?=") == "café"
    assert decode_header_value("=?us-ascii?q?caf=E9?=") == "café"  # latin-1 lie


def test_display_names_lose_quotes_and_decode():
    assert parse_address('"Jinhui Guo" <guojinhui.liam@bytedance.com>') == (
        "Jinhui Guo",
        "guojinhui.liam@bytedance.com",
    )
    assert parse_address("=?utf-8?q?Rados=C5=82aw?= <r@example.org>") == (
        "Radosław",
        "r@example.org",
    )
    assert parse_address("bare@example.org") == ("", "bare@example.org")


def raw_with_body(body: bytes, cte: str, charset: str = "utf-8") -> bytes:
    head = (
        f"From: A <a@example.org>\nSubject: [PATCH] x\nMessage-ID: <x@y>\n"
        f"Content-Type: text/plain; charset={charset}\n"
        f"Content-Transfer-Encoding: {cte}\n\n"
    ).encode()
    return head + body


@pytest.mark.parametrize("cte", ["quoted-printable", "base64", "8bit"])
def test_bodies_are_decoded(cte):
    text = (
        "Fix B’s link.\n\nSigned-off-by: A <a@example.org>\n---\n"
        " f.c | 1 +\n 1 file changed, 1 insertion(+)\n\ndiff --git a/f.c b/f.c\n"
    )
    data = text.encode()
    encoded = {
        "quoted-printable": quopri.encodestring(data),
        "base64": base64.encodebytes(data),
        "8bit": data,
    }[cte]
    parsed = parse_message(raw_with_body(encoded, cte))
    assert parsed.kind == "patch"
    assert parsed.commit_message.startswith("Fix B’s link.")
    assert parsed.commit_message.endswith("1 file changed, 1 insertion(+)")


def raw_cover(body: bytes, cte: str, charset: str) -> bytes:
    return raw_with_body(body, cte, charset).replace(b"[PATCH] x", b"[PATCH 0/1] x")


def test_invalid_base64_is_kept_as_it_came():
    parsed = parse_message(raw_cover(b"!!!not base64@@@\n", "base64", "utf-8"))
    assert parsed.kind == "cover"
    assert parsed.commit_message == "!!!not base64@@@"


@pytest.mark.parametrize("charset", ["utf-8", "us-ascii", "x-unknown", ""])
def test_lying_or_unknown_charset_falls_back(charset):
    latin = raw_cover("Caf\xe9 is open.\n".encode("latin-1"), "8bit", charset)
    assert parse_message(latin).commit_message == "Café is open."


def test_patch_as_inline_attachment_is_a_patch():
    raw = b"""From: A <a@example.org>
Subject: [PATCH] attached
Message-ID: <att@y>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="XX"

--XX
Content-Type: text/plain; charset=utf-8

Here is the fix, attached.

--XX
Content-Type: text/x-patch; name="0001-fix.patch"
Content-Disposition: inline; filename="0001-fix.patch"

diff --git a/f.c b/f.c
--- a/f.c
+++ b/f.c
@@ -1 +1 @@
-a
+b
--XX--
"""
    parsed = parse_message(raw)
    assert parsed.kind == "patch"
    assert parsed.commit_message == "Here is the fix, attached."


def test_orphaned_patch_with_a_diff_is_a_patch():
    assert parse_message(mail("This is an orphaned patch!", "o@y")).kind == "patch"


@pytest.mark.parametrize(
    ("subject", "body", "kind"),
    [
        ("[PATCH 0/3] cover", "Cover text.\n", "cover"),
        ("Re: [PATCH 0/3] cover", PATCH_BODY, "reply"),
        ("[GIT PULL] KVM fixes", "Please pull.\n", "pull"),
        ("KVM fixes", "are available in the Git repository at:\n  git://x\n", "pull"),
        ("Question about doorbells", "How does it work?\n", "other"),
        # FORMAT.md: no diff, no patch, whatever the tag (a review answer, a
        # Tested-by that lost its "Re:").
        ("[PATCH 2/3] numbered without a diff", "Text only.\n", "other"),
    ],
)
def test_kinds(subject, body, kind):
    assert parse_message(mail(subject, "k@y", body=body)).kind == kind


def test_in_body_headers_are_removed_and_name_the_author():
    body = "From: Marc Zyngier <maz@kernel.org>\nDate: Mon, 1 Jan 2024\n\n" + PATCH_BODY
    parsed = parse_message(mail("[PATCH 01/32] x", "ib@y", frm="S <s@arm.com>", body=body))
    assert (parsed.author_name, parsed.author_addr) == (
        "Marc Zyngier",
        "maz@kernel.org",
    )
    assert (parsed.from_name, parsed.from_addr) == ("S", "s@arm.com")
    assert parsed.commit_message.startswith("Make the thing work.")


def test_a_reply_starting_with_from_in_prose_is_not_an_in_body_header():
    lines = ["From: what I read, this is wrong.", "More prose."]
    assert split_inbody_headers(lines) == ({}, lines)


def test_cut_through_changelog_and_diffstat():
    lines = [
        "Message.",
        "",
        "Signed-off-by: A <a@b>",
        "---",
        "",
        "changes from v1:",
        " - x",
        "",
        "---",
        " f.c | 2 +-",
        " 1 file changed, 1 insertion(+), 1 deletion(-)",
        "",
        "diff --git a/f.c b/f.c",
    ]
    cut = cut_commit_message(lines)
    assert cut[0] == "Message."
    assert cut[-1] == " 1 file changed, 1 insertion(+), 1 deletion(-)"
    assert "changes from v1:" in cut


def test_cut_without_diffstat_ends_before_the_diff():
    lines = ["Message.", "", "---", "diff --git a/f.c b/f.c", "--- a/f.c", "+++ b/f.c"]
    assert cut_commit_message(lines) == ["Message.", "", "---"]
    unified = ["Message.", "", "--- a/f.c", "+++ b/f.c", "@@ -1 +1 @@", ""]
    assert cut_commit_message(unified) == ["Message."]


def test_mailman_footer_and_signature_never_reach_the_digest():
    text = (
        "Cover.\n\n-- \n2.20.1\n\n_______________________________________________\n"
        "kvmarm mailing list\nkvmarm@lists.cs.columbia.edu\n"
        "https://lists.cs.columbia.edu/mailman/listinfo/kvmarm\n"
    )
    assert "mailing list" not in strip_footer(text)
    assert cut_commit_message(strip_footer(text).split("\n")) == ["Cover."]


def test_missing_message_id_gets_a_stable_synthetic_one():
    raw = mail("[PATCH] no id", None)
    first, second = parse_message(raw), parse_message(raw)
    assert first.message_id == second.message_id
    assert first.message_id.endswith("@kvm-digest.invalid")
    other = parse_message(mail("[PATCH] another", None))
    assert other.message_id != first.message_id


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"   \n\n",
        b"\x89PNG\r\n\x1a\n\x00\x00binary",
        b"just some text\n",
        b"X-Only: a header\n\nbody\n",
    ],
)
def test_not_mail_is_rejected_with_a_reason(raw):
    with pytest.raises(MailError) as err:
        parse_message(raw)
    assert str(err.value)


def test_headers_with_8bit_bytes_and_control_characters():
    raw = (
        "From: Jos\xe9 <jose@example.org>\nSubject: [PATCH] caf\xe9\x07\x1b bar\n"
        "Message-ID: <e@y>\n\nbody\n"
    ).encode("latin-1")
    parsed = parse_message(raw)
    assert parsed.from_name == "José"
    assert parsed.subject.full == "[PATCH] café bar"


def test_quotes_inside_a_name_are_kept():
    assert parse_address("\"Hector Martin 'marcan'\" <marcan@marcan.st>") == (
        "Hector Martin 'marcan'",
        "marcan@marcan.st",
    )
    assert parse_address("'Jinhui Guo' <g@bytedance.com>") == ("Jinhui Guo", "g@bytedance.com")
    assert parse_address('"O\'Brien, Pat" <pat@example.org>') == ("O'Brien, Pat", "pat@example.org")


def test_in_body_from_without_a_blank_line_after_it():
    # As git send-email writes it when the patch's From has no blank line
    # (real: "[RFC PATCH v6 4/7] time: ..." on kvmarm, sent by Jianyong Wu).
    body = "From: Thomas Gleixner <tglx@linutronix.de>\nIn some scenario like...\n\n" + PATCH_BODY
    parsed = parse_message(mail("[PATCH 4/7] time: x", "nb@y", frm="J <j@arm.com>", body=body))
    assert (parsed.author_name, parsed.author_addr) == ("Thomas Gleixner", "tglx@linutronix.de")
    assert parsed.commit_message.startswith("In some scenario like...")
    # The commit message may itself start like a header ("KVM: x86: ...").
    body = "From: Sean <seanjc@google.com>\nKVM: x86: is the prefix here.\n---\n" + PATCH_BODY
    parsed = parse_message(mail("[PATCH] KVM: x86: x", "nb2@y", frm="P <p@r.com>", body=body))
    assert parsed.author_addr == "seanjc@google.com"
    assert parsed.commit_message.startswith("KVM: x86: is the prefix here.")


@pytest.mark.parametrize(
    "lines",
    [
        ["From: what I read, this is wrong.", "More prose."],
        ["From: Ann <ann@example.org>", "Sent: Monday, 1 March 2021", "To: kvm"],
        ["From: Ann <ann@example.org>", "Date: Mon, 1 Mar 2021", "To: kvm", "", "Hi"],
        ["Von: Ann <ann@example.org>", "Gesendet: Montag"],
    ],
)
def test_prose_and_quoted_header_blocks_are_not_in_body_headers(lines):
    assert split_inbody_headers(lines) == ({}, lines)


def test_diffstat_summary_without_its_leading_space_ends_the_message():
    # The summary is the last line whatever follows: a signature whose "-- "
    # lost its space, a git version.
    body = (
        "Hi Paolo,\n\nare available in the Git repository at:\n\n  git://x tags/y\n\n"
        "----------------------------------------------------------------\n"
        "Ann Author (1):\n      KVM: fix\n\n"
        "f.c | 2 +-\n9 files changed, 10 insertions(+), 3 deletions(-)\n--\n2.30.0\n"
    )
    parsed = parse_message(mail("[GIT PULL] KVM fixes", "ds@y", body=body))
    assert parsed.kind == "pull"
    assert parsed.commit_message.endswith("\n9 files changed, 10 insertions(+), 3 deletions(-)")
    lines = ["Message.", "", "---", "f.c | 1 +", "1 file changed, 1 insertion(+)", "", "x"]
    assert cut_commit_message(lines)[-1] == "1 file changed, 1 insertion(+)"


@pytest.mark.parametrize(
    ("subject", "body", "kind", "entry"),
    [
        ("[PULL kvm-unit-tests 00/39] arm: old and new", "Please pull.\n", "cover", True),
        (
            "[GIT PULL 00/23] KVM/arm updates",
            "are available in the Git repository at\n",
            "cover",
            True,
        ),
        ("[PULL kvm-unit-tests 01/39] Makefile: x", PATCH_BODY, "patch", True),
        ("[kvm-unit-tests PULL 2/2] arm: y", PATCH_BODY, "patch", False),
        ("[GIT PULL] KVM fixes", "are available in the Git repository at\n", "pull", True),
        (
            "KVM/arm64 fixes for 6.8, take #2",  # no tag: the body says it
            "The following changes since commit 0123456789ab:\n\n  x\n\n"
            "are available in the git repository at:\n\n  git://x tags/y\n",
            "pull",
            True,
        ),
        ("[PATCH 0/1] a patch numbered zero", PATCH_BODY, "patch", True),
        (
            'Patch "KVM: x" has been added to the 5.10-stable tree',
            "This is a note to let you know that I've just added the patch titled\n\n" + PATCH_BODY,
            "notice",
            False,
        ),
        (
            'FAILED: patch "[PATCH] KVM: x" failed to apply to 5.10-stable tree',
            "The patch below does not apply to the 5.10-stable tree.\n\n" + PATCH_BODY,
            "notice",
            False,
        ),
        (
            "KVM: x86: a fix for the stable tree",  # the body alone says it
            "This is a note to let you know that I've just added the patch titled\n\n"
            "    KVM: x86: a fix\n\nto the 6.6-stable tree\n\n" + PATCH_BODY,
            "notice",
            False,
        ),
    ],
)
def test_kinds_round2(subject, body, kind, entry):
    parsed = parse_message(mail(subject, "k2@y", body=body))
    assert (parsed.kind, parsed.is_entry) == (kind, entry)


def test_a_cover_letter_runs_to_its_signature_at_most_400_lines():
    shortlog = "\n".join(f"  KVM: change {n}" for n in range(450))
    body = (
        "Sketch of the idea:\n\ndiff --git a/f.c b/f.c\n--- a/f.c\n+++ b/f.c\n"
        "@@ -1 +1 @@\n-a\n+b\n\nThoughts?\n\nAnn Author (450):\n"
        + shortlog
        + "\n\n f.c | 900 +\n 1 file changed, 900 insertions(+)\n\n-- \n2.43.0\n"
    )
    parsed = parse_message(mail("[PATCH 000/450] a big one", "big@y", body=body))
    assert parsed.kind == "cover"
    lines = parsed.commit_message.split("\n")
    assert lines[:3] == ["Sketch of the idea:", "", "diff --git a/f.c b/f.c"]
    assert len(lines) == 402
    assert lines[-1] == "[... 65 more lines]"  # 465 lines in all
    short = parse_message(mail("[PATCH 0/2] small", "small@y", body=body.replace(shortlog, "")))
    assert short.commit_message.endswith(" 1 file changed, 900 insertions(+)")


def test_a_signature_that_lost_its_space_is_still_a_signature():
    assert cut_commit_message(["Cover.", "", "--", "2.30.0", ""]) == ["Cover."]
    # A "--" with a long text after it is prose, not a signature.
    prose = ["Before.", "--", *[f"line {n}" for n in range(6)]]
    assert cut_commit_message(prose) == prose
