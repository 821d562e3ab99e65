"""check-config: every problem said, "valid" only when valid; --connect against real servers."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from bot.cli import main
from tests.dovecot import PASSWORD, USER, Dovecot, free_port, make_certificates
from tests.smtpsink import Sink, SinkHandler

BOT = "kvm-digest@example.org"


def check(capsys, config: Path, *extra: str) -> tuple[int, str]:
    code = main(["--config", str(config), "check-config", *extra])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def write(tmp_path: Path, text: str) -> Path:
    config = tmp_path / "kvm-digest.toml"
    config.write_text(f'[data]\ndir = "{tmp_path / "var"}"\n' + text)
    config.chmod(0o600)  # it may hold an inline password (refused otherwise)
    return config


def test_every_problem_is_said_and_valid_is_not(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    config = tmp_path / "bad.toml"
    config.write_text(
        f"""
[data]
dir = "{blocker / "var"}"
[list]
address = "kvm at vger.kernel.org"
[imap]
host = "imap.example.org"
user = ""
password = "x"
[commands]
address = "bot@@example.org"
"""
    )
    config.chmod(0o600)
    code, out = check(capsys, config)
    assert code == 1
    problems = [line for line in out.splitlines() if line.startswith("problem: ")]
    assert len(problems) == 4, out
    assert "[imap] user is empty" in out
    assert "[list] address = 'kvm at vger.kernel.org' is not a mail address" in out
    assert "[commands] address = 'bot@@example.org' is not a mail address" in out
    assert f"the data directory {blocker / 'var'} cannot be created" in out
    assert "is not a directory" in out
    assert "is valid" not in out
    assert "is NOT valid: 4 problem(s)" in out
    # Nothing was created while checking.
    assert blocker.is_file()


def test_a_good_config_is_valid_and_says_the_schedule_in_words(tmp_path, capsys):
    config = write(tmp_path, f'[commands]\naddress = "{BOT}"\n')
    code, out = check(capsys, config)
    assert code == 0, out
    assert out.splitlines()[-1].endswith("is valid")
    assert "daily digest: every day at 06:00 UTC" in out
    assert "weekly digest: every Monday at 06:00 UTC" in out
    assert not (tmp_path / "var").exists()


def test_six_field_cron_is_refused_saying_five_fields(tmp_path, capsys):
    config = write(tmp_path, '[schedule]\ndaily = "0 0 6 * * *"\n')
    code, out = check(capsys, config)
    assert code == 1
    assert out.startswith("kvm-digest: error: [schedule] daily = '0 0 6 * * *'")
    assert "it has six fields; cron has five" in out
    assert "write five fields" in out
    assert len(out.splitlines()) == 1
    # Tests and load runs may opt in to a seconds field, explicitly.
    config = write(tmp_path, '[schedule]\ndaily = "*/2 * * * * *"\nseconds = true\n')
    assert check(capsys, config)[0] == 0


def test_credentials_directory_is_resolved_from_the_option(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    creds = tmp_path / "creds"
    creds.mkdir()
    secret = creds / "smtp-password"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    config = write(
        tmp_path,
        '[smtp]\nuser = "bot"\npassword_file = "${CREDENTIALS_DIRECTORY}/smtp-password"\n',
    )
    code, out = check(capsys, config)
    assert code == 1
    assert "needs $CREDENTIALS_DIRECTORY" in out and "--credentials DIR" in out
    code, out = check(capsys, config, "--credentials", str(creds))
    assert code == 0, out
    assert f"${{CREDENTIALS_DIRECTORY}} = {creds} (from --credentials)" in out
    assert "s3cret" not in out
    # A world-readable secret is still refused, through the resolved path.
    secret.chmod(0o644)
    code, out = check(capsys, config, "--credentials", str(creds))
    assert code == 1 and "can be read by other users" in out


class AuthSink(SinkHandler):
    """A relay with STARTTLS and AUTH, as a submission server has."""


def _authenticator(server, session, envelope, mechanism, auth_data):
    ok = auth_data.login == b"bot" and auth_data.password == b"relay-pass"
    return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd says 535


@pytest.fixture
def auth_relay(tmp_path):
    certs = tmp_path / "certs"
    certs.mkdir()
    make_certificates(certs)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs / "server.pem", certs / "server.key")
    port = free_port()
    controller = Controller(
        AuthSink(),
        hostname="127.0.0.1",
        port=port,
        tls_context=context,
        require_starttls=True,
        authenticator=_authenticator,
        auth_require_tls=True,
    )
    controller.start()
    yield port, certs / "ca.pem"
    controller.stop()


def connect_config(tmp_path, dovecot: Dovecot, relay_port: int, cafile: Path, password: str):
    secret = tmp_path / "smtp-password"
    secret.write_text(password)
    secret.chmod(0o600)
    return write(
        tmp_path,
        f"""
[imap]
host = "127.0.0.1"
port = {dovecot.port}
security = "none"
user = "{USER}"
password = "{PASSWORD}"
[commands]
address = "{BOT}"
listen = "127.0.0.1:{free_port()}"
[smtp]
host = "localhost"
port = {relay_port}
security = "starttls"
cafile = "{cafile}"
user = "bot"
password_file = "{secret}"
""",
    )


@pytest.fixture
def dovecot():
    server = Dovecot().start()
    yield server
    server.cleanup()


def test_connect_logs_in_says_ehlo_starttls_auth_and_binds(tmp_path, capsys, dovecot, auth_relay):
    port, cafile = auth_relay
    config = connect_config(tmp_path, dovecot, port, cafile, "relay-pass")
    code, out = check(capsys, config, "--connect")
    assert code == 0, out
    lines = out.splitlines()
    assert (
        f"imap: logged in to 127.0.0.1:{dovecot.port} (no TLS) as {USER}; folder INBOX exists"
        in lines
    )
    assert f"smtp: localhost:{port}: EHLO ok, STARTTLS ok, AUTH as bot ok" in lines
    assert any(line.startswith("lmtp: can listen on 127.0.0.1:") for line in lines)
    assert lines[-1].endswith("is valid")


def test_connect_reports_each_failure_in_one_line(tmp_path, capsys, dovecot, auth_relay):
    port, cafile = auth_relay
    config = connect_config(tmp_path, dovecot, port, cafile, "wrong")
    dovecot.set_password("changed")
    listen = int(config.read_text().split('listen = "127.0.0.1:')[1].split('"')[0])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", listen))
        taken.listen()
        code, out = check(capsys, config, "--connect")
    assert code == 1
    lines = out.splitlines()
    imap = next((line for line in lines if line.startswith("imap: FAILED")), "")
    assert "refused user" in imap and PASSWORD not in imap, out
    smtp = next((line for line in lines if line.startswith("smtp: FAILED")), "")
    assert "after EHLO, STARTTLS" in smtp and "535" in smtp
    assert f"lmtp: FAILED: cannot listen on 127.0.0.1:{listen}: Address already in use" in out
    assert "is NOT valid: 3 problem(s)" in out


def test_connect_to_a_plain_relay_that_offers_no_starttls(tmp_path, capsys):
    sink = Sink().start()
    try:
        config = write(
            tmp_path,
            f'[smtp]\nhost = "127.0.0.1"\nport = {sink.port}\nsecurity = "starttls"\n',
        )
        code, out = check(capsys, config, "--connect")
        assert code == 1
        assert "does not offer STARTTLS" in out and 'security = "none"' in out
        config = write(
            tmp_path, f'[smtp]\nhost = "127.0.0.1"\nport = {sink.port}\nsecurity = "none"\n'
        )
        code, out = check(capsys, config, "--connect")
        assert code == 0, out
        assert f"smtp: 127.0.0.1:{sink.port}: EHLO ok" in out
    finally:
        sink.stop()


def test_subscribers_add_validates_every_address_first(tmp_path, capsys):
    config = write(tmp_path, "")
    code, out = check_cmd(capsys, config, "subscribers", "add", "ok@example.org", "no-at-sign")
    assert code == 1
    assert out.startswith("kvm-digest: error: 'no-at-sign' is not a mail address (")
    assert out.rstrip().endswith("nobody was added") and len(out.splitlines()) == 1
    for bad in ("two@@example.org", "a b@example.org", "x@localhost"):
        assert check_cmd(capsys, config, "subscribers", "add", bad)[0] == 1
    # Nothing was added, not even the good address before the bad one.
    assert check_cmd(capsys, config, "subscribers", "list") == (0, "")
    # Valid addresses, including internationalised ones, need no DNS.
    code, out = check_cmd(
        capsys, config, "subscribers", "add", "Una@Example.ORG", "jörg@bücher.example"
    )
    assert code == 0, out
    assert "added una@example.org (daily)" in out


def check_cmd(capsys, config: Path, *args: str) -> tuple[int, str]:
    code = main(["--config", str(config), *args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_each_setting_is_checked_against_its_annotated_type() -> None:
    """The type a setting must have is read from its annotation alone, as
    typing.get_type_hints reads it, for every setting of every section."""
    import typing

    from bot import config
    from bot.record import fields

    checked = 0
    for _table, (_name, section) in config._SECTIONS.items():
        hints = typing.get_type_hints(section)
        for key in fields(section):
            assert config._hint(section, key) == hints[key], (section.__name__, key)
            checked += 1
    assert checked > 50
