"""The IMAP door archives only list mail that proves it came through the list.

Real list mail (the kvmarm slices, the whole kvmarm bundle, vger's shapes)
passes the default checks; forged mail of many shapes, APPENDed to a real
Dovecot, is kept in `failures` with its reason and never reaches a digest.
DKIM and ARC are checked with dkimpy against keys served by a dnsfunc, so
no network is needed.
"""

from __future__ import annotations

import asyncio
import base64
import mailbox
import subprocess

import pytest

from bot.config import ImapSection, ListSection, from_table
from bot.intake.imap import Listener, Route
from bot.intake.provenance import Proof, hop
from tests.dovecot import Dovecot
from tests.mailfactory import BUNDLE, DATA, KVMARM, VGER, commit_ids, delivered, mail, need_shared

SLICE = [m.as_bytes() for m in mailbox.mbox(DATA / "kvmarm-slice.mbox")]
ROUND2 = [m.as_bytes() for m in mailbox.mbox(DATA / "kvmarm-round2.mbox")]
KVMARM_LIST = ListSection(address="kvmarm@lists.cs.columbia.edu", id="kvmarm.lists.cs.columbia.edu")
KVM_LIST = ListSection()  # kvm@vger.kernel.org, as shipped
DEFAULT = ImapSection()


def kvmarm() -> Proof:
    return Proof.of(DEFAULT, KVMARM_LIST)


def test_real_list_mail_passes_the_default_checks():
    proof = kvmarm()
    assert [proof.failure(raw) for raw in SLICE + ROUND2] == [None] * len(SLICE + ROUND2)
    # Only the list id configured (the address left at its default) is enough.
    only_id = Proof.of(DEFAULT, ListSection(id="kvmarm.lists.cs.columbia.edu"))
    assert all(only_id.failure(raw) is None for raw in SLICE)


def test_the_whole_kvmarm_bundle_passes(kvmarm_git):
    need_shared(BUNDLE)
    revs = commit_ids(kvmarm_git)
    batch = subprocess.run(
        ["git", "-C", str(kvmarm_git), "cat-file", "--batch"],
        input="".join(f"{r}:m\n" for r in revs).encode(),
        capture_output=True,
        check=True,
    ).stdout
    proof, failed, pos = kvmarm(), [], 0
    while pos < len(batch):
        end = batch.index(b"\n", pos)
        size = int(batch[pos:end].split()[2])
        raw = batch[end + 1 : end + 1 + size]
        pos = end + 1 + size + 1
        if (why := proof.failure(raw)) is not None:
            failed.append(why)
    # mm01 and mm02.cs.columbia.edu both, and once mm01 with its name not looked up.
    assert len(revs) == 15_000 and failed == []


OLD_VGER = (
    "Return-Path: <kvm-owner@vger.kernel.org>\n"
    "Received: from vger.kernel.org (vger.kernel.org [209.132.180.67])\n"
    "\tby mail.example.org (Postfix) with ESMTP id 1A2B3C\n"
    "\tfor <bot@example.org>; Tue,  2 Mar 2021 10:00:00 +0000 (UTC)\n"
)
GMAIL = (
    "Return-Path: <kvm+bounces-67890-bot=gmail.com@vger.kernel.org>\n"
    "Received: by 2002:a05:7010:8c19:b0:3f2:1a3b:8e1c with SMTP id ab25csp123;\n"
    "        Tue, 2 Mar 2021 02:00:01 -0800 (PST)\n"
    "Received: from sy.mirrors.kernel.org (sy.mirrors.kernel.org. [147.75.48.161])\n"
    "        by mx.google.com with ESMTPS id p7si1234567qkf.101.2021.03.02.02.00.00\n"
    "        for <bot@gmail.com>; Tue, 02 Mar 2021 02:00:01 -0800 (PST)\n"
    "Received: from smtp.subspace.kernel.org (wormhole.subspace.kernel.org [52.25.139.140])\n"
    "\tby sy.mirrors.kernel.org (Postfix) with ESMTPS id 4A5B6C\n"
    "\tfor <bot@gmail.com>; Tue,  2 Mar 2021 10:00:00 +0000 (UTC)\n"
)
INTERNAL = (  # our own side has hops too: a filter on loopback, an MX relaying to IMAP
    "Return-Path: <kvm+bounces-1-bot=example.org@vger.kernel.org>\n"
    "Received: from localhost (localhost [127.0.0.1]) by imap.example.org (Postfix);\n"
    "\tTue,  2 Mar 2021 10:00:02 +0000 (UTC)\n"
    "Received: from mx1.example.org (mx1.example.org [192.0.2.25])\n"
    "\tby imap.example.org (Postfix) with ESMTPS id 7D8E9F; Tue,  2 Mar 2021 10:00:01 +0000\n"
    "Received: from smtp.subspace.kernel.org (smtp.subspace.kernel.org [52.25.139.140])\n"
    "\tby mx1.example.org (Postfix) with ESMTPS id 1A2B3C; Tue,  2 Mar 2021 10:00:00 +0000\n"
)


def vger_mail(subject: str = "[PATCH] KVM: x86: real", msgid: str = "real@example.org") -> bytes:
    return mail(subject, msgid, headers={"List-Id": "<kvm.vger.kernel.org>"})


@pytest.mark.parametrize("via", [VGER, OLD_VGER, GMAIL, INTERNAL])
def test_vger_mail_passes_as_vger_and_mailboxes_deliver_it(via):
    assert Proof.of(DEFAULT, KVM_LIST).failure(delivered(vger_mail(), via)) is None


EVIL_HOP = (
    "Received: from evil.example (evil.example [203.0.113.5])\n"
    "\tby mx.example.org (Postfix) with ESMTP id 666; Tue,  2 Mar 2021 10:00:00 +0000\n"
)
FORGED = {
    "a List-Id alone": "",
    "no envelope, a forged trace": KVMARM.split("\n", 1)[1],
    "the list's Return-Path, sent from elsewhere": (
        "Return-Path: <kvmarm-bounces@lists.cs.columbia.edu>\n"
        + EVIL_HOP
        + KVMARM.split("\n", 1)[1]
    ),
    "a HELO naming the list host, no reverse DNS": (
        "Return-Path: <kvmarm-bounces@lists.cs.columbia.edu>\n"
        "Received: from mm01.cs.columbia.edu (unknown [203.0.113.5])\n"
        "\tby mx.example.org (Postfix) with ESMTP id 667; Tue,  2 Mar 2021 10:00:00 +0000\n"
    ),
    "a HELO naming the list host, another reverse DNS": (
        "Return-Path: <kvmarm-bounces@lists.cs.columbia.edu>\n"
        "Received: from mm01.cs.columbia.edu (mail.evil.example [203.0.113.5])\n"
        "\tby mx.example.org (Postfix) with ESMTP id 668; Tue,  2 Mar 2021 10:00:00 +0000\n"
    ),
    "the list's trace, another envelope": (
        "Return-Path: <attacker@evil.example>\n" + KVMARM.split("\n", 1)[1]
    ),
    "a bounce's envelope": "Return-Path: <>\n" + KVMARM.split("\n", 1)[1],
    "the list's Sender, an attacker's envelope": (
        "Return-Path: <attacker@evil.example>\nSender: kvmarm-bounces@lists.cs.columbia.edu\n"
        + KVMARM.split("\n", 1)[1]
    ),
    "the list's Sender, no trace": "Sender: kvmarm-bounces@lists.cs.columbia.edu\n",
    "a look-alike bounce address": (
        "Return-Path: <kvmarm-bounces@lists.cs.columbia.edu.evil.example>\n"
        + KVMARM.split("\n", 1)[1]
    ),
    "a look-alike list host": (
        "Return-Path: <kvmarm-bounces@lists.cs.columbia.edu>\n"
        "Received: from mm01.cs.columbia.edu.evil.example (mm01.cs.columbia.edu.evil.example"
        " [203.0.113.5])\n\tby mx.example.org; Tue,  2 Mar 2021 10:00:00 +0000\n"
    ),
}
PHISH = "Your kernel.org account is locked: log in at http://evil.example/login.\n"


def forged(shape: str, to_list: bool = False) -> bytes:
    """A phishing "cover letter" sent straight to the bot's mailbox."""
    headers = {} if to_list else {"List-Id": "<kvmarm.lists.cs.columbia.edu>"}
    raw = mail(
        "[PATCH 0/3] KVM: urgent security update",
        f"phish-{abs(hash(shape))}@evil.example",
        frm="Marc Zyngier <maz@kernel.org>",
        body=PHISH,
        headers=headers,
    )
    if to_list:  # no List-Id at all: addressed to the list instead
        raw = raw.replace(b"List-Id: <kvm.vger.kernel.org>\n", b"").replace(
            b"To: kvm@vger.kernel.org", b"To: kvmarm@lists.cs.columbia.edu"
        )
    return FORGED[shape].encode() + raw


@pytest.mark.parametrize("shape", sorted(FORGED))
def test_forged_shapes_fail_with_a_reason(shape):
    why = kvmarm().failure(forged(shape))
    assert why, shape
    assert len(why) < 300 and "\n" not in why


def test_hops_are_read_as_the_receiving_server_verified_them():
    assert hop("from helo.example (rdns.example [192.0.2.1]) by mx.example.org").host == (
        "rdns.example"
    )
    assert hop("from helo.example (unknown [192.0.2.1]) by mx.example.org").host is None
    exim = hop("from vger.kernel.org ([209.132.180.67]:33044 helo=vger.kernel.org) by mx.x.org")
    assert (exim.host, exim.ip) == ("vger.kernel.org", "209.132.180.67")
    gmail = hop("from a.kernel.org (a.kernel.org. [IPv6:2604:1380:4641:c500::1]) by mx.google.com")
    assert (gmail.host, gmail.ip) == ("a.kernel.org", "2604:1380:4641:c500::1")
    assert not hop("by 2002:a05:7010:8c19 with SMTP id ab25csp123;").has_from


def test_an_unverified_list_host_counts_only_at_an_address_seen_verified():
    proof = kvmarm()
    unknown = "Received: from mm01.cs.columbia.edu (unknown [128.59.11.253]) by mx.example.org\n"
    raw = ("Return-Path: <kvmarm-bounces@lists.cs.columbia.edu>\n" + unknown).encode() + SLICE[0]
    assert "reached us from '128.59.11.253'" in proof.failure(raw)
    assert proof.failure(SLICE[0]) is None  # mm01.cs.columbia.edu [128.59.11.253], verified
    assert proof.failure(raw) is None
    elsewhere = raw.replace(b"128.59.11.253", b"198.51.100.7")
    assert proof.failure(elsewhere)


def config_checks(require: list[str]) -> ImapSection:
    return from_table({"imap": {"require": require}}).imap


async def run_listener(server: Dovecot, store, proof: Proof | None = None) -> Listener:
    settings = server.imap_settings()
    routes = Route("kvmarm.lists.cs.columbia.edu", "kvmarm@lists.cs.columbia.edu", "")
    listener = Listener(settings, store.importer, routes, proof=proof)
    stop = asyncio.Event()
    task = asyncio.create_task(listener.run(stop))
    await asyncio.wait_for(listener.ready.wait(), 30)
    stop.set()
    await task
    return listener


async def test_forged_list_mail_in_the_mailbox_is_kept_not_archived(store, cli, tmp_path):
    server = Dovecot().start()
    try:
        shapes = sorted(FORGED)
        server.append(
            *SLICE[:3],
            *[forged(s) for s in shapes],
            forged("a List-Id alone", to_list=True),
            SLICE[3],
        )
        await run_listener(server, store)
    finally:
        server.cleanup()
    conn = store.index.conn
    subjects = [r[0] for r in conn.execute("SELECT subject FROM messages")]
    assert len(subjects) == 4 and not any("urgent security" in s for s in subjects)
    failures = conn.execute("SELECT source, reason FROM failures ORDER BY id").fetchall()
    assert len(failures) == len(shapes) + 1
    assert all(reason.startswith("not list mail: ") for _, reason in failures)
    # The admin sees each, and why.
    listed = cli("--data-dir", store.root, "failed").out
    assert listed.count("not list mail") == len(shapes) + 1
    assert "Return-Path" in listed and "not from the list's servers" in listed


async def test_require_is_configurable(store):
    server = Dovecot().start()
    try:
        server.append(
            forged("the list's Return-Path, sent from elsewhere"), forged("a List-Id alone")
        )
        # Only the envelope: the first passes (its trace is not asked for).
        proof = Proof.of(config_checks(["envelope"]), KVMARM_LIST)
        await run_listener(server, store, proof)
    finally:
        server.cleanup()
    (count,) = store.index.conn.execute("SELECT COUNT(*) FROM messages").fetchone()
    assert count == 1
    # An empty list trusts the mailbox (a folder only a trusted filter fills).
    assert Proof.of(config_checks([]), KVMARM_LIST).failure(forged("a List-Id alone")) is None


def test_unknown_checks_are_refused_in_the_config():
    from bot.config import ConfigError

    with pytest.raises(ConfigError, match="the checks are envelope, received, dkim, arc"):
        from_table({"imap": {"require": ["envelope", "spf"]}})


# -- DKIM and ARC (dkimpy), keys served by a dnsfunc ---------------------------


@pytest.fixture(scope="module")
def key(tmp_path_factory) -> tuple[bytes, bytes]:
    """(private key PEM, its DNS TXT record) for selector `list`."""
    root = tmp_path_factory.mktemp("dkim")
    subprocess.run(
        ["openssl", "genrsa", "-out", str(root / "k.pem"), "1024"], check=True, capture_output=True
    )
    der = subprocess.run(
        ["openssl", "rsa", "-in", str(root / "k.pem"), "-pubout", "-outform", "DER"],
        check=True,
        capture_output=True,
    ).stdout
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)
    return (root / "k.pem").read_bytes(), record


def dns_for(record: bytes):
    """A dnsfunc serving the key for selector `list` of any domain (the forger's too)."""
    lookups: list[bytes] = []

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        lookups.append(name)
        return record if name.startswith(b"list._domainkey.") else None

    dnsfunc.lookups = lookups  # type: ignore[attr-defined]
    return dnsfunc


def signed(raw: bytes, key: bytes, domain: bytes = b"lists.cs.columbia.edu") -> bytes:
    import dkim

    crlf = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return (
        dkim.sign(crlf, b"list", domain, key, include_headers=[b"from", b"subject", b"list-id"])
        + crlf
    )


def sealed(raw: bytes, key: bytes, domain: bytes = b"lists.cs.columbia.edu") -> bytes:
    import dkim

    crlf = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    crlf = b"Authentication-Results: " + domain + b"; spf=pass smtp.mailfrom=example.org\r\n" + crlf
    return b"".join(dkim.arc_sign(crlf, b"list", domain, key, domain)) + crlf


async def test_dkim_and_arc_of_the_list_domain_when_required(store, key):
    private, record = key
    good = mail(
        "[PATCH] KVM: signed by the list",
        "dkim-good@example.org",
        headers={"List-Id": "<kvmarm.lists.cs.columbia.edu>"},
    )
    tampered = signed(
        mail(
            "[PATCH] KVM: was signed",
            "dkim-bad@example.org",
            headers={"List-Id": "<kvmarm.lists.cs.columbia.edu>"},
        ),
        private,
    ).replace(b"Make the thing work.", b"Log in at http://evil.example/.")
    stranger = signed(
        mail(
            "[PATCH] KVM: signed elsewhere",
            "dkim-evil@example.org",
            headers={"List-Id": "<kvmarm.lists.cs.columbia.edu>"},
        ),
        private,
        b"evil.example",
    )
    dnsfunc = dns_for(record)
    dkim_proof = Proof.of(config_checks(["dkim"]), KVMARM_LIST, dnsfunc)
    assert dkim_proof.slow  # run off the event loop
    server = Dovecot().start()
    try:
        server.append(signed(good, private), tampered, stranger, good)
        await run_listener(server, store, dkim_proof)
    finally:
        server.cleanup()
    subjects = [r[0] for r in store.index.conn.execute("SELECT subject FROM messages")]
    assert subjects == ["[PATCH] KVM: signed by the list"]
    reasons = [r[0] for r in store.index.conn.execute("SELECT reason FROM failures")]
    # Tampered, signed by another domain, not signed at all.
    assert len(reasons) == 3 and all("no valid DKIM signature" in r for r in reasons)
    assert dnsfunc.lookups  # the key came from the dnsfunc, not the network
    arc_proof = Proof.of(config_checks(["arc"]), KVMARM_LIST, dns_for(record))
    assert arc_proof.failure(sealed(good, private)) is None
    assert arc_proof.failure(sealed(good, private).replace(b"the thing", b"a thing"))
    assert arc_proof.failure(sealed(good, private, b"evil.example"))
    assert arc_proof.failure(good)


def test_hostile_mail_never_stops_the_checks():
    """dkimpy raises on some hostile mail: that mail is refused with why, never a crash."""
    from tests.test_hostile import FILES

    proof = Proof.of(config_checks(["envelope", "received", "dkim", "arc"]), KVMARM_LIST)
    arc_only = Proof.of(config_checks(["arc"]), KVMARM_LIST, dns_for(b""))
    broken = b"ARC-Seal: i=1; cv=none; d=x; s=y; b=!!\r\nDKIM-Signature: v=1; d=x; b=?\r\n"
    for path in FILES:
        for raw in (path.read_bytes(), broken + delivered(path.read_bytes(), KVMARM)):
            assert proof.failure(raw)
            assert arc_only.failure(raw)
