"""Only a refusal of that recipient counts against it (issue 19, finding 3).

Relay-side refusals used to disable every subscriber: a 554 at DATA (a
content filter, and list posters control the content), a 553 at MAIL FROM,
a 535 to AUTH or a 4xx until `max_attempts`, each counted as every
recipient's hard failure; 100 of 100 subscribers disabled after 3 digests.
Now only a 5xx at RCPT counts, and not even that when the relay refuses
everyone in a row. Everything else stops the worker, says so once and
waits in the outbox; a digest's content refused twice fails its copies
without counting them. Real aiosmtpd relays refuse at each step, through
the outbox worker and through the daemon.
"""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
import sys

import pytest

from bot.cli import main
from bot.config import from_table
from bot.delivery import subscribers
from bot.delivery.mail import Identity
from bot.delivery.outbox import Outbox
from bot.delivery.sender import RELAY_REFUSES_ALL, Sender
from bot.parse.message import parse_lenient
from bot.store.archive import Archive
from tests.mailfactory import mail
from tests.smtpsink import Sink
from tests.test_daemon import BOT, DaemonProcess
from tests.test_delivery import Setup, make_due
from tests.test_durability import mirror_config

READERS = [f"reader{i:02d}@example.org" for i in range(20)]


@pytest.fixture
def setup(tmp_path, sink) -> Setup:
    s = Setup(tmp_path / "s", sink)
    s.subscribe(*READERS)
    return s


def standing(setup: Setup) -> dict[str, tuple[str, int]]:
    """Each subscriber's status and hard failures."""
    return {
        s.address: (s.status, s.hard_failures)
        for s in subscribers.listing(setup.conn)
        if s.address in READERS
    }


def nobody_counted(setup: Setup) -> bool:
    return set(standing(setup).values()) == {("active", 0)}


def relay_errors(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.ERROR and r.getMessage().startswith("relay:")
    ]


def later(setup: Setup, seconds: int = 86400) -> None:
    """Time passes for the outbox: every retry comes `seconds` nearer, in its order."""
    with setup.conn:
        setup.conn.execute("UPDATE outbox SET next_attempt = next_attempt - ?", (seconds,))


async def digests(setup: Setup, count: int, start: int = 0) -> None:
    """`count` daily digests, each flushed to the relay, then again a while later."""
    for n in range(count):
        setup.post(1, start=start + n)
        setup.run()
        await setup.sender.flush()
        later(setup)
        await setup.sender.flush()


async def test_a_content_filter_fails_the_digest_not_its_readers(setup, sink, caplog):
    sink.handler.refuse_data = "554 5.7.1 message content rejected"
    with caplog.at_level(logging.INFO):
        await digests(setup, 3)
    # No point in 20 copies of each digest meeting the same refusal.
    assert sink.handler.refused["data"] <= 2 * 3
    assert setup.outbox.counts() == {"failed": 60}
    assert nobody_counted(setup)
    assert len(relay_errors(caplog)) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("other queued copies failed, counted against nobody" in e for e in errors)
    sink.handler.refuse_data = ""
    await digests(setup, 1, start=3)
    assert sorted(r.recipients[0] for r in sink.received) == READERS


async def test_a_digest_too_big_for_the_relay_fails_its_copies_uncounted(setup, sink):
    """RFC 3463's 5.3.4 (or 552 at MAIL FROM, with SIZE): this message, never the reader."""
    sink.handler.refuse_mail = "552 5.3.4 Message size exceeds fixed maximum message size"
    await digests(setup, 1)
    assert sink.handler.refused["mail"] == 2
    assert setup.outbox.counts() == {"failed": 20}
    assert nobody_counted(setup)


async def test_a_refused_sender_keeps_the_mail_queued(setup, sink, caplog):
    sink.handler.refuse_mail = "553 5.7.1 <kvm-digest+bounce@example.org>: sender rejected"
    with caplog.at_level(logging.INFO):
        await digests(setup, 3)
        assert setup.outbox.counts() == {"queued": 60}
        assert sink.handler.refused["mail"] <= 3 * 2  # the worker stops at the first
        assert nobody_counted(setup)
        assert len(relay_errors(caplog)) == 1
        sink.handler.refuse_mail = ""
        make_due(setup)
        await setup.sender.flush()
    assert len(sink.received) == 60
    assert setup.outbox.counts() == {"sent": 60}
    assert any("relay works again" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "step, answer, outcome",
    [
        ("refuse_mail", "451 4.3.0 temporary failure, try again later", {"queued": 20}),
        ("refuse_data", "554 5.7.1 Message rejected as spam", {"failed": 20}),
    ],
)
async def test_one_refusal_met_on_every_connection_backs_off_once(
    setup, sink, caplog, step, answer, outcome
):
    """Eight mails in flight meet one outage: one step of backoff (a first
    wait of 1 s, not the 128 s of eight steps), and one line for it."""
    setattr(sink.handler, step, answer)
    smtp = {"host": "127.0.0.1", "port": sink.port, "security": "none", "connections": 8}
    sender = Sender(setup.outbox, from_table({"smtp": smtp}).smtp)
    stop = asyncio.Event()

    async def first_wait(stop: asyncio.Event, seconds: float) -> None:
        waited.append(seconds)
        stop.set()

    waited: list[float] = []
    sender._wait = first_wait
    setup.post(1)
    setup.run()
    with caplog.at_level(logging.INFO):
        await sender.run(stop)
    assert sum(sink.handler.refused.values()) > 1  # several connections met it at once
    assert sender.relay_backoff.failures == 1
    assert len(waited) == 1 and waited[0] <= 1.2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == (1 if step == "refuse_mail" else 2), errors  # + copies failed
    assert setup.outbox.counts() == outcome


async def test_a_temporary_refusal_until_max_attempts_counts_against_nobody(tmp_path, sink):
    setup = Setup(tmp_path / "s", sink)
    setup.config = from_table(
        {
            "commands": {"address": BOT},
            "smtp": {
                "host": "127.0.0.1",
                "port": sink.port,
                "security": "none",
                "max_attempts": 3,
                "hard_failures": 1,
            },
        }
    )
    setup.sender = Sender(setup.outbox, setup.config.smtp)
    setup.subscribe(*READERS[:8])
    sink.handler.refuse_all = "451 4.3.0 temporary lookup failure"
    setup.post(1)
    setup.run()
    for _ in range(20):  # far more tries than max_attempts allows each mail
        await setup.sender.flush()
        make_due(setup)
    assert setup.outbox.counts() == {"failed": 8}
    assert {s.status for s in subscribers.listing(setup.conn)} == {"active"}
    assert {s.hard_failures for s in subscribers.listing(setup.conn)} == {0}


async def test_a_relay_that_refuses_every_recipient_counts_against_nobody(setup, sink, caplog):
    sink.handler.refuse_all = "554 5.7.1 Relay access denied"
    with caplog.at_level(logging.INFO):
        await digests(setup, 3)  # hard_failures = 2 would have disabled everyone
    assert nobody_counted(setup)
    assert setup.outbox.counts() == {"queued": 60}  # put back: the relay, not they, refused
    assert sink.handler.refused["rcpt"] <= 3 * 2 * RELAY_REFUSES_ALL
    assert len(relay_errors(caplog)) == 1
    sink.handler.refuse_all = ""
    make_due(setup)
    await setup.sender.flush()
    assert setup.outbox.counts() == {"sent": 60}


async def test_only_the_refused_recipient_counts(setup, sink):
    """Among recipients the relay takes, one it refuses is its own refusal."""
    sink.handler.refuse = {READERS[3]: "550 5.1.1 no such user"}
    await digests(setup, 2)  # Setup's hard_failures = 2
    status = standing(setup)
    assert status.pop(READERS[3]) == ("disabled", 2)
    assert set(status.values()) == {("active", 0)}


async def test_one_dead_reader_alone_is_still_counted(tmp_path, sink):
    setup = Setup(tmp_path / "s", sink)
    setup.subscribe("gone@example.org")
    sink.handler.refuse = {"gone@example.org": "550 5.1.1 no such user"}
    await digests(setup, 2)
    assert subscribers.get(setup.conn, "gone@example.org").status == "disabled"


async def test_dead_readers_first_in_the_queue_are_counted_once_others_get_through(tmp_path, sink):
    """More dead addresses in a row than the streak allows: a pause, then their own."""
    setup = Setup(tmp_path / "s", sink)
    dead = [f"dead{i}@example.org" for i in range(RELAY_REFUSES_ALL + 1)]
    live = [f"live{i}@example.org" for i in range(4)]
    setup.subscribe(*dead, *live)
    sink.handler.refuse = {d: "550 5.1.1 no such user" for d in dead}
    await digests(setup, 3)
    for d in dead:
        assert subscribers.get(setup.conn, d).status == "disabled", d
    assert {subscribers.get(setup.conn, a).status for a in live} == {"active"}
    assert sorted({r.recipients[0] for r in sink.received}) == live


async def test_a_refused_login_keeps_everything_queued(tmp_path, caplog):
    from tests.dovecot import make_certificates

    (tmp_path / "certs").mkdir()
    make_certificates(tmp_path / "certs")
    relay = Sink(tmp_path / "certs").start()  # it knows no users: 535 to every login
    try:
        config = from_table(
            {
                "commands": {"address": BOT},
                "smtp": {
                    "host": "localhost",
                    "port": relay.port,
                    "security": "starttls",
                    "user": "bot",
                    "password": "rotated-meanwhile",
                    "cafile": str(tmp_path / "certs" / "ca.pem"),
                },
            }
        )
        setup = Setup(tmp_path / "s", relay)
        setup.subscribe(*READERS)
        sender = Sender(Outbox(setup.conn, Identity(BOT)), config.smtp)
        with caplog.at_level(logging.INFO):
            for n in range(3):
                setup.post(1, start=n)
                setup.run()
                await sender.flush()
    finally:
        relay.stop()
    assert setup.outbox.counts() == {"queued": 60}
    assert {a for (a,) in setup.conn.execute("SELECT attempts FROM outbox")} == {0}
    assert nobody_counted(setup)
    (error,) = relay_errors(caplog)
    assert "at AUTH: 535" in error


async def test_a_refused_reply_to_a_forged_sender_is_no_operator_error(tmp_path, sink, caplog):
    from tests.test_commands import Bot, command

    bot = await Bot(tmp_path / "var", sink).start()
    sink.handler.refuse = {"nobody@example.org": "550 5.1.1 <nobody@example.org>: no such user"}
    try:
        with caplog.at_level(logging.INFO):
            await bot.ask(command("help\n", frm="nobody@example.org"))
    finally:
        await bot.close()
    refused = [r for r in caplog.records if "nobody@example.org" in r.getMessage()]
    assert any("was refused at RCPT TO: 550" in r.getMessage() for r in refused)
    assert max(r.levelno for r in refused) == logging.INFO


async def test_replies_to_forged_senders_never_pass_for_a_relay_refusing_everyone(
    setup, sink, caplog
):
    """A flood of commands from addresses that do not exist: their replies fail, alone."""
    forged = [f"nobody{i}@example.net" for i in range(3 * RELAY_REFUSES_ALL)]
    sink.handler.refuse = {a: "550 5.1.1 no such user" for a in forged}
    with setup.conn:
        for a in forged:
            mid = setup.outbox.me.new_message_id()
            setup.outbox.enqueue(a, b"Subject: Re: help\r\n\r\nhelp\r\n", mid)
    setup.post(1)
    setup.run()
    with caplog.at_level(logging.INFO):
        await setup.sender.flush()
    assert sorted(r.recipients[0] for r in sink.received) == READERS
    assert relay_errors(caplog) == []
    assert max(r.levelno for r in caplog.records if "nobody" in r.getMessage()) == logging.INFO


async def test_replies_a_content_filter_refuses_fail_alone(setup, sink, caplog):
    """A reply quotes a line of its asker: filtered, it must not stop the digests."""
    with setup.conn:
        for i in range(10):
            mid = setup.outbox.me.new_message_id()
            setup.outbox.enqueue(f"asker{i}@example.net", b"Subject: Re: x\r\n\r\nspam\r\n", mid)
    setup.post(1)
    setup.run()
    sink.handler.refuse_data = "554 5.7.1 message content rejected"
    real = sink.handler.handle_DATA

    async def only_replies(server, session, envelope):  # the filter hates the replies
        if b"spam" in envelope.original_content:
            return await real(server, session, envelope)
        saved, sink.handler.refuse_data = sink.handler.refuse_data, ""
        try:
            return await real(server, session, envelope)
        finally:
            sink.handler.refuse_data = saved

    sink.handler.handle_DATA = only_replies
    with caplog.at_level(logging.INFO):
        await setup.sender.flush()
    assert sorted(r.recipients[0] for r in sink.received) == READERS
    assert relay_errors(caplog) == []
    assert setup.outbox.counts() == {"failed": 10, "sent": 20}


# -- through the daemon ---------------------------------------------------


@pytest.mark.parametrize(
    "step, answer",
    [
        ("refuse_data", "554 5.7.1 Message rejected as spam by Content Filtering"),
        ("refuse_mail", "553 5.7.1 Sender address rejected: not owned by user"),
        ("refuse_all", "554 5.7.1 Relay access denied"),
    ],
)
def test_the_daemon_stops_at_a_relay_refusal_and_disables_nobody(tmp_path, sink, step, answer):
    config = mirror_config(tmp_path, sink.port, daily="*/2 * * * * *")
    readers = READERS[:12]
    assert main(["--config", str(config), "subscribers", "add", *readers]) == 0
    archive = Archive.create(tmp_path / "mirror.git")
    setattr(sink.handler, step, answer)
    daemon = DaemonProcess(config)
    try:
        daemon.wait_log("kvm-digest is running")
        daemon.wait_log("the daily digest starts after")  # mail from now on is in it
        for day in range(3):  # three digests meet the refusal
            raw = mail(f"[PATCH] day {day}", f"d{day}@x", minutes=day)
            archive.append([(raw, parse_lenient(raw))])
            queued = f"daily digest: 1 messages, 1 digests queued for {len(readers)}"
            daemon.wait_log(queued, count=day + 1)
            daemon.wait_log("kvm-digest.health: relay:")
        setattr(sink.handler, step, "")
        raw = mail("[PATCH] the relay is fixed", "fixed@x", minutes=10)
        archive.append([(raw, parse_lenient(raw))])
        daemon.expect(
            sink.wait_until,
            lambda got: {r.recipients[0] for r in got if "fixed" in str(r.data)} >= set(readers),
            90,
        )
        assert daemon.stop() == 0
    finally:
        daemon.proc.kill()
    listed = subprocess.run(
        [sys.executable, "-m", "bot.cli", "--config", str(config), "subscribers", "list"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert listed.count("\tactive\t0 hard failures") == len(readers), listed
    relay_lines = re.findall(r"(?m)^.* (ERROR|INFO) kvm-digest.health: relay.*$", daemon.log)
    assert relay_lines == ["ERROR", "INFO"], daemon.log  # said when it starts, and when it ends
    assert "disabled" not in daemon.log
