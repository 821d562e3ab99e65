"""`kvm-digest check-config`: say what is wrong before the service starts.

Loading the config already refuses broken TOML, unknown settings and bad
values. This goes further, on what only makes sense as a whole: an IMAP host
without a user, addresses that are not addresses, a data directory that
cannot be created, password files that cannot be read (with
`${CREDENTIALS_DIRECTORY}` resolved from `--credentials DIR`, as systemd
would). Every problem is printed, then "valid" only when there is none.

`--connect` also talks to each server as the daemon will: logs in to IMAP
and selects the folder, lists the refs of the followed inbox's first epoch
(`git ls-remote`), says EHLO (and STARTTLS, AUTH) to the relay, and binds
the LMTP port, one line each.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import ssl
from pathlib import Path

from bot import redact
from bot.config import Config
from bot.delivery import address
from bot.errors import DigestError
from bot.store import writable

CREDENTIALS = "CREDENTIALS_DIRECTORY"


def unwritable(config: Config) -> list[str]:
    """The paths the bot writes that this user cannot write (nothing is created).

    The data directory and its index always; the archive when it is ours or a
    followed mirror (fetches write into it), not a mirror someone else fetches.
    Run inside the unit's sandbox (see the README), a path outside its
    writable paths shows up here as a read-only file system.
    """
    found = []
    paths = [("the data directory", config.data_dir), ("the index", config.index_path)]
    if config.archive.follow or not config.is_mirror:
        paths.append(("the archive", config.archive_path))
    failed: list[Path] = []
    for what, path in paths:
        if what == "the index" and not path.exists():
            continue  # created in the data directory, checked above
        if any(path.absolute().is_relative_to(f) for f in failed):
            continue  # the same cause, said once
        why = writable.problem(path)
        if why:
            setting = "[archive] path" if what == "the archive" else "[data] dir"
            found.append(f"{what} {path} cannot be created or written: {why} (or change {setting})")
            failed.append(path.absolute())
    return found


def problems(config: Config) -> list[str]:
    """Every problem found, each one sentence saying what to do."""
    found: list[str] = []
    try:
        config.schedule.check()  # the full cron parse (loading only checks the shape)
    except DigestError as err:
        found.append(str(err))
    imap, commands = config.imap, config.commands
    if imap.host and not imap.user.strip():
        found.append("[imap] user is empty; set it to the mailbox's login name")
    for where, value in (
        ("[list] address", config.list.address),
        ("[commands] address", commands.address),
        ("[commands] owner", commands.owner),
    ):
        if value:
            why = address.problem(value)
            if why:
                found.append(f"{where} = {value!r} is not a mail address ({why}); fix it")
    found += unwritable(config)
    for section in (imap, config.smtp):
        if section is imap and not imap.host:
            continue
        file = section.password_file
        needs_credentials = f"${{{CREDENTIALS}}}" in file or f"${CREDENTIALS}" in file
        if needs_credentials and not os.environ.get(CREDENTIALS):
            found.append(
                f"[{section.name}] password_file {file} needs ${CREDENTIALS}, which "
                "systemd sets only for the service; run check-config --credentials DIR "
                "with the directory holding the credentials"
            )
            continue
        try:
            section.secret()
        except DigestError as err:
            found.append(str(err))
    return found


def run(config: Config, connect: bool, credentials: str | None) -> int:
    """The check-config command: the summary, the problems, the verdict.

    `--credentials DIR` stands in for ${CREDENTIALS_DIRECTORY} for this
    command only: the environment is restored afterwards, so a caller that
    runs us in-process (the tests) is not left with it.
    """
    if not credentials:
        if os.environ.get(CREDENTIALS):
            print(f"${{{CREDENTIALS}}} = {os.environ[CREDENTIALS]} (from the environment)")
        return _run(config, connect)
    before = os.environ.get(CREDENTIALS)
    os.environ[CREDENTIALS] = str(Path(credentials).absolute())
    print(f"${{{CREDENTIALS}}} = {os.environ[CREDENTIALS]} (from --credentials)")
    try:
        return _run(config, connect)
    finally:
        if before is None:
            del os.environ[CREDENTIALS]
        else:
            os.environ[CREDENTIALS] = before


def _run(config: Config, connect: bool) -> int:
    where = config.source or "built-in defaults (no config file found)"
    print(f"configuration: {where}")
    _summary(config)
    found = problems(config)
    for problem in found:
        print(f"problem: {problem}")
    if connect and not found:
        found += asyncio.run(_connect(config))
    if found:
        print(f"configuration from {where} is NOT valid: {len(found)} problem(s)")
        return 1
    print(f"configuration from {where} is valid")
    return 0


def _summary(config: Config) -> None:
    print(f"data directory: {config.data_dir}")
    print(f"archive: {config.archive_path}" + (" (mirror, read-only)" if config.is_mirror else ""))
    imap, smtp, commands = config.imap, config.smtp, config.commands
    if config.archive.follow:
        print(
            f"intake: following {redact.text(config.archive.follow)} by git every "
            f"{config.archive.fetch_interval} s"
        )
    elif config.is_mirror:
        print(
            f"intake: the mirror at {config.archive_path}, re-read every "
            f"{config.archive.fetch_interval} s"
        )
    elif not imap.host:
        print(
            "intake: none; `run` needs [archive] follow (the inbox URL) or [imap] host "
            "(import and digest work without)"
        )
    if imap.host:
        print(
            f"imap: {imap.user}@{imap.host}:{imap.port} ({imap.security}), folder "
            f"{imap.folder}" + ("" if imap.verify else ", certificates NOT checked")
        )
    else:
        print("imap: not configured" + ("" if config.is_mirror else " (no live intake)"))
    if commands.address:
        print(f"commands: {commands.address}, {commands.protocol.upper()} on {commands.listen}")
    else:
        print("commands: not configured (no command mail)")
    if config.web.url:
        print(f"web: {config.web.url} served on {config.web.listen} (one-click unsubscribe, feed)")
    else:
        print("web: not configured (List-Unsubscribe names the mailto address only)")
    print(
        f"smtp relay: {smtp.host}:{smtp.port} ({smtp.security})"
        + ("" if smtp.verify else ", certificates NOT checked")
    )
    from bot.delivery.cron import describe

    schedule = config.schedule
    for name in ("daily", "weekly"):
        expression = getattr(schedule, name)
        try:
            said = describe(expression, schedule.seconds) if expression else "off"
        except ValueError:
            said = f"{expression!r}, which is not valid (see the problem below)"
        print(f"{name} digest: {said}")


# -- --connect -----------------------------------------------------------


async def _connect(config: Config) -> list[str]:
    """Try each server; print one line each; return the failures."""
    failed: list[str] = []
    checks = []
    if config.imap.host:
        checks.append(("imap", _imap(config)))
    if config.archive.follow:
        checks.append(("follow", _follow(config)))
    checks.append(("smtp", _smtp(config)))
    if config.commands.address:
        checks.append((config.commands.protocol, _bind(config.commands.listen)))
    if config.web.url:
        checks.append(("web", _bind(config.web.listen)))
    for name, check in checks:
        try:
            line = await check
        except (DigestError, OSError, ssl.SSLError, TimeoutError) as err:
            line = f"FAILED: {err}"
            failed.append(f"{name}: {err}")
        print(f"{name}: {line}")
    return failed


async def _imap(config: Config) -> str:
    from bot.intake.imap import ImapDown, Session

    s = config.imap
    session = Session(s, s.secret())
    try:
        await session.open()
        await session.ok(session.client.select(s.folder), f"SELECT {s.folder}")  # type: ignore[union-attr]
    except ImapDown as err:
        raise DigestError(str(err)) from None
    finally:
        await session.close()
    how = {"tls": "TLS", "starttls": "STARTTLS", "none": "no TLS"}[s.security]
    return f"logged in to {s.host}:{s.port} ({how}) as {s.user}; folder {s.folder} exists"


async def _follow(config: Config) -> str:
    from bot.intake import follow

    url = config.archive.follow
    found = await asyncio.to_thread(follow.refs, url)
    where = redact.text(follow.epoch_url(url, 0))  # a private mirror's URL holds a token
    if not found:
        raise DigestError(
            f"{where} answers but has no refs; is it a public-inbox "
            "inbox? (e.g. https://lore.kernel.org/kvm)"
        )
    head = found.get("refs/heads/master") or found.get("HEAD") or next(iter(found.values()))
    return f"{where} answers: {len(found)} refs, master at {head[:12]}"


async def _smtp(config: Config) -> str:
    import aiosmtplib

    s = config.smtp
    client = aiosmtplib.SMTP(
        hostname=s.host,
        port=s.port,
        timeout=min(s.timeout, 30),
        use_tls=s.security == "tls",
        start_tls=False,
        validate_certs=s.verify,
        cert_bundle=s.cafile or None,
    )
    done = []
    try:
        await client.connect()
        await client.ehlo()
        done.append("EHLO")
        if s.security == "starttls":
            if not client.supports_extension("starttls"):
                raise DigestError(
                    f"{s.host}:{s.port} does not offer STARTTLS; "
                    'set [smtp] security = "none" for a loopback relay, or "tls"'
                )
            await client.starttls()
            done.append("STARTTLS")
        if s.user:
            await client.login(s.user, s.secret())
            done.append(f"AUTH as {s.user}")
    except aiosmtplib.SMTPException as err:
        raise DigestError(
            f"{s.host}:{s.port} after {', '.join(done) or 'connect'}: {err}"
        ) from None
    finally:
        with contextlib.suppress(aiosmtplib.SMTPException, OSError):
            await client.quit()
    if s.security == "tls":
        done.insert(0, "TLS")
    return f"{s.host}:{s.port}: " + ", ".join(f"{step} ok" for step in done)


async def _bind(listen: str) -> str:
    host, _, port = listen.rpartition(":")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host.strip("[]"), int(port)))
        except OSError as err:
            hint = " (is kvm-digest already running?)" if err.errno == errno.EADDRINUSE else ""
            raise DigestError(f"cannot listen on {listen}: {err.strerror}{hint}") from None
    return f"can listen on {listen}"
