"""No secret reaches a log, an error, check-config or argv, at any verbosity.

The IMAP password goes to a real Dovecot from `kvm-digest -vv listen` (and
-vvv) in a process of its own, and its whole stderr is searched. A follow
URL with credentials is fetched from a real HTTP server that demands them;
every execve of the fetch (git and its helpers) is recorded with strace and
searched, as are its output, its logs, check-config and the mirror's files.
"""

from __future__ import annotations

import base64
import functools
import http.server
import logging
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import ClassVar

import pytest

from bot import logsetup
from tests.dovecot import Dovecot
from tests.test_follow import SLICE, Upstream

ROOT = Path(__file__).resolve().parents[1]
TRICKY = 'pa"ss\\w0rd-Zq81'
"""A password aioimaplib escapes when it quotes it, so its own scrubbing misses it."""


@pytest.mark.parametrize("verbosity", ["-vv", "-vvv"])
def test_the_imap_password_never_reaches_the_log(tmp_path, verbosity):
    server = Dovecot().start()
    try:
        server.set_password(TRICKY)
        secret = tmp_path / "imap-password"
        secret.write_text(TRICKY + "\n")
        secret.chmod(0o600)
        config = tmp_path / "bot.toml"
        config.write_text(server.config_toml(tmp_path / "var", f'password_file = "{secret}"'))
        proc = subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "--config", str(config), verbosity, "listen"],
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:  # until logged in and idling
            seen.append(line)
            if "waiting for new mail" in line:
                break
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=30)
    finally:
        server.cleanup()
    log = "".join(seen) + rest
    assert "connected to 127.0.0.1" in log and "waiting for new mail" in log  # it did log in
    for needle in (TRICKY, "ss\\\\w0rd", "w0rd-Zq81", "LOGIN", "AUTHENTICATE"):
        assert needle not in log, needle
    assert " DEBUG " in log  # the verbosity was real


def test_no_login_line_passes_the_protocol_filter():
    record = logging.LogRecord("aioimaplib", 10, "", 0, "Sending : b'A1 LOGIN bot \"x\"'", (), None)
    assert not logsetup.no_login(record)
    record.msg = "Received : b'* 3 EXISTS'"
    assert logsetup.no_login(record)


# -- URL credentials -----------------------------------------------------------

USER, TOKEN = "digest", "tok3n-Xq7Rk2"


class _Guarded(http.server.SimpleHTTPRequestHandler):
    """Serves files only with the right Basic credentials; remembers what it was sent."""

    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        wanted = "Basic " + base64.b64encode(f"{USER}:{TOKEN}".encode()).decode()
        self.seen.append(self.headers.get("Authorization", ""))
        if self.headers.get("Authorization") != wanted:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="lore"')
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def private(tmp_path: Path):
    """An inbox over (dumb) HTTP that needs credentials, as a private mirror would."""
    upstream = Upstream(tmp_path / "lore" / "kvm")
    upstream.add(0, SLICE[:5])
    root = tmp_path / "www"
    (root / "kvm").mkdir(parents=True)
    epoch = upstream.root / "git" / "0.git"
    subprocess.run(["git", "-C", str(epoch), "update-server-info"], check=True)
    (root / "kvm" / "0").symlink_to(epoch)
    _Guarded.seen = []
    handler = functools.partial(_Guarded, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    thread.join()


STRACE = ["strace", "-f", "-qq", "-e", "trace=execve", "-s", "4096"]
KVM_DIGEST = [sys.executable, "-m", "bot.cli"]


def run_traced(tmp_path: Path, config: Path, *args: str) -> tuple[subprocess.CompletedProcess, str]:
    """Run kvm-digest under strace; its result and every execve's argv."""
    trace = tmp_path / "execve.log"
    result = subprocess.run(
        [*STRACE, "-o", str(trace), *KVM_DIGEST, "--config", str(config), "-vv", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    return result, trace.read_text()


def test_url_credentials_go_to_git_outside_argv_and_are_never_printed(tmp_path, private):
    url = f"http://{USER}:{TOKEN}@127.0.0.1:{private}/kvm"
    config = tmp_path / "follow.toml"
    config.write_text(f'[data]\ndir = "{tmp_path / "var"}"\n[archive]\nfollow = "{url}"\n')
    result, execs = run_traced(tmp_path, config, "fetch")
    assert result.returncode == 0, result.stderr
    assert "new epochs 0; 5 new messages indexed" in result.stdout
    assert f"http://***@127.0.0.1:{private}/kvm" in result.stdout
    # git ran (clone, its http helper), and the server got the credentials...
    assert '"clone"' in execs and "remote-http" in execs
    assert any(a.startswith("Basic ") and a != "" for a in _Guarded.seen)
    # ...from git's environment, not its argv, nor stored in the mirror.
    mirror = tmp_path / "var" / "mirror" / "git" / "0.git"
    for text in (execs, result.stdout, result.stderr, (mirror / "config").read_text()):
        assert TOKEN not in text
    assert f"127.0.0.1:{private}/kvm/0" in (mirror / "config").read_text()
    # The next fetch authenticates the same way.
    again, execs = run_traced(tmp_path, config, "fetch")
    assert again.returncode == 0 and "fetched epochs 0" in again.stdout, again.stderr
    assert '"fetch"' in execs and TOKEN not in execs + again.stdout + again.stderr


def test_check_config_and_errors_redact_url_credentials(tmp_path, private, cli):
    url = f"https://{USER}:{TOKEN}@git.example.org/kvm"
    config = tmp_path / "c.toml"
    config.write_text(f'[data]\ndir = "{tmp_path / "var"}"\n[archive]\nfollow = "{url}"\n')
    checked = cli("--config", config, "check-config")
    assert "intake: following https://***@git.example.org/kvm" in checked.out
    assert TOKEN not in checked.out + checked.err
    early = cli("--config", config, "digest", "--all")  # nothing fetched yet
    assert early.code == 1 and "https://***@git.example.org/kvm" in early.err
    assert TOKEN not in early.err
    # A wrong token: git is refused, and says so without either token.
    wrong = f"http://{USER}:wrong-{TOKEN}@127.0.0.1:{private}/kvm"
    config.write_text(f'[data]\ndir = "{tmp_path / "var2"}"\n[archive]\nfollow = "{wrong}"\n')
    result, execs = run_traced(tmp_path, config, "fetch")
    assert result.returncode == 1 and "cannot clone http://127.0.0.1:" in result.stderr
    assert TOKEN not in result.stderr + result.stdout + execs


def test_every_log_line_shows_url_credentials_as_stars(tmp_path):
    script = (
        "import logging\nfrom bot import logsetup\nlogsetup.configure(2)\n"
        "log = logging.getLogger('bot.test')\n"
        f"log.info('fetched %s', 'https://{USER}:{TOKEN}@lore.example/kvm')\n"
        "try:\n"
        f"    raise OSError('cannot reach git://{TOKEN}@lore.example/kvm')\n"
        "except OSError:\n"
        "    log.exception('fetch failed')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True
    ).stderr
    assert "fetched https://***@lore.example/kvm" in out
    assert "git://***@lore.example/kvm" in out and "Traceback" in out
    assert TOKEN not in out
