"""The README's Postfix block, as written, in front of the bot's LMTP port.

A private Postfix instance (its own config and queue directory, SMTP on a
free port of 127.0.0.1) gets the README's main.cf lines and map files,
read out of README.md so the two cannot drift apart. Mail comes from
127.0.0.2, which is outside `mynetworks`: exactly the Internet's view.
Postfix's master must start as root (it drops to the `postfix` user), as
on any mail server; CI runs as root and scripts/setup installs Postfix.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import smtplib
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from bot.cli import main
from bot.config import from_table
from bot.delivery.mail import Identity
from bot.delivery.outbox import Outbox
from bot.desk import lmtp
from bot.desk.inbound import Desk
from bot.digest.build import environment
from bot.version import version
from tests.dovecot import free_port
from tests.mailfactory import Store
from tests.sandbox import need_root
from tests.smtpsink import Sink

README = Path(__file__).resolve().parents[1] / "README.md"
POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
OPENDKIM = shutil.which("opendkim") or "/usr/sbin/opendkim"
GENKEY = shutil.which("opendkim-genkey") or "/usr/sbin/opendkim-genkey"
BOT = "kvm-digest@digest.example.org"
OUTSIDE = "127.0.0.2"
"""A loopback source address that is not in mynetworks (127.0.0.1/32)."""


def readme_block(first: str = "# /etc/postfix/main.cf") -> dict[str, str]:
    """A README block of config files, by name: {"main.cf": ..., "transport": ...}.

    Each file starts with a `# /etc/...` heading line; `first` is the heading
    the block starts with (the Postfix block, or the OpenDKIM one).
    """
    text = README.read_text()
    block = re.search(rf"```\n({re.escape(first)}\n.*?)```", text, re.S)
    assert block, f"README.md has no block starting with {first}"
    files: dict[str, str] = {}
    name = ""
    for line in block.group(1).splitlines():
        heading = re.fullmatch(r"# /etc/(?:postfix/)?(\S+?)(, added)?", line)
        if heading:
            name = heading.group(1)
            files[name] = ""
        elif line.strip():
            files[name] += line + "\n"
    return files


BASE = """\
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
mail_owner = postfix
myhostname = mx.digest.example.org
mydestination =
mynetworks = 127.0.0.1/32
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
maillog_file_prefixes = {root}
maillog_file = {root}/maillog
alias_maps =
alias_database =
smtpd_tls_security_level = none
"""

MASTER = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
lmtp      unix  - - n - - lmtp
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


class Postfix:
    """A private Postfix: the README's block over a minimal test base."""

    def __init__(self, lmtp_port: int, readme: bool = True, main_cf_extra: str = "") -> None:
        # World-searchable, like tests/dovecot.py: Postfix's daemons run as
        # `postfix` and cannot enter pytest's 0700 directories.
        self.root = Path(tempfile.mkdtemp(prefix="kvm-digest-postfix-"))
        self.root.chmod(0o755)
        self.conf = self.root / "conf"
        self.conf.mkdir()
        (self.root / "queue").mkdir()
        (self.root / "data").mkdir()
        shutil.chown(self.root / "data", "postfix")
        self.port = free_port()
        main_cf = BASE.format(root=self.root)
        maps = {}
        if readme:
            files = readme_block()
            main_cf += files.pop("main.cf").replace("/etc/postfix/", f"{self.conf}/")
            maps = {
                self.conf / name: text.replace("127.0.0.1:8024", f"127.0.0.1:{lmtp_port}")
                for name, text in files.items()
            }
        (self.conf / "main.cf").write_text(main_cf + main_cf_extra)
        (self.conf / "master.cf").write_text(MASTER.format(port=self.port))
        for path, text in maps.items():
            path.write_text(text)
            self.run("postmap", "-c", str(self.conf), f"hash:{path}")

    def route(self, domain: str, port: int) -> None:
        """Mail for `domain` goes to 127.0.0.1:port (in life: the domain's MX)."""
        with (self.conf / "transport").open("a") as f:
            f.write(f"{domain}    smtp:[127.0.0.1]:{port}\n")
        self.run("postmap", "-c", str(self.conf), f"hash:{self.conf}/transport")

    def run(self, *args: str) -> str:
        result = subprocess.run(args, capture_output=True, text=True)
        assert result.returncode == 0, f"{args}: {result.stderr}{self.log()}"
        return result.stdout

    def postconf(self) -> dict[str, str]:
        out = self.run("postconf", "-c", str(self.conf), "-n")
        return dict(line.split(" = ", 1) for line in out.splitlines() if " = " in line)

    def start(self) -> Postfix:
        self.run(POSTFIX, "-c", str(self.conf), "check")
        self.run(POSTFIX, "-c", str(self.conf), "start")
        return self

    def stop(self) -> None:
        subprocess.run([POSTFIX, "-c", str(self.conf), "stop"], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        path = self.root / "maillog"
        return "\n--- maillog ---\n" + path.read_text() if path.exists() else ""

    def send(self, rcpt: str, frm: str = "una@example.net") -> None:
        """One SMTP session from outside mynetworks; raises on refusal."""
        with smtplib.SMTP("127.0.0.1", self.port, source_address=(OUTSIDE, 0)) as client:
            client.sendmail(
                frm,
                [rcpt],
                f"From: {frm}\r\nTo: {rcpt}\r\nSubject: help\r\n\r\nhelp\r\n".encode(),
            )


@pytest.fixture
def bot(tmp_path):
    """The bot's desk on a real LMTP port (started in the test's event loop)."""
    port = free_port()
    config = from_table(
        {"commands": {"address": BOT, "listen": f"127.0.0.1:{port}"}, "data": {"dir": "x"}}
    )
    store = Store(tmp_path / "var")
    outbox = Outbox(store.index.conn, Identity(BOT))
    desk = Desk(store.index.conn, config, outbox, environment())
    return port, desk, store


@pytest.fixture
def postfix_ready():
    need_root("Postfix's master starts as root, as on any mail server")
    assert Path(POSTFIX).exists(), "Postfix is not installed; scripts/setup installs it"


class OpenDkim:
    """OpenDKIM with the README's settings and a fresh key, signing on a free port."""

    def __init__(self) -> None:
        assert Path(OPENDKIM).exists() and Path(GENKEY).exists(), (
            "OpenDKIM is not installed (opendkim, opendkim-tools); scripts/setup installs it"
        )
        # World-searchable, as for Postfix: OpenDKIM runs as `opendkim`.
        self.root = Path(tempfile.mkdtemp(prefix="kvm-digest-opendkim-"))
        self.root.chmod(0o755)
        subprocess.run(
            [GENKEY, "-b", "2048", "-d", "digest.example.org", "-s", "kvm", "-D", str(self.root)],
            check=True,
        )
        shutil.chown(self.root / "kvm.private", "opendkim")
        self.port = free_port()
        conf = readme_block("# /etc/opendkim.conf")["opendkim.conf"]
        conf = conf.replace("/etc/dkimkeys/", f"{self.root}/")
        conf = conf.replace("inet:8891@", f"inet:{self.port}@")
        # What Debian's opendkim.conf holds besides the README's lines; and
        # the key sits under /tmp, which OpenDKIM's safe-key check refuses.
        conf += f"UserID opendkim\nPidFile {self.root}/pid\nRequireSafeKeys false\n"
        (self.root / "opendkim.conf").write_text(conf)
        self.proc: subprocess.Popen | None = None

    def start(self) -> OpenDkim:
        log = (self.root / "log").open("w")
        self.proc = subprocess.Popen(
            [OPENDKIM, "-f", "-x", str(self.root / "opendkim.conf")], stdout=log, stderr=log
        )
        deadline = time.monotonic() + 20
        while True:  # ready when the milter port answers
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return self
            assert self.proc.poll() is None, (self.root / "log").read_text()
            assert time.monotonic() < deadline, "OpenDKIM did not listen"
            time.sleep(0.05)

    def dns(self, name: bytes | str, timeout: float = 5) -> bytes | None:
        """The TXT record opendkim-genkey wrote, for kvm._domainkey.digest.example.org."""
        wanted = "kvm._domainkey.digest.example.org"
        if (name.decode() if isinstance(name, bytes) else name).rstrip(".") != wanted:
            return None
        record = (self.root / "kvm.txt").read_text()
        return "".join(re.findall(r'"([^"]*)"', record)).encode()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=15)
        shutil.rmtree(self.root, ignore_errors=True)


def test_readme_lines_are_what_postconf_reads(postfix_ready, bot):
    port, _, _ = bot
    postfix = Postfix(port)
    try:
        settings = postfix.postconf()
        assert settings["relay_domains"] == "digest.example.org"
        assert settings["recipient_delimiter"] == "+"
        assert settings["transport_maps"] == f"hash:{postfix.conf}/transport"
        postfix.run(POSTFIX, "-c", str(postfix.conf), "check")
        lookup = postfix.run(
            "postmap",
            "-c",
            str(postfix.conf),
            "-q",
            "digest.example.org",
            f"hash:{postfix.conf}/transport",
        )
        assert lookup.strip() == f"lmtp:inet:127.0.0.1:{port}"
    finally:
        postfix.stop()


async def test_mail_from_outside_reaches_the_bot_through_postfix(postfix_ready, bot):
    port, desk, store = bot
    server = await lmtp.serve(desk, "127.0.0.1", port)
    postfix = Postfix(port).start()
    try:
        for rcpt in (BOT, "kvm-digest+help@digest.example.org"):
            await asyncio.to_thread(postfix.send, rcpt)
            # Postfix queued it; its lmtp client delivers to our server.
            await asyncio.wait_for(desk.pending.wait(), 30)
            desk.pending.clear()
        rows = store.index.conn.execute("SELECT rcpt, sender FROM inbound ORDER BY id").fetchall()
        assert rows == [
            (BOT, "una@example.net"),
            ("kvm-digest+help@digest.example.org", "una@example.net"),
        ], postfix.log()
        # Any other address of the domain is refused at RCPT: no backscatter.
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            await asyncio.to_thread(postfix.send, "someone@digest.example.org")
        code, text = refused.value.recipients["someone@digest.example.org"]
        assert code == 550 and b"relay recipient table" in text
    finally:
        postfix.stop()
        server.close()


async def test_postmaster_and_abuse_reach_a_person(postfix_ready, bot):
    """RFC 5321 4.5.1 and RFC 2142: the bot's domain takes mail for them, and it
    goes to the admin (the README's virtual map), not to the bot's LMTP port."""
    port, desk, store = bot
    server = await lmtp.serve(desk, "127.0.0.1", port)
    admin = Sink().start()  # example.org's MX, where admin@example.org reads mail
    postfix = Postfix(port)
    postfix.route("example.org", admin.port)
    postfix.start()
    try:
        rcpts = (
            "postmaster@digest.example.org",
            "Postmaster@DIGEST.example.org",
            "abuse@digest.example.org",
        )
        for rcpt in rcpts:
            await asyncio.to_thread(postfix.send, rcpt, "postmaster@receiver.example.net")
        got = await asyncio.to_thread(admin.wait_for, 3, 30)
        assert sorted(r.message["To"] for r in got) == sorted(rcpts), postfix.log()
        assert all(r.recipients == ["admin@example.org"] for r in got)
        assert store.index.conn.execute("SELECT COUNT(*) FROM inbound").fetchone() == (0,)
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            await asyncio.to_thread(postfix.send, "hostmaster@digest.example.org")
    finally:
        postfix.stop()
        admin.stop()
        server.close()


async def test_without_relay_domains_outside_mail_is_refused(postfix_ready, bot):
    port, _, _ = bot
    postfix = Postfix(port, readme=False).start()
    try:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            await asyncio.to_thread(postfix.send, BOT)
        code, text = refused.value.recipients[BOT]
        assert code in (454, 554) and b"Relay access denied" in text
    finally:
        postfix.stop()


def test_loopback_postfix_needs_security_none(postfix_ready, bot, tmp_path, capsys):
    """What the README says about [smtp] security, against the real Postfix."""
    port, _, _ = bot
    postfix = Postfix(port).start()
    try:
        config = tmp_path / "c.toml"
        base = (
            f'[data]\ndir = "{tmp_path}/var"\n[smtp]\nhost = "127.0.0.1"\nport = {postfix.port}\n'
        )
        config.write_text(base)  # the default: starttls
        assert main(["--config", str(config), "check-config", "--connect"]) == 1
        out = capsys.readouterr().out
        assert "does not offer STARTTLS" in out and 'security = "none"' in out
        config.write_text(base + 'security = "none"\n')
        assert main(["--config", str(config), "check-config", "--connect"]) == 0
        assert f"smtp: 127.0.0.1:{postfix.port}: EHLO ok" in capsys.readouterr().out
    finally:
        postfix.stop()


async def test_a_real_postfix_bounce_comes_back_by_verp_and_disables(postfix_ready, tmp_path):
    """The whole loop: digest out through Postfix, its DSN back over LMTP."""
    from bot.delivery import periodic, subscribers, verp
    from bot.delivery.sender import Sender

    port = free_port()
    postfix = Postfix(port)
    # bounce.test's server refuses the address after Postfix has accepted
    # the digest: Postfix writes its own DSN to the envelope sender.
    remote = Sink()
    remote.handler.refuse["gone@bounce.test"] = "550 5.1.1 <gone@bounce.test>: no such user"
    remote.start()
    with (postfix.conf / "transport").open("a") as f:
        f.write(f"bounce.test    smtp:[127.0.0.1]:{remote.port}\n")
    postfix.run("postmap", "-c", str(postfix.conf), f"hash:{postfix.conf}/transport")
    postfix.start()
    config = from_table(
        {
            "commands": {"address": BOT, "listen": f"127.0.0.1:{port}"},
            "smtp": {"host": "127.0.0.1", "port": postfix.port, "security": "none"},
            "schedule": {"send_empty": True},
            "bounces": {"threshold": 1},
        }
    )
    store = Store(tmp_path / "var")
    conn = store.index.conn
    outbox = Outbox(conn, Identity(BOT))
    desk = Desk(conn, config, outbox, environment())
    server = await lmtp.serve(desk, "127.0.0.1", port)
    try:
        with conn:
            subscribers.subscribe(conn, "gone@bounce.test")
        periodic.run(conn, config, outbox, environment(), "daily")
        sender = Sender(outbox, config.smtp)
        await sender.flush()
        assert outbox.counts() == {"sent": 1}  # Postfix said 250: the failure comes later
        await asyncio.wait_for(desk.pending.wait(), 30)
        ((rcpt, sender_addr, raw),) = conn.execute("SELECT rcpt, sender, raw FROM inbound")
        key = verp.install_key(conn)
        assert rcpt == f"kvm-digest+bounce-{verp.token(key, 'gone@bounce.test')}@{BOT[11:]}"
        assert sender_addr == ""  # a DSN, null sender
        assert b"multipart/report" in raw and b"5.1.1" in raw
        desk.process()
        assert subscribers.get(conn, "gone@bounce.test").status == "disabled"
        (notice,) = conn.execute("SELECT recipient FROM outbox WHERE kind = 'notice'")
        assert notice == ("gone@bounce.test",)
    finally:
        server.close()
        postfix.stop()
        remote.stop()


async def test_digests_leave_signed_by_opendkim_and_aligned_for_dmarc(postfix_ready, tmp_path):
    """The README's OpenDKIM block as a milter of the private Postfix: a digest
    the bot sends arrives with a signature that verifies, covers From (twice:
    oversigned), and names the domain of From and of the envelope sender."""
    import dkim

    from bot.delivery import periodic, subscribers
    from bot.delivery.sender import Sender

    signer = OpenDkim().start()
    milter = readme_block("# /etc/opendkim.conf")["main.cf"]
    lmtp_port = free_port()
    postfix = Postfix(lmtp_port, main_cf_extra=milter.replace(":8891", f":{signer.port}"))
    reader_mx = Sink().start()
    postfix.route("example.net", reader_mx.port)
    postfix.start()
    try:
        assert postfix.postconf()["smtpd_milters"] == f"inet:127.0.0.1:{signer.port}"
        config = from_table(
            {
                "commands": {"address": BOT, "listen": f"127.0.0.1:{lmtp_port}"},
                "smtp": {"host": "127.0.0.1", "port": postfix.port, "security": "none"},
                "schedule": {"send_empty": True},
            }
        )
        store = Store(tmp_path / "var")
        conn = store.index.conn
        outbox = Outbox(conn, Identity(BOT))
        with conn:
            subscribers.subscribe(conn, "reader@example.net")
        periodic.run(conn, config, outbox, environment(), "daily")
        await Sender(outbox, config.smtp).flush()
        (got,) = await asyncio.to_thread(reader_mx.wait_for, 1, 30)
        raw = got.data
        assert dkim.verify(raw, dnsfunc=signer.dns), raw[:2000]
        tampered = raw.replace(b"KVM mailing list update", b"KVM mailing list updatf", 1)
        # The check can fail: a changed body no longer verifies.
        assert tampered != raw and not dkim.verify(tampered, dnsfunc=signer.dns)
    finally:
        postfix.stop()
        signer.stop()
        reader_mx.stop()
    signature = got.message["DKIM-Signature"]
    tags = dict(t.strip().split("=", 1) for t in re.sub(r"\s+", "", str(signature)).split(";") if t)
    assert tags["d"] == "digest.example.org" and tags["s"] == "kvm"
    signed = tags["h"].lower().split(":")
    assert signed.count("from") == 2 and "subject" in signed and "list-unsubscribe" in signed
    # DMARC alignment: the signing domain, the From domain and the envelope's are one.
    from_domain = got.message["From"].addresses[0].domain
    assert from_domain == tags["d"] == got.sender.rpartition("@")[2]
    # And it says which kvm-digest sent it.
    assert b"\r\nX-Mailer: kvm-digest " + version().encode() + b"\r\n" in raw
