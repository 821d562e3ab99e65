"""Where the wave's designs meet: what a review of the merged work found.

Each test is one finding, through the real parts where a user has them (a
daemon, a real aiosmtpd relay, LMTP mail): a line the wire splits where
Python did not, the first digest of a fresh daemon, limits that must not
keep anyone subscribed, a disk that fills under the command worker, a
taken web port, one reader's section, a server with endless epochs, a
password with an "@", words echoed twice, a digest during a rebuild, a
topic lost to a change of style, a relay's policy refusal, a digest for a
reader who left.
"""

from __future__ import annotations

import email
import socket
import sqlite3
import subprocess
import sys
from datetime import date
from email import policy
from pathlib import Path

import pytest

from bot import redact
from bot.config import Config, SmtpSection, from_table
from bot.delivery import periodic, subscribers
from bot.delivery.mail import Identity
from bot.delivery.outbox import Outbox
from bot.delivery.sender import Sender
from bot.desk.inbound import Desk
from bot.digest import personal
from bot.digest.build import environment
from bot.intake import follow
from bot.parse.message import parse_lenient
from bot.store.archive import Archive
from tests.mailfactory import PATCH_BODY, mail
from tests.test_daemon import DaemonProcess
from tests.test_durability import mirror_config

BOT = "kvm-digest@example.org"


def bot_config(tmp_path: Path, **commands: object) -> Config:
    return from_table({"data": {"dir": str(tmp_path)}, "commands": {"address": BOT, **commands}})


def command_mail(frm: str, text: str, n: int, rcpt: str = BOT) -> bytes:
    return (
        f"From: {frm}\r\nTo: {rcpt}\r\nSubject: {text.splitlines()[0]}\r\n"
        f"Message-ID: <seam{n}.{abs(hash(frm))}@example.net>\r\n\r\n{text}\r\n"
    ).encode()


def replies(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    """(recipient, text) of each reply queued, oldest first."""
    out = []
    for rcpt, raw in conn.execute(
        "SELECT recipient, message FROM outbox WHERE message IS NOT NULL ORDER BY id"
    ):
        out.append((rcpt, email.message_from_bytes(raw, policy=policy.default).get_content()))
    return out


async def drain(outbox: Outbox, port: int) -> None:
    """Send everything due through the relay at `port`, once."""
    sender = Sender(outbox, SmtpSection(host="127.0.0.1", port=port, security="none"))
    await sender.flush()


# -- 1. a line the wire splits where Python did not ----------------------------


async def test_a_long_line_holding_a_line_separator_goes_quoted_printable(store, sink):
    """U+2028 is a line end to str.splitlines(), not to SMTP: the line is 1,203
    bytes on the wire, so the digest must go quoted-printable, and arrive."""
    conn = store.index.conn
    config = bot_config(store.root)
    readers = ["a@example.org", "b@example.org", "c@example.org"]
    with conn:
        periodic.ensure(conn, "daily")
        for reader in readers:
            subscribers.subscribe(conn, reader)
    line = "x" * 600 + "\u2028" + "y" * 600
    store.add(
        mail("[PATCH] KVM: x86: long line", "l1@example.org", body=f"Why:\n{line}\n\n{PATCH_BODY}")
    )
    outbox = Outbox(conn, Identity(BOT))
    periodic.run(conn, config, outbox, environment(), "daily")
    await drain(outbox, sink.port)
    got = sink.wait_for(3)
    assert sorted(r.recipients[0] for r in got) == readers
    for r in got:
        head, _, body = r.data.partition(b"\r\n\r\n")
        assert b"Content-Transfer-Encoding: quoted-printable" in head
        assert max(len(raw_line) for raw_line in body.split(b"\r\n")) <= 998


# -- 2. the first digest of a fresh daemon ------------------------------------


def test_a_fresh_daemon_on_an_existing_mirror_starts_at_its_head(tmp_path, sink):
    """The first digest covers what came after the start, not the whole history
    (the schedule starts once the index has caught up, not before)."""
    config = mirror_config(tmp_path, sink.port, daily="*/2 * * * * *")
    archive = Archive.create(tmp_path / "mirror.git")
    raws = [mail(f"[PATCH] old change {i}", f"old{i}@x", minutes=i) for i in range(300)]
    archive.append((raw, parse_lenient(raw)) for raw in raws)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "bot.cli",
            "--config",
            str(config),
            "subscribers",
            "add",
            "reader@example.org",
        ],
        check=True,
        capture_output=True,
    )
    daemon = DaemonProcess(config)
    try:
        daemon.wait_log("daily digest:", timeout=90)
    finally:
        daemon.stop()
    first = next(line for line in daemon.lines if "daily digest:" in line)
    assert "daily digest: 0 messages" in first, first
    assert not sink.received


# -- 3. limits that must not keep anyone subscribed ---------------------------


@pytest.mark.parametrize("per_hour", [100, 5])  # past the daily cap; past the hourly limit
def test_forged_mail_cannot_use_up_a_readers_way_out(store, per_hour):
    conn = store.index.conn
    config = bot_config(store.root, per_address_per_hour=per_hour)
    desk = Desk(conn, config, Outbox(conn, Identity(BOT)), environment())
    victim = "victim@example.net"
    with conn:
        subscribers.subscribe(conn, victim)
    secret = subscribers.unsubscribe_secret(conn, victim)
    for n in range(12):  # a day's replies to the victim, used up by a forger
        desk.queue(command_mail(victim, "status", n), "x@evil.example", BOT)
    desk.process()
    answered = len(replies(conn))
    # [commands] per_address_per_day; or 5 an hour and one note that the rest wait
    assert answered == (10 if per_hour == 100 else 6)
    out = f"kvm-digest+unsubscribe-{secret}@example.org"
    desk.queue(command_mail(victim, "unsubscribe", 99, rcpt=out), victim, out)
    desk.process()
    assert subscribers.get(conn, victim).status == "unsubscribed"  # done, unanswered
    assert len(replies(conn)) == answered


def test_strangers_at_a_domain_do_not_use_up_its_subscribers_replies(store):
    conn = store.index.conn
    desk = Desk(conn, bot_config(store.root), Outbox(conn, Identity(BOT)), environment())
    reader = "realuser@gmail.com"
    with conn:
        subscribers.subscribe(conn, reader)
    for n in range(25):  # forged one-liners from 25 different gmail.com mailboxes
        desk.queue(command_mail(f"user{n}@gmail.com", "help", n), "x@evil.example", BOT)
    desk.process()
    strangers = [r for r, _ in replies(conn) if r != reader]
    assert len(strangers) == 20  # [commands] per_domain_per_day, for non-subscribers
    desk.queue(command_mail(reader, "status", 100), reader, BOT)
    desk.process()
    (text,) = [t for r, t in replies(conn) if r == reader]
    assert f"{reader}: active, daily digest." in text


def test_the_hourly_limit_defers_with_one_notice_before_the_daily_cap_drops(store):
    """With the shipped limits (5 an hour, 10 a day), the 6th reply in an hour
    waits and its mailbox is told once; nothing is dropped yet."""
    conn = store.index.conn
    desk = Desk(conn, bot_config(store.root), Outbox(conn, Identity(BOT)), environment())
    jane = "jane@example.net"
    for n in range(8):
        desk.queue(command_mail(jane, "help", n), jane, BOT)
    desk.process()
    texts = [t for r, t in replies(conn) if r == jane]
    assert len(texts) == 5 + 1  # five answers, one notice of when the rest come
    outcomes = dict(conn.execute("SELECT outcome, COUNT(*) FROM inbound GROUP BY outcome"))
    assert "dropped" not in outcomes
    waiting = conn.execute("SELECT COUNT(*) FROM inbound WHERE NOT done").fetchone()[0]
    assert waiting == 3


# -- 4. a disk that fills under the command worker ----------------------------


def test_command_mail_waits_while_the_index_cannot_be_written(store):
    conn = store.index.conn
    outbox = Outbox(conn, Identity(BOT))
    desk = Desk(conn, bot_config(store.root), outbox, environment())
    desk.queue(command_mail("bob@example.net", "help", 1), "bob@example.net", BOT)

    def full(action: int, *_: object) -> int:
        writes = (sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE)
        return sqlite3.SQLITE_DENY if action in writes else sqlite3.SQLITE_OK

    conn.set_authorizer(full)  # as a full disk: no write works
    with pytest.raises(sqlite3.DatabaseError):
        desk.process()
    conn.set_authorizer(None)
    assert conn.execute("SELECT done, handled FROM inbound").fetchone() == (0, None)
    desk.process()  # the disk is freed: the mail is answered, not lost
    assert conn.execute("SELECT done, outcome FROM inbound").fetchone() == (1, "reply")
    assert [r for r, _ in replies(conn)] == ["bob@example.net"]


# -- 5. a taken web port -------------------------------------------------------


def test_a_taken_web_port_is_the_webs_problem_alone(tmp_path, sink):
    config = mirror_config(tmp_path, sink.port)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        text = config.read_text()
        config.write_text(
            text + f'[web]\nurl = "https://digest.example.org"\nlisten = "127.0.0.1:{port}"\n'
        )
        daemon = DaemonProcess(config)
        try:
            daemon.wait_log("web: cannot listen on", timeout=60)
            daemon.wait_log("kvm-digest is running")
            assert daemon.proc.poll() is None
            assert daemon.stop() == 0
        finally:
            daemon.proc.kill()
    assert daemon.log.count("web: cannot listen on") == 1  # said once, not per retry


# -- 6. one reader's section ---------------------------------------------------


def test_a_for_you_failure_leaves_the_groups_digest_whole(store, monkeypatch):
    conn = store.index.conn
    config = bot_config(store.root)
    with conn:
        periodic.ensure(conn, "daily")
        subscribers.subscribe(conn, "alice@example.org")
        subscribers.set_personal(conn, "alice@example.org", True)
        subscribers.subscribe(conn, "bob@example.org")
    store.add(mail("[PATCH] KVM: x86: one", "a1@example.org"))

    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("data nobody foresaw")

    monkeypatch.setattr(personal, "pool", broken)
    outbox = Outbox(conn, Identity(BOT))
    result = periodic.run(conn, config, outbox, environment(), "daily")
    assert result.recipients == 2
    assert sorted(i.recipient for i in outbox.due(10)) == ["alice@example.org", "bob@example.org"]


# -- 7. a server with endless epochs, and follow_since -------------------------


def test_probing_for_the_first_epoch_stops_at_max_epochs(tmp_path, monkeypatch):
    probed: list[str] = []

    def old(url: str, inbox: Path, first: bool, env: dict[str, str]) -> int:
        probed.append(url)
        return 0  # every epoch ends in 1970: the server makes up as many as asked

    monkeypatch.setattr(follow, "_newest", old)
    number, how = follow.first_epoch("https://lore.example/kvm", date(2026, 1, 1), tmp_path, {}, 3)
    assert len(probed) == 3 and number == 2 and how == ["--depth=1"]


# -- 8. a password with an "@" --------------------------------------------------


def test_a_password_holding_an_at_sign_is_never_shown():
    url = "https://bot:s3cr@t-token@git.example.org/kvm"
    shown = redact.text(f"fetched {url}: nothing to fetch")
    assert "t-token" not in shown and "s3cr" not in shown
    assert shown == "fetched https://***@git.example.org/kvm: nothing to fetch"
    assert follow.split_credentials(url) == ("https://git.example.org/kvm", "bot:s3cr@t-token")


# -- 9. words echoed twice ----------------------------------------------------


def test_an_error_never_repeats_the_askers_words(store):
    conn = store.index.conn
    store.add(mail("[PATCH] KVM: x86: one", "a1@example.org"))
    desk = Desk(conn, bot_config(store.root), Outbox(conn, Identity(BOT)), environment())
    asks = ["digest since www.evil.example/login", "digest since https://evil.example/login"]
    for n, ask in enumerate(asks):
        desk.queue(command_mail(f"v{n}@example.net", ask, n), f"v{n}@example.net", BOT)
    desk.process()
    for _, text in replies(conn):
        assert text.count("evil.example") <= 1, text


# -- 10. a digest during a rebuild --------------------------------------------


def test_no_periodic_digest_while_the_index_is_rebuilt(store):
    conn = store.index.conn
    config = bot_config(store.root)
    store.add(
        *(mail(f"[PATCH] KVM: change {i}", f"c{i}@example.org", minutes=i) for i in range(10))
    )
    with conn:
        periodic.ensure(conn, "daily")
        periodic.move(conn, "daily", 8)
    before = periodic.place(conn, "daily")
    store.index.clear()  # a rewritten inbox, say: rebuilt in batches
    store.index.catch_up(store.archive, max_size=None, stop=lambda: True, batch=5)
    assert store.index.count() == 5 and store.index.rebuilding()
    outbox = Outbox(conn, Identity(BOT))
    with pytest.raises(periodic.Rebuilding):
        periodic.run(conn, config, outbox, environment(), "daily")
    assert periodic.place(conn, "daily") == before
    store.index.catch_up(store.archive, max_size=None)
    assert not store.index.rebuilding()
    result = periodic.run(conn, config, outbox, environment(), "daily")
    assert result.messages == 2  # the two after the place: nothing repeated, nothing skipped


# -- 11. a topic lost to a change of style -------------------------------------


def test_a_change_of_schedule_and_style_keeps_the_topic(store):
    conn = store.index.conn
    desk = Desk(conn, bot_config(store.root), Outbox(conn, Identity(BOT)), environment())
    jane = "jane@example.net"
    with conn:
        subscribers.subscribe(conn, jane, "daily", "dfn:arch/arm64/kvm/")
    desk.queue(command_mail(jane, "subscribe weekly brief", 1), jane, BOT)
    desk.process()
    token = conn.execute("SELECT message FROM outbox").fetchone()[0]
    subject = email.message_from_bytes(token, policy=policy.default)["Subject"]
    desk.queue(command_mail(jane, subject, 2), jane, BOT)
    desk.process()
    sub = subscribers.get(conn, jane)
    assert (sub.schedule, sub.style, sub.topic) == ("weekly", "brief", "dfn:arch/arm64/kvm/")


# -- 12. a relay's policy, and a reader who left ------------------------------


async def test_a_relays_policy_refusal_at_rcpt_counts_against_nobody(store, sink):
    conn = store.index.conn
    config = bot_config(store.root)
    with conn:
        periodic.ensure(conn, "daily")
        subscribers.subscribe(conn, "a@example.org")
        subscribers.subscribe(conn, "b@example.org")
    store.add(mail("[PATCH] KVM: x86: one", "a1@example.org"))
    outbox = Outbox(conn, Identity(BOT))
    sink.handler.refuse_all = "554 5.7.1 Relay access denied"
    for _ in range(4):  # more digests than [smtp] hard_failures
        periodic.run(conn, config, outbox, environment(), "daily")
        await drain(outbox, sink.port)
        store.add(mail("[PATCH] KVM: x86: more", f"m{_}@example.org", minutes=_ + 1))
    assert {s.status for s in subscribers.listing(conn)} == {"active"}
    assert all(s.hard_failures == 0 for s in subscribers.listing(conn))


async def test_a_queued_digest_is_not_sent_to_a_reader_who_left(store, sink):
    conn = store.index.conn
    with conn:
        periodic.ensure(conn, "daily")
        subscribers.subscribe(conn, "stays@example.org")
        subscribers.subscribe(conn, "leaves@example.org")
    store.add(mail("[PATCH] KVM: x86: one", "a1@example.org"))
    outbox = Outbox(conn, Identity(BOT))
    periodic.run(conn, bot_config(store.root), outbox, environment(), "daily")
    with conn:
        subscribers.unsubscribe(conn, "leaves@example.org")  # while the digest waited
    await drain(outbox, sink.port)
    assert [r.recipients[0] for r in sink.wait_for(1)] == ["stays@example.org"]
    assert conn.execute(
        "SELECT status, last_error FROM outbox WHERE recipient = 'leaves@example.org'"
    ).fetchone() == ("failed", "the reader left before it was sent")
