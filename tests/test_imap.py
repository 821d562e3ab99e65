"""The IMAP listener against a real Dovecot on 127.0.0.1.

Real kvmarm messages are APPENDed to the server; the listener must store each
exactly once, across IDLE, server restarts, listener restarts and UIDVALIDITY
changes. Waiting is on the listener's `stored` event, never on sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mailbox
import time
from collections.abc import AsyncIterator

import pytest

from bot.config import ImapSection
from bot.intake.imap import Listener, Route, fetched_messages
from tests.dovecot import PASSWORD, Dovecot
from tests.mailfactory import DATA, Store, mail

KVMARM = Route(
    list_id="kvmarm.lists.cs.columbia.edu",
    list_address="kvmarm@lists.cs.columbia.edu",
    bot_address="kvm-digest@example.org",
)
SLICE = [m.as_bytes() for m in mailbox.mbox(DATA / "kvmarm-slice.mbox")]


def settings(server: Dovecot, **changes) -> ImapSection:
    return server.imap_settings(**{"batch": 7, **changes})


@pytest.fixture
def dovecot() -> Dovecot:
    server = Dovecot().start()
    yield server
    server.cleanup()


class Running:
    """A listener task with helpers to wait for what it stores."""

    def __init__(self, listener: Listener, store: Store) -> None:
        self.listener = listener
        self.store = store
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(listener.run(self.stop))

    def count(self) -> int:
        return self.store.index.count()

    async def until(self, n: int, timeout: float = 20) -> float:
        """Wait until n messages are indexed; return how long it took."""
        started = time.monotonic()
        deadline = started + timeout
        while self.count() < n:
            self.listener.stored.clear()
            if self.task.done():
                self.task.result()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{self.count()} messages indexed, expected {n}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.listener.stored.wait(), remaining)
        return time.monotonic() - started

    async def ready(self, timeout: float = 20) -> None:
        await asyncio.wait_for(self.listener.ready.wait(), timeout)

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 15)


@contextlib.asynccontextmanager
async def listening(store: Store, server: Dovecot, **changes) -> AsyncIterator[Running]:
    listener = Listener(settings(server, **changes), store.importer, KVMARM)
    running = Running(listener, store)
    try:
        yield running
    finally:
        await running.close()


def message_ids(store: Store) -> list[str]:
    return [r[0] for r in store.index.conn.execute("SELECT message_id FROM messages ORDER BY seq")]


async def test_backlog_of_real_kvmarm_mail(store, dovecot):
    dovecot.append(*SLICE[:20])
    async with listening(store, dovecot) as run:
        await run.until(20)
        await run.ready()
    assert len(set(message_ids(store))) == 20
    state = store.index.conn.execute("SELECT last_uid FROM imap_state").fetchone()
    assert state == (20,)


async def test_message_appended_while_idle_is_indexed_within_two_seconds(store, dovecot):
    async with listening(store, dovecot) as run:
        await run.ready()
        await asyncio.to_thread(dovecot.append, SLICE[0])
        elapsed = await run.until(1, timeout=2)
    assert elapsed < 2
    assert store.index.count() == 1


async def test_dovecot_restarted_mid_idle(store, dovecot):
    dovecot.append(*SLICE[:3])
    async with listening(store, dovecot) as run:
        await run.until(3)
        await run.ready()
        run.listener.ready.clear()
        dovecot.stop()
        dovecot.start()
        await asyncio.to_thread(dovecot.append, *SLICE[3:6])
        await run.until(6)
    assert sorted(message_ids(store)) == sorted(set(message_ids(store)))
    assert store.index.count() == 6


async def test_listener_restart_between_batches_loses_and_doubles_nothing(store, dovecot):
    dovecot.append(*SLICE[:10])
    async with listening(store, dovecot) as run:
        await run.until(10)
    dovecot.append(*SLICE[10:15])
    async with listening(store, dovecot) as run:
        await run.until(15)
        await run.ready()
    assert store.index.count() == 15
    # Even with its position forgotten, a listener stores nothing twice.
    with store.index.conn:
        store.index.conn.execute("DELETE FROM imap_state")
    async with listening(store, dovecot) as run:
        await run.ready()
        assert store.importer.counts.duplicates >= 15
    assert store.index.count() == 15


async def test_uidvalidity_change_rescans_without_doubling(store, dovecot, caplog):
    dovecot.append(*SLICE[:4])
    async with listening(store, dovecot) as run:
        await run.until(4)
    dovecot.set_uidvalidity(12345)
    dovecot.append(SLICE[4])
    with caplog.at_level(logging.WARNING):
        async with listening(store, dovecot) as run:
            await run.until(5)
            await run.ready()
    assert store.index.count() == 5
    assert any("UIDVALIDITY" in r.getMessage() for r in caplog.records)
    assert store.index.conn.execute("SELECT uidvalidity, last_uid FROM imap_state").fetchone() == (
        12345,
        5,
    )


async def test_wrong_password_is_logged_and_retried_never_leaked(store, dovecot, caplog):
    dovecot.append(SLICE[0])
    with caplog.at_level(logging.DEBUG):
        async with listening(store, dovecot, password="wrong-password") as run:
            while run.listener.failures < 2:  # it retries after a backoff
                run.listener.session_ended.clear()
                await asyncio.wait_for(run.listener.session_ended.wait(), 10)
            assert run.count() == 0
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert text.count("refused user 'bot'") >= 2
    assert "check [imap] user and the password" in text
    assert "wrong-password" not in text


async def test_oversized_message_is_skipped_and_the_rest_stored(store, dovecot, caplog):
    big = mail(
        "[PATCH] huge",
        "huge@x",
        headers={"List-Id": "<kvmarm.lists.cs.columbia.edu>"},
        body="x" * 200_000,
    )
    dovecot.append(SLICE[0], big, SLICE[1])
    store.importer.max_size = 100_000
    async with listening(store, dovecot) as run:
        await run.until(2)
        await run.ready()
    assert store.index.count() == 2
    assert any("skipped UID 2" in r.getMessage() for r in caplog.records)


async def test_only_list_traffic_is_archived(store, dovecot, caplog):
    private = mail("Lunch?", "lunch@x", frm="Friend <friend@example.org>", body="Hi.\n")
    command = mail("help", "cmd@x", frm="User <user@example.org>", body="help\n")
    command = command.replace(b"To: kvm@vger.kernel.org", b"To: kvm-digest@example.org")
    dovecot.append(private, command, SLICE[0])
    taken: list[bytes] = []
    listener = Listener(
        settings(dovecot),
        store.importer,
        KVMARM,
        on_command=lambda raw, parsed: taken.append(raw),
    )
    caplog.set_level(logging.INFO, logger="bot.intake.imap")
    run = Running(listener, store)
    try:
        await run.until(1)
        await run.ready()
    finally:
        await run.close()
    assert store.index.count() == 1
    assert taken == [command.replace(b"\n", b"\r\n")]
    assert any("left UID 1 in place" in r.getMessage() for r in caplog.records)
    assert dovecot.uids() == [1, 2, 3]  # nothing was moved or deleted


async def test_mark_seen_and_move(store, dovecot):
    dovecot.create("Archive")
    dovecot.append(*SLICE[:3])
    async with listening(store, dovecot, mark_seen=True, move_to="Archive") as run:
        await run.until(3)
        await run.ready()
    assert dovecot.uids("INBOX") == []
    assert len(dovecot.uids("Archive", "SEEN")) == 3


async def test_polls_when_the_server_has_no_idle(store):
    server = Dovecot(idle=False).start()
    try:
        async with listening(store, server, poll_interval=1) as run:
            await run.ready()
            await asyncio.to_thread(server.append, SLICE[0])
            await run.until(1, timeout=10)
    finally:
        server.cleanup()
    assert store.index.count() == 1


def test_fetch_response_parsing_with_uid_after_the_literal():
    lines = [
        b"1 FETCH (BODY[] {5}",
        bytearray(b"hello"),
        b" UID 42)",
        b"Fetch completed",
    ]
    assert fetched_messages(lines) == [(42, b"hello")]


def test_listen_command_runs_until_sigterm(tmp_path, dovecot):
    """`kvm-digest listen` as a process: logs to follow, exit 0 on SIGTERM."""
    import signal
    import subprocess
    import sys

    config = tmp_path / "kvm-digest.toml"
    secret = tmp_path / "imap-password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    config.write_text(dovecot.config_toml(tmp_path / "var", f'password_file = "{secret}"'))
    dovecot.append(*SLICE[:2])
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "--config", str(config), "listen"],
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = []
    try:
        for line in proc.stderr:  # the daemon's own log is the synchronisation
            seen.append(line)
            if "waiting for new mail" in line:
                break
        dovecot.append(SLICE[2])
        for line in proc.stderr:
            seen.append(line)
            if "stored 1 of 1 fetched messages, up to UID 3" in line:
                break
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
    log = "".join(seen)
    assert "stored 2 of 2 fetched messages, up to UID 2" in log
    assert PASSWORD not in log
    out = subprocess.run(
        [sys.executable, "-m", "bot.cli", "--config", str(config), "digest", "--all"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.count("\n") > 10


def test_listen_refuses_a_password_file_others_can_read(cli, tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("x")
    secret.chmod(0o644)
    config = tmp_path / "c.toml"
    config.write_text(f'[imap]\nhost = "h"\nuser = "u"\npassword_file = "{secret}"\n')
    result = cli("--config", config, "listen")
    assert result.code == 1
    assert f"can be read by other users; run chmod 600 {secret}" in result.err


async def test_dns_failure_is_retried_not_fatal(store, caplog):
    listener = Listener(
        ImapSection(
            host="imap.invalid", port=993, user="u", password="p", timeout=5, backoff_max=1
        ),
        store.importer,
        KVMARM,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(listener.run(stop))
    while listener.failures < 2:
        listener.session_ended.clear()
        await asyncio.wait_for(listener.session_ended.wait(), 20)
    stop.set()
    await asyncio.wait_for(task, 10)
    assert any("cannot connect to imap.invalid:993" in r.getMessage() for r in caplog.records)


@pytest.fixture
def tls_dovecot():
    server = Dovecot(tls=True).start()
    yield server
    server.cleanup()


async def test_imaps_verifies_the_certificate_against_a_ca(store, tls_dovecot):
    tls_dovecot.append(SLICE[0])
    async with listening(
        store,
        tls_dovecot,
        security="tls",
        port=tls_dovecot.tls_port,
        host="localhost",
        cafile=str(tls_dovecot.cafile),
    ) as run:
        await run.until(1)
    assert store.index.count() == 1


async def test_imaps_refuses_an_untrusted_certificate_by_default(store, tls_dovecot, caplog):
    tls_dovecot.append(SLICE[0])
    async with listening(
        store, tls_dovecot, security="tls", port=tls_dovecot.tls_port, host="localhost"
    ) as run:
        while run.listener.failures < 1:
            run.listener.session_ended.clear()
            await asyncio.wait_for(run.listener.session_ended.wait(), 20)
    assert store.index.count() == 0
    assert any("CERTIFICATE_VERIFY_FAILED" in r.getMessage() for r in caplog.records)


async def test_verify_false_is_an_explicit_choice(store, tls_dovecot):
    tls_dovecot.append(SLICE[0])
    async with listening(
        store,
        tls_dovecot,
        security="tls",
        port=tls_dovecot.tls_port,
        host="localhost",
        verify=False,
    ) as run:
        await run.until(1)


async def test_starttls_and_authenticate_plain(store, tls_dovecot):
    tls_dovecot.append(SLICE[0])
    async with listening(
        store,
        tls_dovecot,
        security="starttls",
        host="localhost",
        cafile=str(tls_dovecot.cafile),
        auth="plain",
    ) as run:
        await run.until(1)
    assert store.index.count() == 1


async def test_move_falls_back_to_copy_and_expunge_without_move(store):
    server = Dovecot(idle=False).start()  # advertises UIDPLUS but not MOVE
    try:
        server.create("Archive")
        server.append(*SLICE[:2])
        async with listening(store, server, poll_interval=1, move_to="Archive") as run:
            await run.until(2)
            await run.ready()
        assert server.uids("INBOX") == []
        assert len(server.uids("Archive")) == 2
    finally:
        server.cleanup()


async def test_a_hung_server_times_out_and_is_retried(store, caplog):
    """A server that accepts the connection and then says nothing at all."""
    silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    listener = Listener(
        ImapSection(
            host="127.0.0.1",
            port=port,
            security="none",
            user="u",
            password="p",
            timeout=1,
            backoff_max=1,
        ),
        store.importer,
        KVMARM,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(listener.run(stop))
    try:
        while listener.failures < 2:
            listener.session_ended.clear()
            await asyncio.wait_for(listener.session_ended.wait(), 20)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        silent.close()
    assert any("did not answer within 1s" in r.getMessage() for r in caplog.records)
