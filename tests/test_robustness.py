"""No single mail, connection or flood stops a worker (the robustness issue).

The hostile corpus (tests/data/hostile) already goes through import, IMAP
and LMTP in tests/test_hostile.py. Here: what those doors must also do with
what they cannot handle (record it, move past it), SMTPUTF8, connection
caps and deadlines, intake bounds, linear-time parsing, retention, arrival
times, file modes and supervision.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sqlite3
import stat
import time
from pathlib import Path

import pytest

from bot.delivery.mail import wire_address
from bot.digest import ranges
from bot.errors import MailError, RangeError
from bot.parse.message import parse_message
from bot.store import retention
from bot.supervise import Health, Policy, supervise
from tests.mailfactory import DATA, Store, mail
from tests.smtpsink import Sink
from tests.test_commands import Bot, command, reply_text

HOSTILE = DATA / "hostile"


# -- one message must never stop a worker --------------------------------


def test_import_records_what_it_cannot_take_and_goes_on(cli, tmp_path, monkeypatch):
    """A parser bug on one message: kept in `failures`, the import goes on."""
    from bot.parse import message

    real = message.parse_message

    def flaky(raw: bytes):
        if b"poison" in raw:
            raise IndexError("string index out of range")
        return real(raw)

    monkeypatch.setattr(message, "parse_message", flaky)
    box = tmp_path / "in.mbox"
    box.write_bytes(
        b"From x Thu Jan  1 00:00:00 1970\n"
        + mail("[PATCH] poison", "poison@example.org")
        + b"\nFrom x Thu Jan  1 00:00:00 1970\n"
        + mail("[PATCH] after it", "after@example.org")
        + b"\n"
    )
    result = cli("import", box)
    assert result.out.strip().endswith("1 imported, 0 duplicates, 1 rejected")
    listed = cli("failed").out
    assert "IndexError: string index out of range" in listed
    assert "in.mbox #1" in listed
    assert "New:  after it" in cli("digest", "--all").out


async def test_a_command_mail_that_breaks_handling_is_recorded_and_the_next_answered(
    tmp_path, sink, monkeypatch
):
    bot = await Bot(tmp_path / "var", sink).start()
    real = bot.desk._handle

    def flaky(mail):
        if "poison" in mail.subject:
            raise ValueError("Header values may not contain linefeed")
        return real(mail)

    monkeypatch.setattr(bot.desk, "_handle", flaky)
    try:
        await bot.ask(command("help\n", subject="poison"))
        await bot.ask(command("help\n", subject="help"))
    finally:
        await bot.close()
    assert len(sink.received) == 1  # the second was answered
    rows = bot.store.index.conn.execute("SELECT done, error FROM inbound ORDER BY id").fetchall()
    assert rows[0] == (1, "ValueError: Header values may not contain linefeed")
    assert rows[1] == (1, None)


@pytest.mark.parametrize(
    "name", ["from-dot-at.eml", "from-encoded-newline.eml", "from-nested-comments.eml"]
)
def test_hostile_senders_parse(name):
    parsed = parse_message((HOSTILE / name).read_bytes())
    assert parsed.subject.full.startswith("[PATCH] from")


@pytest.mark.parametrize(
    "name", ["punycode-subject.eml", "punycode-charset.eml", "idna-charset.eml"]
)
def test_codecs_that_are_not_charsets_decode_as_text(name):
    parsed = parse_message((HOSTILE / name).read_bytes())
    assert parsed.subject.full


@pytest.mark.parametrize("charset", ["unicode_escape", "raw-unicode-escape", "rot13", "idna"])
def test_codecs_that_interpret_bytes_are_never_used(charset):
    """An escape codec would turn `\\x41` into `A` (and warn); the text stays as sent."""
    from bot.parse.mime import decode_text

    assert decode_text(b"\\x41 caf\xc3\xa9", charset) == "\\x41 café"


def test_nested_and_numerous_mime_parts_read_flat():
    nested = parse_message((HOSTILE / "nested-1000.eml").read_bytes())
    assert "Deep inside." in nested.commit_message or nested.kind != "patch"
    many = parse_message((HOSTILE / "many-parts.eml").read_bytes())
    assert many.subject.full == "[PATCH] 2000 parts"


# -- addresses and SMTPUTF8 ----------------------------------------------


def test_wire_addresses():
    assert wire_address("user@bücher.example") == ("user@xn--bcher-kva.example", False)
    assert wire_address("δοκιμή@παράδειγμα.δοκιμή") == (
        "δοκιμή@xn--hxajbheg2az3al.xn--jxalpdlp",
        True,
    )
    for bad in (".@", "@x", "a@", "a b@c.d", "a@b@c", "<a@b>", "a@" + "x" * 70 + ".org"):
        with pytest.raises(MailError):
            wire_address(bad)


async def test_non_ascii_senders_without_smtputf8_fail_alone(tmp_path, sink):
    bot = await Bot(tmp_path / "var", sink).start()
    try:
        await bot.ask(command("help\n", frm="Δοκιμή <δοκιμή@παράδειγμα.δοκιμή>"))
        await bot.ask(command("help\n", frm="Bücher <user@bücher.example>"))
        await bot.ask(command("help\n"))
    finally:
        await bot.close()
    got = sorted(r.recipients[0] for r in sink.received)
    assert got == ["una@example.org", "user@xn--bcher-kva.example"]
    failed = bot.store.index.conn.execute(
        "SELECT recipient, last_error FROM outbox WHERE status = 'failed'"
    ).fetchall()
    greek = "δοκιμή@xn--hxajbheg2az3al.xn--jxalpdlp"  # the domain IDNA-folded
    assert failed == [
        (greek, f"the relay 127.0.0.1 does not offer SMTPUTF8, which the address {greek} needs")
    ]


async def test_non_ascii_senders_with_smtputf8_are_answered(tmp_path):
    sink = Sink(smtputf8=True).start()
    try:
        bot = await Bot(tmp_path / "var", sink).start()
        try:
            await bot.ask(command("help\n", frm="Δοκιμή <δοκιμή@παράδειγμα.δοκιμή>"))
        finally:
            await bot.close()
        (received,) = sink.received
    finally:
        sink.stop()
    assert received.recipients == ["δοκιμή@xn--hxajbheg2az3al.xn--jxalpdlp"]
    assert "SMTPUTF8" in received.mail_options
    assert "help" in reply_text(received)


# -- connections ---------------------------------------------------------


def _banner(port: int) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock, sock.recv(512)


async def test_connection_caps_answer_421_and_free_up(tmp_path, sink):
    bot = await Bot(tmp_path / "var", sink, max_connections=6, max_connections_per_peer=4).start()
    opened = []
    try:
        for _ in range(4):
            sock, hello = await asyncio.to_thread(_banner, bot.port)
            opened.append(sock)
            assert hello.startswith(b"220")
        sock, hello = await asyncio.to_thread(_banner, bot.port)
        assert hello.startswith(b"421 4.7.0 too many connections from your address")
        sock.close()
        for sock in opened:
            sock.close()
        opened.clear()
        await bot.ask(command("help\n"))  # a session works again once they close
    finally:
        for sock in opened:
            sock.close()
        await bot.close()
    assert len(sink.received) == 1


async def test_noop_does_not_extend_a_session_past_its_deadline(tmp_path, sink):
    bot = await Bot(tmp_path / "var", sink, session_seconds=1).start()

    def idle_with_noops() -> tuple[float, bytes]:
        """NOOP, wait for its answer, again, until the server ends the session."""
        sock, _ = _banner(bot.port)
        started = time.monotonic()
        said = b""
        with sock:
            while time.monotonic() - started < 10:
                sock.sendall(b"NOOP\r\n")
                chunk = sock.recv(512)
                said += chunk
                if not chunk or b"421" in chunk:
                    break
        return time.monotonic() - started, said

    try:
        took, said = await asyncio.to_thread(idle_with_noops)
    finally:
        await bot.close()
    assert b"421 4.4.2 session time limit reached" in said
    assert took < 5


async def test_too_much_waiting_mail_gets_4xx_not_silence(tmp_path, sink):
    """Per mailbox 451 at DATA, overall 452 at MAIL: the MTA keeps the mail."""
    import smtplib

    bot = await Bot(tmp_path / "var", sink, max_waiting_per_address=2, max_pending=3).start()
    try:
        await bot.deliver(command("help\n"))
        await bot.deliver(command("help\n"))
        with pytest.raises(smtplib.SMTPDataError) as mailbox_full:
            await bot.deliver(command("help\n"))
        assert mailbox_full.value.smtp_code == 451
        await bot.deliver(command("help\n", frm="o@example.org"), sender="o@example.org")
        with pytest.raises(smtplib.SMTPSenderRefused) as full:
            await bot.deliver(command("help\n", frm="p@example.org"), sender="p@example.org")
        assert full.value.smtp_code == 452
        assert b"too much mail is waiting" in full.value.smtp_error
        assert bot.desk.process() == 3
        await bot.deliver(command("help\n"))  # handled: room again
    finally:
        await bot.close()


# -- linear time -----------------------------------------------------------


def _folded(lines: int) -> bytes:
    refs = b"\n ".join(b"<%d@example.org>" % i for i in range(lines))
    return mail("[PATCH] folded", "folded@example.org").replace(
        b"MIME-Version", b"References: " + refs + b"\nMIME-Version", 1
    )


def _parse_seconds(raw: bytes) -> float:
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        parse_message(raw)
        best = min(best, time.perf_counter() - started)
    return best


def test_parsing_is_linear_in_the_folded_header_lines():
    """Ten times the folded lines costs about ten times, not a hundred."""
    small, large = _folded(20_000), _folded(200_000)
    parsed = parse_message(large)
    assert len(parsed.references) == 200_000
    assert len(parsed.parent_ids) == 100  # threading keeps the nearest
    ratio = _parse_seconds(large) / _parse_seconds(small)
    assert ratio < 30, f"10x the folded lines took {ratio:.0f}x the time"


# -- retention -------------------------------------------------------------


def test_retention_purges_handled_state_and_keeps_failures_longer(store: Store):
    conn = store.index.conn
    now = time.time()
    day = 86400
    with conn:
        for i, (age, error) in enumerate([(40, None), (10, None), (40, "boom"), (100, "boom")]):
            conn.execute(
                "INSERT INTO inbound (received, sender, rcpt, raw, raw_hash, done, handled,"
                " error) VALUES (?, 's', 'r', x'00', ?, 1, ?, ?)",
                (int(now - age * day), f"h{i}", int(now - age * day), error),
            )
        conn.execute(
            "INSERT INTO inbound (received, sender, rcpt, raw, raw_hash) VALUES (?, 's', 'r',"
            " x'00', 'pending')",
            (int(now - 400 * day),),
        )
        for i, (age, status) in enumerate([(40, "sent"), (10, "sent"), (40, "failed")]):
            conn.execute(
                "INSERT INTO outbox (kind, recipient, message_id, message, status,"
                " next_attempt, created, sent_at) VALUES ('reply', 'r', ?, x'00', ?, 0, ?, ?)",
                (f"<m{i}>", status, int(now - age * day), int(now - age * day)),
            )
    counts = retention.purge(conn, retention_days=30, failed_retention_days=90, now=now)
    assert counts["inbound"] == 2 and counts["outbox"] == 1
    left = conn.execute("SELECT raw_hash FROM inbound ORDER BY id").fetchall()
    assert left == [("h1",), ("h2",), ("pending",)]  # recent, failed < 90 days, unhandled
    assert conn.execute("SELECT status FROM outbox ORDER BY id").fetchall() == [
        ("sent",),
        ("failed",),
    ]
    # A retention of 0 days still keeps the last day, which the reply limits count.
    with conn:
        conn.execute(
            "INSERT INTO outbox (kind, recipient, message_id, message, status, next_attempt,"
            " created, sent_at) VALUES ('reply', 'r', '<new>', x'00', 'sent', 0, ?, ?)",
            (int(now - 3600), int(now - 3600)),
        )
    assert retention.purge(conn, retention_days=0, failed_retention_days=0, now=now)["outbox"] == 2
    assert conn.execute("SELECT message_id FROM outbox").fetchall() == [("<new>",)]


# -- time sanity -------------------------------------------------------------


def test_a_misdated_message_never_widens_a_range(store: Store):
    store.add(
        mail("[PATCH] first", "first@example.org", minutes=0),
        (HOSTILE / "dated-2100.eml").read_bytes(),
        (HOSTILE / "dated-1970.eml").read_bytes(),
        mail("[PATCH] last", "last@example.org", minutes=60),
    )
    conn = store.index.conn
    times = [r[0] for r in conn.execute("SELECT received FROM messages ORDER BY seq")]
    assert times[1] == times[0] and times[2] == times[0]  # the one before them
    first, last = conn.execute("SELECT MIN(received), MAX(received) FROM messages").fetchone()
    assert last - first == 3600
    with pytest.raises(RangeError):  # "last 0 days" is empty, not the 2100 message
        ranges.by_time(conn, int(time.time()))


# -- file modes --------------------------------------------------------------


def test_the_data_dir_is_private_whatever_the_umask(cli, data_dir: Path):
    old = os.umask(0o022)
    try:
        assert cli("import", DATA / "reference" / "000.mbox").code == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    for name in ("index.sqlite3", "index.sqlite3-wal", "index.sqlite3-shm", "lock"):
        path = data_dir / name
        if path.exists():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, name


def test_an_index_made_by_library_code_is_private(tmp_path: Path):
    from bot.store.index import Index

    old = os.umask(0o022)
    try:
        index = Index(tmp_path / "var" / "index.sqlite3")
        index.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "var").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "var" / "index.sqlite3").stat().st_mode) == 0o600


# -- migration ---------------------------------------------------------------


def test_an_old_index_gains_new_state_columns_and_keeps_its_subscribers(tmp_path: Path):
    from bot.store.index import Index

    path = tmp_path / "index.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(
        """CREATE TABLE subscribers (address TEXT PRIMARY KEY, schedule TEXT NOT NULL DEFAULT
           'daily', status TEXT NOT NULL, created INTEGER NOT NULL, changed INTEGER NOT NULL,
           hard_failures INTEGER NOT NULL DEFAULT 0);
           INSERT INTO subscribers VALUES ('a@example.org', 'weekly', 'active', 1, 1, 0);
           CREATE TABLE inbound (id INTEGER PRIMARY KEY, received INTEGER NOT NULL,
           sender TEXT NOT NULL, rcpt TEXT NOT NULL, raw BLOB NOT NULL,
           raw_hash TEXT NOT NULL UNIQUE, done INTEGER NOT NULL DEFAULT 0);
           PRAGMA user_version = 1;"""
    )
    conn.close()
    index = Index(path)
    try:
        row = index.conn.execute("SELECT address, schedule FROM subscribers").fetchone()
        assert row == ("a@example.org", "weekly")
        columns = {r[1] for r in index.conn.execute("PRAGMA table_info(inbound)")}
        assert {"handled", "error"} <= columns
    finally:
        index.close()


# -- supervision -------------------------------------------------------------


async def test_a_failing_task_is_restarted_and_logged(caplog):
    stop = asyncio.Event()
    health = Health()
    runs = []

    async def task() -> None:
        runs.append(1)
        if len(runs) < 3:
            raise RuntimeError(f"failure {len(runs)}")
        stop.set()

    with caplog.at_level(logging.ERROR, logger="bot.supervise"):
        await supervise("flaky", task, stop, health, Policy(backoff_first=0.01))
    assert len(runs) == 3 and health.ok and health.restarts == {"flaky": 2}
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        "task flaky failed: RuntimeError: failure 1",
        "task flaky failed: RuntimeError: failure 2",
    ]


async def test_a_task_that_cannot_be_kept_running_is_fatal():
    stop = asyncio.Event()
    health = Health()

    async def task() -> None:
        raise OSError(24, "Too many open files")

    await supervise("imap", task, stop, health, Policy(backoff_first=0.01, give_up_after=3))
    assert not health.ok and health.failed.is_set()
    assert health.fatal == (
        "task imap failed 3 times in a row (last: OSError: [Errno 24] Too many open files)"
    )


async def test_the_pending_cap_is_per_mailbox(tmp_path, sink):
    """One mailbox at its cap does not lock the others out."""
    import smtplib

    bot = await Bot(tmp_path / "var", sink, max_waiting_per_address=1).start()
    try:
        await bot.deliver(command("help\n"))
        with pytest.raises(smtplib.SMTPDataError):
            await bot.deliver(command("help\n"))
        await bot.ask(command("help\n", frm="o@example.org"), sender="o@example.org")
    finally:
        await bot.close()
    assert sorted(r.recipients[0] for r in sink.received) == ["o@example.org", "una@example.org"]
