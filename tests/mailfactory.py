"""Realistic test mail, shaped the way git send-email and mail clients write it."""

from __future__ import annotations

import os
import re
import subprocess
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest

from bot.intake.importer import Importer
from bot.store.archive import Archive
from bot.store.index import Index

DATA = Path(__file__).parent / "data"
# The project's shared data sits beside the checkout (CI always has it);
# $KVM_DIGEST_SHARED points elsewhere, e.g. from a git worktree.
SHARED = Path(os.environ.get("KVM_DIGEST_SHARED") or Path(__file__).resolve().parents[2] / "shared")
BUNDLE = SHARED / "data" / "kvmarm-2019-2021.bundle"


def need_shared(path: Path) -> Path:
    """`path` under ../shared; without it, skip with one line, or fail in CI.

    A user's clone has no ../shared beside it, and the rest of the suite does
    not need it, so there the test is skipped with the reason. CI (`CI` set)
    always has it: there a missing file is a real failure.
    """
    if not path.exists():
        reason = (
            f"{path} is absent: this test needs the project's shared data beside the "
            "checkout (../shared) or $KVM_DIGEST_SHARED"
        )
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return path


START = datetime(2021, 3, 1, 9, 0, tzinfo=UTC)

PATCH_BODY = """\
Make the thing work.

Signed-off-by: Ann Author <ann@example.org>
---
 virt/kvm/thing.c | 1 +
 1 file changed, 1 insertion(+)

diff --git a/virt/kvm/thing.c b/virt/kvm/thing.c
index 1111111..2222222 100644
--- a/virt/kvm/thing.c
+++ b/virt/kvm/thing.c
@@ -1 +1,2 @@
 int thing;
+int other_thing;
--
2.43.0
"""

COVER_BODY = """\
This series makes the thing work.

Ann Author (2):
  KVM: one
  KVM: two

 virt/kvm/thing.c | 2 ++
 1 file changed, 2 insertions(+)

--
2.43.0
"""


def mail(
    subject: str,
    msgid: str | None,
    frm: str = "Ann Author <ann@example.org>",
    body: str = PATCH_BODY,
    irt: str | None = None,
    refs: tuple[str, ...] | list[str] = (),
    minutes: int = 0,
    headers: dict[str, str] | None = None,
) -> bytes:
    """One raw message; `minutes` after START is both its Date and Received."""
    when = format_datetime(START + timedelta(minutes=minutes))
    lines = [
        f"Received: from mail.example.org by lists.example.org; {when}",
        f"From: {frm}",
        "To: kvm@vger.kernel.org",
        f"Subject: {subject}",
        f"Date: {when}",
    ]
    if msgid:
        lines.append(f"Message-ID: <{msgid}>")
    if irt:
        lines.append(f"In-Reply-To: <{irt}>")
    if refs:
        lines.append("References: " + " ".join(f"<{r}>" for r in refs))
    lines += ["MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8"]
    # The list's List-Id unless the caller gives its own.
    for name, value in {"List-Id": "<kvm.vger.kernel.org>", **(headers or {})}.items():
        lines.append(f"{name}: {value}")
    return ("\n".join(lines) + "\n\n" + body).encode()


VGER = (
    "Return-Path: <kvm+bounces-12345-kvm-digest=example.org@vger.kernel.org>\n"
    "Received: from smtp.subspace.kernel.org (smtp.subspace.kernel.org [52.25.139.140])\n"
    "\tby mx.example.org (Postfix) with ESMTPS id 4F1C2A0123\n"
    "\tfor <kvm-digest@example.org>; Mon,  1 Mar 2021 10:00:01 +0000 (UTC)\n"
)
"""What the bot's mail server puts on top of vger's list mail as it delivers it."""
KVMARM = (
    "Return-Path: <kvmarm-bounces@lists.cs.columbia.edu>\n"
    "Received: from mm01.cs.columbia.edu (mm01.cs.columbia.edu [128.59.11.253])\n"
    "\tby mx.example.org (Postfix) with ESMTP id 354B01067E\n"
    "\tfor <kvm-digest@example.org>; Mon,  1 Mar 2021 10:00:01 +0000 (UTC)\n"
)
"""The same for the kvmarm list (Mailman 2 at lists.cs.columbia.edu)."""


def delivered(raw: bytes, via: str = VGER) -> bytes:
    """`raw` as the bot's mailbox holds it once the list delivered it: the list's
    envelope sender and the hop from the list's server on top (bot/intake/provenance.py).

    The hop is stamped with the mail's own Date, as if delivered the moment it
    was sent: the arrival time (the top Received stamp) keeps the mail's place
    in time, which ranges and "Waiting for review" go by.
    """
    date = re.search(rb"(?mi)^Date:[ \t]*(.+?)\r?$", raw.partition(b"\n\n")[0])
    if date:
        via = re.sub(r"; [^;\n]*\(UTC\)\n", f"; {date.group(1).decode()}\n", via, count=1)
    return via.encode() + raw


def commit_ids(repo: Path) -> list[str]:
    """The commits of a public-inbox epoch's master, oldest first."""
    return subprocess.run(
        ["git", "-C", str(repo), "rev-list", "--reverse", "master"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()


def first_commits(source: Path, dest: Path, count: int) -> Path:
    """A bare copy of a public-inbox epoch cut to its first `count` commits."""
    revs = commit_ids(source)
    subprocess.run(["git", "init", "--quiet", "--bare", str(dest)], check=True)
    subprocess.run(
        [
            "git",
            "-C",
            str(dest),
            "fetch",
            "--quiet",
            str(source),
            f"{revs[count - 1]}:refs/heads/master",
        ],
        check=True,
    )
    return dest


class Store:
    """A throwaway archive + index, fed through the real importer."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.archive = Archive.create(root / "archive.git")
        self.index = Index(root / "index.sqlite3")
        self.importer = Importer(self.archive, self.index, 10 * 1024 * 1024)

    def add(self, *raws: bytes) -> None:
        for raw in raws:
            self.importer.add_one(raw, "test")

    def row(self, message_id: str) -> dict:
        cur = self.index.conn.execute("SELECT * FROM messages WHERE message_id = ?", (message_id,))
        names = [d[0] for d in cur.description]
        found = cur.fetchone()
        assert found is not None, f"{message_id} is not indexed"
        return dict(zip(names, found, strict=True))

    def series_of(self, message_id: str) -> str | None:
        return self.row(message_id)["series_id"]


def without_footer(text: str) -> str:
    """A mailed digest's text without its footer (`-- ` and what follows):
    what `kvm-digest digest` prints for the same range."""
    head, sep, _ = text.rpartition("\n-- \n")
    assert sep, "no footer: a mailed digest ends with '-- ' and a few lines"
    return head + "\n"
