"""A real Dovecot IMAP server on 127.0.0.1, in a temporary directory.

Each test gets its own throwaway config, passwd file and Maildir, on a free
unprivileged port. As root, mail processes run as `nobody` (Dovecot refuses
uid 0 for mail); otherwise everything runs as the current user. The directory
is a world-readable one of its own (pytest's are 0700, which Dovecot's
unprivileged auth and mail processes cannot enter), removed by `cleanup()`.
"""

from __future__ import annotations

import grp
import imaplib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from bot.config import ImapSection

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
DOVEADM = shutil.which("doveadm") or "/usr/bin/doveadm"
USER, PASSWORD = "bot", "s3cret-pass"

CONFIG = """\
protocols = imap
listen = 127.0.0.1
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
first_valid_uid = 0
default_internal_user = {internal}
default_login_user = {login}
mail_location = maildir:{root}/mail/%u
mailbox_idle_check_interval = 1 secs
protocol imap {{
  mail_max_userip_connections = 50
{capability}}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/home/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service stats {{
  unix_listener stats-reader {{
    mode = 0666
  }}
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
"""


def make_certificates(root: Path) -> None:
    """A throwaway CA and a server certificate for localhost / 127.0.0.1."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=root, check=True, capture_output=True)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=kvm-digest test CA",
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    )
    (root / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Dovecot:
    """Start, stop and feed a private Dovecot."""

    def __init__(self, idle: bool = True, tls: bool = False) -> None:
        root = Path(tempfile.mkdtemp(prefix="kvm-digest-dovecot-"))
        root.chmod(0o755)
        self.root = root
        self.port = free_port()
        self.idle = idle
        self.proc: subprocess.Popen | None = None
        root.mkdir(parents=True, exist_ok=True)
        if os.getuid() == 0:
            uid, gid = pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid
            internal, login = "dovecot", "dovenull"
        else:
            uid, gid = os.getuid(), os.getgid()
            internal = login = pwd.getpwuid(uid).pw_name
        for sub in ("mail", "home"):
            (root / sub).mkdir(exist_ok=True)
            if os.getuid() == 0:
                os.chown(root / sub, uid, gid)
        # A server without IDLE, for the polling fallback: list what it keeps.
        capability = "" if idle else "  imap_capability = IMAP4rev1 SASL-IR LITERAL+ UIDPLUS\n"
        config = CONFIG.format(
            root=root,
            port=self.port,
            uid=uid,
            gid=gid,
            internal=internal,
            login=login,
            capability=capability,
        )
        self.tls_port = 0
        self.cafile = root / "ca.pem"
        if tls:
            self.tls_port = free_port()
            make_certificates(root)
            config = config.replace(
                "ssl = no\n",
                f"ssl = yes\nssl_cert = <{root}/server.pem\nssl_key = <{root}/server.key\n",
            )
            config = config.replace(
                "  inet_listener imaps {\n    port = 0\n",
                f"  inet_listener imaps {{\n    address = 127.0.0.1\n    port = {self.tls_port}\n",
            )
        (root / "dovecot.conf").write_text(config)
        self.set_password(PASSWORD)

    def imap_settings(self, **changes) -> ImapSection:
        """[imap] settings for this server, plain on loopback, quick to retry."""
        base = {
            "host": "127.0.0.1",
            "port": self.port,
            "security": "none",
            "user": USER,
            "password": PASSWORD,
            "timeout": 10,
            "backoff_max": 1,
        }
        return ImapSection(**{**base, **changes})

    def config_toml(self, data_dir: Path, password: str) -> str:
        """[list], [data] and [imap] of a config reading kvmarm mail from here.

        `password` is the TOML line that says where the password comes from.
        """
        return f"""
[list]
id = "kvmarm.lists.cs.columbia.edu"
address = "kvmarm@lists.cs.columbia.edu"
[data]
dir = "{data_dir}"
[imap]
host = "127.0.0.1"
port = {self.port}
security = "none"
user = "{USER}"
{password}
backoff_max = 2
"""

    def set_password(self, password: str) -> None:
        path = self.root / "passwd"
        before = path.stat().st_mtime_ns if path.exists() else 0
        path.write_text(f"{USER}:{{PLAIN}}{password}::::\n")
        # Dovecot re-reads a passwd-file when its mtime changes, to the
        # second: a change within the same second would go unseen.
        after = max(path.stat().st_mtime_ns, before + 2_000_000_000)
        os.utime(path, ns=(after, after))
        if self.proc is None or self.proc.poll() is not None:
            return
        # A running Dovecot stats the file at most once per second of its
        # clock: a login in the same second as the last one still sees the
        # old password. Done when the new password works, not after a sleep.
        deadline = time.monotonic() + 30
        while True:
            try:
                c = imaplib.IMAP4("127.0.0.1", self.port, timeout=10)
                try:
                    c.login(USER, password)
                finally:
                    c.shutdown()
                return
            except imaplib.IMAP4.error:
                if time.monotonic() > deadline:
                    raise RuntimeError("Dovecot never accepted the new password") from None

    def start(self) -> Dovecot:
        for _attempt in range(3):
            if self._start():
                return self
            # free_port() can lose its port to another process before Dovecot
            # binds it (parallel tests, a connection storm): take another.
            old, self.port = self.port, free_port()
            conf = self.root / "dovecot.conf"
            conf.write_text(conf.read_text().replace(f"port = {old}\n", f"port = {self.port}\n"))
        raise RuntimeError(self.log())

    def _start(self) -> bool:
        """Start Dovecot; False when it exited because its port was taken."""
        self.proc = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(self.root / "dovecot.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:  # readiness: a real LOGIN works (the auth worker is up too)
            try:
                self.client().logout()
                return True
            except (OSError, imaplib.IMAP4.error):
                if self.proc.poll() is not None and "in use" in self.log():
                    return False
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(self.log()) from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=15)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        path = self.root / "dovecot.log"
        return path.read_text() if path.exists() else "(no log)"

    def client(self) -> imaplib.IMAP4:
        c = imaplib.IMAP4("127.0.0.1", self.port, timeout=10)
        c.login(USER, PASSWORD)
        return c

    def append(self, *raws: bytes, folder: str = "INBOX") -> None:
        """APPEND messages the way a delivery agent would."""
        c = self.client()
        try:
            for raw in raws:
                crlf = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
                typ, data = c.append(folder, None, None, crlf)
                assert typ == "OK", data
        finally:
            c.logout()

    def uids(self, folder: str = "INBOX", criteria: str = "ALL") -> list[int]:
        c = self.client()
        try:
            c.select(folder)
            _, data = c.uid("search", None, criteria)
            return [int(x) for x in data[0].split()]
        finally:
            c.logout()

    def create(self, folder: str) -> None:
        c = self.client()
        try:
            c.create(folder)
        finally:
            c.logout()

    def set_uidvalidity(self, value: int, folder: str = "INBOX") -> None:
        subprocess.run(
            [
                DOVEADM,
                "-c",
                str(self.root / "dovecot.conf"),
                "mailbox",
                "update",
                "-u",
                USER,
                "--uid-validity",
                str(value),
                folder,
            ],
            check=True,
            capture_output=True,
        )
