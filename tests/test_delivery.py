"""Delivery and periodic digests, in-process, against a real SMTP relay."""

from __future__ import annotations

import time

import pytest

from bot.config import from_table
from bot.delivery import periodic, subscribers
from bot.delivery.mail import Identity
from bot.delivery.outbox import Outbox
from bot.delivery.sender import Sender
from bot.digest.build import environment
from tests.mailfactory import Store, mail
from tests.smtpsink import Sink

BOT = "kvm-digest@example.org"


class Setup:
    def __init__(self, root, sink: Sink, **schedule) -> None:
        self.config = from_table(
            {
                "list": {"id": "kvm.vger.kernel.org"},
                "commands": {"address": BOT},
                "smtp": {
                    "host": "127.0.0.1",
                    "port": sink.port,
                    "security": "none",
                    "hard_failures": 2,
                },
                "schedule": schedule,
            }
        )
        self.store = Store(root)
        self.conn = self.store.index.conn
        self.outbox = Outbox(self.conn, Identity(BOT))
        self.sender = Sender(self.outbox, self.config.smtp)
        self.env = environment()
        with self.conn:  # the daemon starts its schedule at the archive head
            periodic.ensure(self.conn, "daily")

    def subscribe(self, *addresses: str, schedule: str = "daily") -> None:
        with self.conn:
            for a in addresses:
                subscribers.subscribe(self.conn, a, schedule)

    def post(self, n: int, start: int = 0) -> None:
        self.store.add(
            *[mail(f"[PATCH] change {i}", f"m{i}@x", minutes=i) for i in range(start, start + n)]
        )

    def run(self, name: str = "daily") -> periodic.Run:
        return periodic.run(self.conn, self.config, self.outbox, self.env, name)


@pytest.fixture
def setup(tmp_path, sink):
    return Setup(tmp_path / "s", sink)


async def test_digest_reaches_every_subscriber_with_list_headers(setup, sink):
    setup.subscribe("a@example.org", "b@example.org")
    setup.post(3)
    result = setup.run()
    assert (result.recipients, result.messages) == (2, 3)
    await setup.sender.flush()
    received = sink.wait_for(2)
    assert sorted(r.recipients[0] for r in received) == ["a@example.org", "b@example.org"]
    msg = received[0].message
    assert msg["Subject"].startswith("KVM mailing list update from ")
    assert msg["List-Id"] == "KVM digest <kvm-digest.example.org>"
    # Each reader gets its own secret unsubscribe address, nobody else's.
    secrets = dict(setup.conn.execute("SELECT address, unsub_secret FROM subscribers"))
    for r in received:
        assert r.message["List-Unsubscribe"].strip() == (
            f"<mailto:kvm-digest+unsubscribe-{secrets[r.recipients[0]]}@example.org"
            "?subject=unsubscribe>"
        )
    assert len(set(secrets.values())) == 2
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["Precedence"] == "bulk"
    assert msg["To"] == received[0].recipients[0]
    assert msg["Message-ID"] and msg["Date"]
    assert msg.get_content_type() == "text/plain"
    assert msg.get_content_charset() == "utf-8"
    assert "New:  change 0" in msg.get_payload(decode=True).decode()
    # One rendering per digest, not per subscriber; distinct Message-IDs.
    assert setup.conn.execute("SELECT COUNT(*) FROM digests").fetchone() == (1,)
    assert received[0].message["Message-ID"] != received[1].message["Message-ID"]


async def test_consecutive_digests_cover_adjacent_ranges(setup, sink):
    setup.subscribe("a@example.org")
    setup.post(2)
    setup.run()
    setup.post(3, start=2)
    setup.run()
    first, second = setup.conn.execute(
        "SELECT start_id, end_id FROM digests ORDER BY id"
    ).fetchall()
    assert first[1] == second[0]  # the second starts where the first ended
    await setup.sender.flush()
    bodies = [r.message.get_payload(decode=True).decode() for r in sink.wait_for(2)]
    assert "change 1" in bodies[0] and "change 1" not in bodies[1]
    assert "change 2" in bodies[1] and "change 2" not in bodies[0]


async def test_empty_range_sends_nothing(setup, sink):
    setup.subscribe("a@example.org")
    assert setup.run().digest_id is None
    assert await setup.sender.flush() == 0


async def test_relay_outage_retries_then_delivers_once(setup, sink):
    setup.subscribe("a@example.org")
    setup.post(1)
    setup.run()
    sink.stop()
    await setup.sender.flush()
    (row,) = setup.conn.execute("SELECT status, attempts, last_error FROM outbox").fetchall()
    # No connection, so the relay never saw the mail: not counted as an attempt.
    assert row[0] == "queued" and row[1] == 0 and "Connect" in row[2]
    sink.start()
    with setup.conn:  # the retry is due now
        setup.conn.execute("UPDATE outbox SET next_attempt = ?", (int(time.time()),))
    await setup.sender.flush()
    await setup.sender.flush()  # nothing is due any more: nothing twice
    assert len(sink.wait_for(1)) == 1
    assert setup.outbox.counts() == {"sent": 1}


async def test_4xx_retries_and_5xx_fails_only_that_recipient(setup, sink):
    sink.handler.refuse = {
        "busy@example.org": "451 4.3.0 try later",
        "gone@example.org": "550 5.1.1 no such user",
    }
    setup.subscribe("ok@example.org", "busy@example.org", "gone@example.org")
    setup.post(1)
    setup.run()
    await setup.sender.flush()
    status = dict(setup.conn.execute("SELECT recipient, status FROM outbox").fetchall())
    assert status == {
        "ok@example.org": "sent",
        "busy@example.org": "queued",
        "gone@example.org": "failed",
    }
    assert [r.recipients for r in sink.received] == [["ok@example.org"]]


async def test_subscriber_disabled_after_hard_failures(setup, sink):
    sink.handler.refuse = {"gone@example.org": "550 5.1.1 no such user"}
    setup.subscribe("gone@example.org")
    for round_ in range(2):  # [smtp] hard_failures = 2
        setup.post(1, start=round_)
        setup.run()
        await setup.sender.flush()
    assert subscribers.get(setup.conn, "gone@example.org").status == "disabled"
    # Re-subscribing brings it back.
    with setup.conn:
        subscribers.subscribe(setup.conn, "gone@example.org")
    assert subscribers.get(setup.conn, "gone@example.org").status == "active"


def test_missed_run_is_detected(setup):
    with setup.conn:
        setup.conn.execute("UPDATE schedules SET last_run = ?", (int(time.time()) - 2 * 86400,))
    assert periodic.missed(setup.conn, "daily", "0 6 * * *")
    setup.run()
    assert not periodic.missed(setup.conn, "daily", "0 6 * * *")


def test_long_lines_go_quoted_printable():
    from email import message_from_bytes

    from bot.delivery.mail import address, prepare_digest

    me = Identity(BOT)
    raw = address(prepare_digest(me, "s", "x" * 1200 + "\n"), me, "a@example.org", "<id@x>")
    msg = message_from_bytes(raw)
    assert msg["Content-Transfer-Encoding"] == "quoted-printable"
    head, _, encoded = raw.partition(b"\r\n\r\n")
    assert max(len(line) for line in encoded.split(b"\r\n")) <= 78
    # A header line folds where it may (between URLs); one URL may pass 78.
    assert max(len(line) for line in head.split(b"\r\n")) <= 998
    assert msg.get_payload(decode=True).decode().replace("\r\n", "\n") == "x" * 1200 + "\n"


def make_due(setup: Setup) -> None:
    with setup.conn:
        setup.conn.execute("UPDATE outbox SET next_attempt = ?", (int(time.time()),))


async def test_relay_answering_421_for_a_while(setup, sink):
    setup.subscribe("a@example.org")
    setup.post(1)
    setup.run()
    sink.handler.refuse_all = "421 4.3.2 service shutting down"
    for _ in range(3):  # three tries during the bad minute
        await setup.sender.flush()
        make_due(setup)
    (row,) = setup.conn.execute("SELECT status, attempts, last_error FROM outbox").fetchall()
    assert row[:2] == ("queued", 3) and row[2].endswith("421 4.3.2 service shutting down")
    sink.handler.refuse_all = ""
    await setup.sender.flush()
    assert len(sink.wait_for(1)) == 1
    assert setup.outbox.counts() == {"sent": 1}


async def test_relay_that_takes_the_data_then_drops_the_connection(setup, sink):
    setup.subscribe("a@example.org")
    setup.post(1)
    setup.run()
    sink.handler.drop_after_data = True
    await setup.sender.flush()
    assert setup.outbox.counts() == {"queued": 1}  # no 250, so not sent: kept
    sink.handler.drop_after_data = False
    make_due(setup)
    await setup.sender.flush()
    assert len(sink.wait_for(1)) == 1
    assert setup.outbox.counts() == {"sent": 1}


async def test_dns_failure_keeps_the_mail_queued(tmp_path, sink):
    broken = Setup(tmp_path / "dns", sink)
    broken.sender.s = from_table(
        {"smtp": {"host": "relay.invalid", "port": 25, "security": "starttls"}}
    ).smtp
    broken.sender.relay.s = broken.sender.s
    broken.subscribe("a@example.org")
    broken.post(1)
    broken.run()
    await broken.sender.flush()
    (row,) = broken.conn.execute("SELECT status, last_error FROM outbox").fetchall()
    assert row[0] == "queued" and row[1]


def test_no_shell_anywhere():
    """Every subprocess gets an argument list; nothing goes through a shell."""
    import re
    from pathlib import Path

    source = Path(__file__).resolve().parents[1] / "bot"
    for path in source.rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"shell\s*=\s*True|os\.system\(|os\.popen\(", text), path


@pytest.fixture
def tls_sink(tmp_path):
    from tests.dovecot import make_certificates

    (tmp_path / "certs").mkdir()
    make_certificates(tmp_path / "certs")
    s = Sink(tmp_path / "certs").start()
    yield s
    s.stop()


def tls_setup(tmp_path, sink: Sink, **smtp) -> Setup:
    setup = Setup(tmp_path / "tls", sink)
    settings = from_table(
        {"smtp": {"host": "localhost", "port": sink.port, "security": "starttls", **smtp}}
    ).smtp
    setup.sender.s = setup.sender.relay.s = settings
    setup.subscribe("a@example.org")
    setup.post(1)
    setup.run()
    return setup


async def test_starttls_to_the_relay_checks_its_certificate(tmp_path, tls_sink):
    setup = tls_setup(tmp_path, tls_sink, cafile=str(tmp_path / "certs" / "ca.pem"))
    await setup.sender.flush()
    assert len(tls_sink.wait_for(1)) == 1
    assert setup.outbox.counts() == {"sent": 1}


async def test_an_untrusted_relay_certificate_is_refused_by_default(tmp_path, tls_sink):
    setup = tls_setup(tmp_path, tls_sink)
    await setup.sender.flush()
    (row,) = setup.conn.execute("SELECT status, last_error FROM outbox").fetchall()
    assert row[0] == "queued"
    assert "CERTIFICATE_VERIFY_FAILED" in row[1]
    assert tls_sink.received == []


async def test_an_address_that_would_add_smtp_parameters_never_reaches_the_relay(tmp_path, sink):
    """MAIL FROM and RCPT TO carry one word each: a space or bracket in an
    address is refused before the relay sees the mail, and the connection
    stays good for the next one (its SIZE is the only parameter sent)."""
    from bot.delivery.relay import Relay
    from bot.errors import MailError

    relay = Relay(Setup(tmp_path / "s", sink).config.smtp)
    message = b"Subject: hi\r\n\r\nhello\r\n"
    for sender in ("bot@example.org> SIZE=1 BODY=8BITMIME", "bot@example.org\r\nRSET", "b<o>t@x"):
        with pytest.raises(MailError, match="cannot be written on an SMTP command line"):
            await relay.send(sender, "a@example.org", message)
    await relay.send("bot@example.org", "a@example.org", message)
    (got,) = sink.wait_for(1)
    assert (got.sender, got.recipients) == ("bot@example.org", ["a@example.org"])
    assert got.mail_options == [f"SIZE={len(message)}"]
    assert sink.handler.refused == {}
    await relay.close()
