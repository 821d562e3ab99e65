""" "Waiting for review" and "For you" end to end: the daemon as a process,
list mail through Dovecot, `personal on` by LMTP and confirmed by its token,
digests through a real aiosmtpd relay, read from the raw bytes received."""

from __future__ import annotations

import re
import smtplib
import time

from tests.mailfactory import COVER_BODY, KVMARM, PATCH_BODY, delivered, mail
from tests.test_daemon import (  # noqa: F401 (fixtures)
    BOT,
    DaemonProcess,
    config,
    dovecot,
    lmtp_port,
    subscribe,
)

DAY = 24 * 60
ALICE = "alice@example.org"
BOB = "bob@example.org"
LIST = {"List-Id": "<kvmarm.lists.cs.columbia.edu>"}  # the Dovecot config's list
WAITING = "[PATCH 0/2] KVM: arm64: Nobody has looked at this"
FOR_ALICE = "[PATCH 1/1] KVM: arm64: Please look, Alice"


def list_mail() -> list[bytes]:
    """Carol's series nobody answers (day 0), one that Cc's Alice by a plus
    address behind a quoted name (day 7.5), and traffic up to day 8."""
    cover = "wait-0@example.org"
    carol = "Carol Coder <carol@example.net>"
    out = [mail(WAITING, cover, frm=carol, body=COVER_BODY, headers=LIST)]
    out += [
        mail(
            f"[PATCH {n}/2] KVM: arm64: Part {n}",
            f"wait-{n}@example.org",
            frm=carol,
            body=PATCH_BODY,
            irt=cover,
            refs=[cover],
            minutes=n,
            headers=LIST,
        )
        for n in (1, 2)
    ]
    out.append(
        mail(
            FOR_ALICE,
            "alice-1@example.org",
            frm="John Roe <john@example.com>",
            body=PATCH_BODY,
            minutes=7 * DAY + 12 * 60,
            headers={**LIST, "Cc": '"Liddell, Alice (KVM)" <Alice+kvm@Example.ORG>'},
        )
    )
    out += [
        mail(
            "KVM: a question",
            f"q{i}@example.org",
            frm="Dan <dan@example.com>",
            body="How are vcpu ids chosen?\n",
            minutes=7 * DAY + 13 * 60 + i * 60,
            headers=LIST,
        )
        for i in range(8)
    ]
    return out


def lmtp(config_path, frm: str, text: str) -> None:
    raw = f"From: {frm}\r\nTo: {BOT}\r\nSubject: {text}\r\nMessage-ID: <{time.time_ns()}@x>\r\n\r\n"
    with smtplib.LMTP("127.0.0.1", lmtp_port(config_path)) as client:
        client.sendmail(frm, [BOT], raw.encode())


def body(data: bytes) -> str:
    """The body as a client reads it: the raw bytes after the header block
    (8bit UTF-8: the digest declares it), CRLF made LF."""
    head, _, rest = data.partition(b"\r\n\r\n")
    assert re.search(rb"(?im)^Content-Transfer-Encoding: 8bit\r$", head + b"\r"), head
    return rest.decode("utf-8").replace("\r\n", "\n")


def digests(sink, address: str) -> list[str]:
    return [
        body(r.data)
        for r in sink.to(address)
        if r.message["Subject"].startswith("KVM mailing list update")
    ]


def queued(daemon: DaemonProcess) -> int:
    """Messages covered by the digest runs that queued mail, so far."""
    return sum(
        int(m.group(1))
        for line in daemon.log.splitlines()
        if (m := re.search(r"daily digest: (\d+) messages, \d+ digests queued", line))
    )


def test_two_subscribers_one_personal_each_mailbox_holds_its_sections(config, dovecot, sink):  # noqa: F811
    subscribe(config, ALICE, BOB)
    mails = list_mail()
    daemon = DaemonProcess(config)
    try:
        daemon.wait_log("kvm-digest is running")
        lmtp(config, f"Alice <{ALICE}>", "personal on")
        (confirmation,) = daemon.expect(sink.wait_for, 1)
        token = confirmation.message["Subject"].split()[1]
        lmtp(config, f"Alice <{ALICE}>", f"confirm {token}")
        daemon.expect(sink.wait_for, 2)
        dovecot.append(*(delivered(m, KVMARM) for m in mails))  # as the list delivers them
        deadline = time.monotonic() + 60
        while queued(daemon) < len(mails):
            assert time.monotonic() < deadline, daemon.log
            daemon.wait_log("daily digest:", count=daemon.log.count("daily digest:") + 1)
        runs = daemon.log.count("digests queued")
        daemon.expect(sink.wait_for, 2 + 2 * runs)
        assert daemon.stop() == 0
    finally:
        daemon.proc.kill()
    confirmed = [r for r in sink.to(ALICE) if r.message["Subject"].startswith("Re:")]
    assert "'For you' is now on for alice@example.org" in body(confirmed[0].data)

    alice, bob = digests(sink, ALICE), digests(sink, BOB)
    assert len(alice) == len(bob) == runs
    # Both read the same waiting section, once in the whole schedule.
    for mailbox in (alice, bob):
        waits = [d for d in mailbox if "===== Waiting for review (7 days, no reply) =====" in d]
        assert len(waits) == 1
        assert (
            f"\n{WAITING}\n    Carol Coder <carol@example.net>, posted 2021-03-01, 2/2 patches"
            in (waits[0])
        )
    # Only Alice's digests start with her section, right under the header lines.
    assert not any("For you" in d for d in bob)
    mine = [d for d in alice if "===== For you" in d]
    assert len(mine) == 1
    header, after = mine[0].split("\n\n", 1)
    assert header.startswith("From ") and header.count("\n") == 1
    assert after.startswith(
        f"===== For you ({ALICE}) =====\n\nAddressed to you:\n{FOR_ALICE}\n"
        "    John Roe <john@example.com>, 1/1 patches\n"
        "    https://lore.kernel.org/kvm/alice-1@example.org/\n\nTop 15 contributor"
    )
    # Otherwise Alice's copy of that digest is Bob's, line for line, but for
    # the footer's own unsubscribe link.
    twin = bob[alice.index(mine[0])]
    unfooted = lambda text: text.rsplit("\n-- \n", 1)[0]  # noqa: E731
    assert unfooted(mine[0].replace(after[: after.index("Top 15")], "")) == unfooted(twin)
