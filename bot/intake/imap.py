"""Live intake: read the bot's mailbox over IMAP (aioimaplib), IDLE for news.

One session: connect (IMAPS, STARTTLS, or plain on loopback), log in, select
the folder, fetch every UID above the last one stored (sizes first, so an
oversized message is skipped without downloading it), then IDLE until the
server says EXISTS, and fetch again. Servers without IDLE are polled.

The last UID is saved in the index in the same transaction that indexes the
messages it brought, after the archive holds them: a restart resumes exactly
there, losing nothing and storing nothing twice. A new UIDVALIDITY means the
UIDs were renumbered: everything is fetched again and deduplicated by
Message-ID and content (command mail by the desk's permanent record).

List mail must prove it came through the list (bot/intake/provenance.py)
before it is archived; mail that does not is kept in `failures` with why.

Every network wait has a timeout and also ends when the connection drops
(aioimaplib only reports a drop through a callback); any failure ends the
session, and the loop reconnects with capped exponential backoff and jitter.
A server that stays down is one lasting problem ("intake", bot/health.py):
logged when it starts and when it ends, not at every retry, and each fetch
(or keep-alive during IDLE) confirms the intake works, for `kvm-digest health`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import random
import re
import sqlite3
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aioimaplib

from bot.config import ImapSection, ListSection
from bot.errors import DigestError
from bot.health import Problems
from bot.intake.importer import Importer
from bot.intake.provenance import Proof
from bot.intake.routing import COMMAND, LIST, route
from bot.parse.message import ParsedMessage

log = logging.getLogger(__name__)

T = TypeVar("T")
_UID = re.compile(rb"UID (\d+)")
_SIZE = re.compile(rb"RFC822\.SIZE (\d+)")
_LITERAL = re.compile(rb"\{(\d+)\}$")
_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")

OFF_LOOP_BYTES = 256 * 1024
"""Fetched mail larger than this is parsed in a thread, off the event loop."""

CommandSink = Callable[[bytes, ParsedMessage], None]
"""Takes command mail durably (the commands module); must not raise."""


class ImapDown(Exception):
    """The session cannot go on: connection lost, timeout, or a NO/BAD answer."""


class AuthFailed(ImapDown):
    """The server refused the credentials."""


@dataclass
class Route:
    """Where fetched mail goes: the list's address and id, the bot's address."""

    list_id: str
    list_address: str
    bot_address: str = ""


class ImapState:
    """UIDVALIDITY and last stored UID of one mailbox, kept in the index."""

    def __init__(self, importer: Importer, account: str) -> None:
        self.conn = importer.index.conn
        self.account = account

    def load(self) -> tuple[int, int]:
        row = self.conn.execute(
            "SELECT uidvalidity, last_uid FROM imap_state WHERE account = ?",
            (self.account,),
        ).fetchone()
        return (row[0], row[1]) if row else (0, 0)

    def save(self, uidvalidity: int, last_uid: int) -> None:
        """Record progress; call inside the index transaction that stored the mail."""
        self.conn.execute(
            "INSERT INTO imap_state (account, uidvalidity, last_uid) VALUES (?, ?, ?) "
            "ON CONFLICT(account) DO UPDATE SET uidvalidity = excluded.uidvalidity, "
            "last_uid = excluded.last_uid",
            (self.account, uidvalidity, last_uid),
        )


def fetched_messages(lines: list[Any]) -> list[tuple[int, bytes]]:
    """(uid, raw) pairs from a `UID FETCH ... (UID BODY.PEEK[])` response."""
    out = []
    for i, line in enumerate(lines):
        if isinstance(line, bytearray) or not _LITERAL.search(line or b""):
            continue
        uid = _UID.search(line)
        if uid is None and i + 2 < len(lines):
            uid = _UID.search(bytes(lines[i + 2]))  # some servers put UID after
        if uid is not None and i + 1 < len(lines):
            out.append((int(uid.group(1)), bytes(lines[i + 1])))
    return out


def fetched_sizes(lines: list[Any]) -> dict[int, int]:
    """{uid: size} from a `UID FETCH ... (UID RFC822.SIZE)` response."""
    sizes = {}
    for line in lines:
        if isinstance(line, bytes | bytearray):
            uid, size = _UID.search(line), _SIZE.search(line)
            if uid and size:
                sizes[int(uid.group(1))] = int(size.group(1))
    return sizes


class Session:
    """One connection to the server; every await is bounded."""

    def __init__(self, settings: ImapSection, password: str) -> None:
        self.s = settings
        self.password = password
        self.lost = asyncio.Event()
        self.news = asyncio.Event()
        """Set when the server announced mail (EXISTS) outside any command."""
        self.client: aioimaplib.IMAP4 | None = None

    async def call(self, aw: Awaitable[T], timeout: float | None = None) -> T:
        """Await `aw`, unless the connection drops or `timeout` passes first."""
        task = asyncio.ensure_future(aw)
        lost = asyncio.ensure_future(self.lost.wait())
        try:
            done, _ = await asyncio.wait(
                {task, lost},
                timeout=timeout or self.s.timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            lost.cancel()
        if task in done:
            return task.result()
        task.cancel()
        if lost in done:
            raise ImapDown("the connection to the IMAP server was lost")
        raise ImapDown(f"the IMAP server did not answer within {timeout or self.s.timeout}s")

    async def ok(self, aw: Awaitable[Any], what: str, timeout: float | None = None) -> Any:
        response = await self.call(aw, timeout)
        if response.result != "OK":
            text = b" ".join(bytes(x) for x in response.lines[-1:]).decode(errors="replace")
            raise ImapDown(f"{what} failed: {response.result} {text}")
        return response

    def _tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.s.cafile or None)
        if not self.s.verify:
            # Only when configured: [imap] verify = false (a self-signed server).
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    async def open(self) -> None:
        tls = self._tls_context() if self.s.security == "tls" else None
        self.client = aioimaplib.IMAP4(
            host=self.s.host,
            port=self.s.port,
            timeout=self.s.timeout,
            conn_lost_cb=lambda exc: self.lost.set(),
            ssl_context=tls,
        )
        self._watch_unsolicited(self.client.protocol)
        try:
            await self.call(self.client.wait_hello_from_server())
        except (OSError, ssl.SSLError) as err:
            raise ImapDown(f"cannot connect to {self.s.host}:{self.s.port}: {err}") from err
        if self.s.security == "starttls":
            await self._starttls()
        await self._authenticate()

    def _watch_unsolicited(self, protocol: Any) -> None:
        """Notice EXISTS that arrives between commands.

        aioimaplib drops an untagged response that no command is waiting for
        (it logs "ignored untagged response"). An EXISTS sent after our last
        fetch and before IDLE began would be lost that way, and the mail
        would wait for the next IDLE restart, up to 29 minutes. We keep the
        library's handling and only take note.
        """
        handle = protocol._untagged_response

        def untagged(line: bytes) -> Any:
            if b"EXISTS" in line:
                self.news.set()
            return handle(line)

        protocol._untagged_response = untagged

    async def _starttls(self) -> None:
        """STARTTLS (RFC 3501 6.2.1): aioimaplib has the command but no helper."""
        assert self.client is not None
        protocol = self.client.protocol
        if "STARTTLS" not in protocol.capabilities:
            raise ImapDown(f'{self.s.host} does not offer STARTTLS; use security = "tls"')
        command = aioimaplib.Command("STARTTLS", protocol.new_tag(), loop=protocol.loop)
        await self.ok(protocol.execute(command), "STARTTLS")
        loop = asyncio.get_running_loop()
        transport = await self.call(
            loop.start_tls(
                protocol.transport,
                protocol,
                self._tls_context(),
                server_hostname=self.s.host,
            )
        )
        protocol.transport = transport
        await self.call(protocol.capability())  # capabilities may change after TLS

    async def _authenticate(self) -> None:
        assert self.client is not None
        protocol = self.client.protocol
        if self.s.auth == "plain":
            token = base64.b64encode(f"\0{self.s.user}\0{self.password}".encode()).decode()
            command = aioimaplib.Command(
                "AUTHENTICATE", protocol.new_tag(), "PLAIN", token, loop=protocol.loop
            )
            response = await self.call(protocol.execute(command, scrub=token))
            if response.result == "OK":
                protocol.state = aioimaplib.AUTH
        else:
            response = await self.call(self.client.login(self.s.user, self.password))
        if response.result != "OK":
            text = bytes(response.lines[-1]).decode(errors="replace") if response.lines else ""
            raise AuthFailed(
                f"the IMAP server {self.s.host} refused user {self.s.user!r} ({text}); "
                "check [imap] user and the password"
            )
        await self.call(protocol.capability())

    def has(self, capability: str) -> bool:
        assert self.client is not None
        return self.client.has_capability(capability)

    async def close(self) -> None:
        if self.client is None:
            return
        if not self.lost.is_set():
            with contextlib.suppress(ImapDown, aioimaplib.AioImapException, OSError):
                await self.call(self.client.logout(), timeout=5)
        transport = self.client.protocol.transport
        if transport is not None:
            transport.close()


class Listener:
    """The intake loop: reconnects forever, until `stop` is set."""

    def __init__(
        self,
        settings: ImapSection,
        importer: Importer,
        routes: Route,
        on_command: CommandSink | None = None,
        proof: Proof | None = None,
        problems: Problems | None = None,
    ) -> None:
        self.s = settings
        self.importer = importer
        self.routes = routes
        self.on_command = on_command
        self.proof = proof or Proof.of(
            settings, ListSection(address=routes.list_address, id=routes.list_id)
        )
        """What list mail must show before it is archived ([imap] require)."""
        self.problems = problems or Problems()
        """Where the intake's health goes: "intake" works or fails."""
        account = f"{settings.user}@{settings.host}/{settings.folder}"
        self.state = ImapState(importer, account)
        self.stored = asyncio.Event()
        """Set whenever a batch has been stored (tests and the daemon wait on it)."""
        self.ready = asyncio.Event()
        """Set once the first session is idling (systemd's READY=1)."""
        self.session_ended = asyncio.Event()
        """Set whenever a session fails; `failures` counts them."""
        self.failures = 0

    async def run(self, stop: asyncio.Event) -> None:
        delay = 1.0
        while not stop.is_set():
            password = self.s.secret()
            session = Session(self.s, password)
            try:
                await session.open()
                log.info("connected to %s:%d as %s", self.s.host, self.s.port, self.s.user)
                delay = 1.0
                await self.serve(session, stop)
            except AuthFailed as err:
                self._failed(str(err), logging.ERROR)
            except (ImapDown, aioimaplib.AioImapException, OSError) as err:
                self._failed(f"IMAP session ended: {err}", logging.WARNING)
            except (DigestError, sqlite3.Error) as err:
                # Storage failed (a full disk?): the UID did not move, so the
                # mail is fetched again once a retry succeeds.
                self._failed(f"cannot store fetched mail: {err}; will retry", logging.ERROR)
            finally:
                await session.close()
            if stop.is_set():
                break
            wait = min(delay, self.s.backoff_max) * random.uniform(0.5, 1.5)
            log.debug("reconnecting in %.1fs", wait)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
            delay = min(delay * 2, self.s.backoff_max)

    def _failed(self, why: str, level: int) -> None:
        """A session failed: said once per outage (bot/health.py), counted always."""
        self.problems.failing("intake", why, level)
        self.failures += 1
        self.ready.clear()
        self.session_ended.set()

    async def serve(self, session: Session, stop: asyncio.Event) -> None:
        assert session.client is not None
        selected = await session.ok(
            session.client.select(self.s.folder), f"selecting {self.s.folder}"
        )
        uidvalidity = next(
            (
                int(m.group(1))
                for line in selected.lines
                if isinstance(line, bytes) and (m := _UIDVALIDITY.search(line))
            ),
            0,
        )
        known, last_uid = self.state.load()
        if known and known != uidvalidity:
            log.warning(
                "UIDVALIDITY of %s changed (%d -> %d): fetching everything "
                "again; duplicates are dropped",
                self.s.folder,
                known,
                uidvalidity,
            )
            last_uid = 0
        last_uid = await self.fetch_new(session, uidvalidity, last_uid)
        self.problems.working("intake")
        idle = session.has("IDLE")
        if not idle:
            log.info("%s has no IDLE; polling every %ds", self.s.host, self.s.poll_interval)
        while not stop.is_set():
            if not self.ready.is_set():
                log.info("waiting for new mail in %s", self.s.folder)
                self.ready.set()
            if session.news.is_set():
                pass  # announced while we were busy: fetch again before idling
            elif idle:
                await self.idle(session, stop)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.s.poll_interval)
                await session.ok(session.client.noop(), "NOOP")
            if not stop.is_set():
                last_uid = await self.fetch_new(session, uidvalidity, last_uid)
                self.problems.working("intake")

    async def idle(self, session: Session, stop: asyncio.Event) -> None:
        """IDLE until new mail, `stop`, or the restart interval (~29 minutes)."""
        client = session.client
        assert client is not None
        idle = await session.call(client.idle_start(timeout=self.s.idle_restart))
        stopper = asyncio.ensure_future(stop.wait())
        # A connection dropped while idling must end the session at once, not
        # at the next IDLE restart (29 minutes): aioimaplib's push wait does
        # not return on a drop, so the drop is waited for too.
        lost = asyncio.ensure_future(session.lost.wait())
        try:
            while client.has_pending_idle() and not session.news.is_set():
                push = asyncio.ensure_future(client.wait_server_push(self.s.idle_restart + 60))
                done, _ = await asyncio.wait(
                    {push, stopper, lost}, return_when=asyncio.FIRST_COMPLETED
                )
                if lost in done:
                    push.cancel()
                    raise ImapDown("the connection to the IMAP server was lost while idling")
                if stopper in done:
                    push.cancel()
                    break
                try:
                    lines = await session.call(push, self.s.idle_restart + 60)
                except TimeoutError:
                    break
                self.problems.working("intake")  # the server's keep-alive, or news
                if lines == aioimaplib.STOP_WAIT_SERVER_PUSH:
                    break  # time to re-issue IDLE
                if any(b"EXISTS" in bytes(line) for line in lines):
                    break
        finally:
            stopper.cancel()
            lost.cancel()
            if not session.lost.is_set():
                client.idle_done()
                await session.call(idle)

    async def fetch_new(self, session: Session, uidvalidity: int, last_uid: int) -> int:
        """Fetch and store every message above `last_uid`; return the new last UID."""
        client = session.client
        assert client is not None
        session.news.clear()  # the search below sees whatever was announced
        found = await session.ok(
            client.uid_search(f"UID {last_uid + 1}:*", charset=None), "UID SEARCH"
        )
        uids = sorted(
            int(w) for line in found.lines[:-1] for w in bytes(line).split() if w.isdigit()
        )
        uids = [u for u in uids if u > last_uid]  # "n:*" always matches the last UID
        for start in range(0, len(uids), self.s.batch):
            chunk = uids[start : start + self.s.batch]
            uid_set = ",".join(map(str, chunk))
            sizes = fetched_sizes(
                (
                    await session.ok(
                        client.uid("fetch", uid_set, "(UID RFC822.SIZE)"),
                        "UID FETCH sizes",
                    )
                ).lines
            )
            limit = self.importer.max_size
            wanted = [u for u in chunk if sizes.get(u, 0) <= limit]
            for uid in chunk:
                if uid not in wanted:
                    log.warning(
                        "skipped UID %d: %d bytes is more than the limit of %d "
                        "([import] max_message_size)",
                        uid,
                        sizes.get(uid, 0),
                        limit,
                    )
            messages: list[tuple[int, bytes]] = []
            if wanted:
                response = await session.ok(
                    client.uid("fetch", ",".join(map(str, wanted)), "(UID BODY.PEEK[])"),
                    "UID FETCH",
                    timeout=self.s.timeout * 5,
                )
                messages = fetched_messages(response.lines)
            parsed = [
                await asyncio.to_thread(self.importer.parse, raw)
                if len(raw) > OFF_LOOP_BYTES
                else self.importer.parse(raw)
                for _uid, raw in messages
            ]
            # DKIM and ARC look keys up in DNS: not on the event loop.
            verdicts = (
                [await asyncio.to_thread(self.proof.failure, raw) for _uid, raw in messages]
                if self.proof.slow
                else None
            )
            self.take(messages, uidvalidity, chunk[-1], parsed, verdicts)
            last_uid = chunk[-1]
            await self.after_stored(session, [uid for uid, _ in messages])
        return last_uid

    def take(
        self,
        messages: list[tuple[int, bytes]],
        uidvalidity: int,
        last_uid: int,
        results: list[ParsedMessage | Exception] | None = None,
        verdicts: list[str | None] | None = None,
    ) -> None:
        """Route and store one fetched batch, then record its last UID.

        `results` are the messages already parsed (large mail is parsed in a
        thread, off the event loop); without them each is parsed here.
        `verdicts`, likewise, are the provenance checks already made.
        """
        batch: list[tuple[bytes, ParsedMessage]] = []
        seen: set[tuple[str, str]] = set()
        if results is None:
            results = [self.importer.parse(raw) for _uid, raw in messages]
        for n, ((uid, raw), result) in enumerate(zip(messages, results, strict=True)):
            parsed = self.importer.judge(raw, f"{self.s.folder} UID {uid}", result)
            if parsed is None:
                continue
            where = route(
                parsed,
                self.routes.list_id,
                self.routes.list_address,
                self.routes.bot_address,
            )
            if where == LIST:
                why = verdicts[n] if verdicts is not None else self.proof.failure(raw)
                if why is not None:
                    self.importer.refuse(raw, f"{self.s.folder} UID {uid}", f"not list mail: {why}")
                elif self.importer.is_new(parsed, seen):
                    batch.append((raw, parsed))
            elif where == COMMAND and self.on_command is not None:
                try:
                    self.on_command(raw, parsed)
                except sqlite3.Error:
                    raise  # storage: retried with the batch, the UID does not move
                except Exception as err:
                    self.importer.fail(raw, f"{self.s.folder} UID {uid}", err)
            else:
                log.info(
                    "left UID %d in place: neither list traffic nor a command "
                    "(From %s, Subject %r)",
                    uid,
                    parsed.from_addr,
                    parsed.subject.full,
                )
        self.importer.store_each(
            batch, lambda: self.state.save(uidvalidity, last_uid), self.s.folder
        )
        log.info(
            "stored %d of %d fetched messages, up to UID %d",
            len(batch),
            len(messages),
            last_uid,
        )
        self.stored.set()

    async def after_stored(self, session: Session, uids: list[int]) -> None:
        """Mark processed mail \\Seen and/or move it, as configured."""
        client = session.client
        if not uids or client is None or not (self.s.mark_seen or self.s.move_to):
            return
        uid_set = ",".join(map(str, uids))
        if self.s.mark_seen:
            await session.ok(
                client.uid("store", uid_set, "+FLAGS.SILENT", r"(\Seen)"),
                "marking mail seen",
            )
        if self.s.move_to:
            if session.has("MOVE"):
                await session.ok(client.uid("move", uid_set, self.s.move_to), "UID MOVE")
            else:
                await session.ok(client.uid("copy", uid_set, self.s.move_to), "UID COPY")
                await session.ok(
                    client.uid("store", uid_set, "+FLAGS.SILENT", r"(\Deleted)"),
                    "flagging moved mail deleted",
                )
                if session.has("UIDPLUS"):
                    # Only our messages, not whatever else is flagged \Deleted.
                    await session.ok(client.uid("expunge", uid_set), "UID EXPUNGE")
                else:
                    await session.ok(client.expunge(), "EXPUNGE")
