"""Configuration: one TOML file, every setting in one place, checked on load.

Precedence for the data directory: `--data-dir`, then `KVM_DIGEST_DATA`, then
`[data] dir` in the file. Relative paths in the file are relative to the
directory kvm-digest runs in (systemd sets it to the state directory).
"""

from __future__ import annotations

import functools
import os
import types
import typing
from datetime import date
from pathlib import Path
from typing import ClassVar

from bot.errors import ConfigError
from bot.record import Record, default, field, fields, replace

PROOFS = ("envelope", "received", "dkim", "arc")
"""What [imap] require may ask of list mail (bot/intake/provenance.py)."""
STYLES = ("full", "classic", "brief")
"""Digest styles (FORMAT.md, "Three styles"): classic is the documented layout,
full adds links and review facts, brief is full without the commit messages."""
DEFAULT_PATH = Path("config/kvm-digest.toml")
ENV_DATA = "KVM_DIGEST_DATA"
ENV_CONFIG = "KVM_DIGEST_CONFIG"


class ListSection(Record):
    title: str = "KVM"
    """The list's name in digest subjects: "<title> mailing list update"."""
    address: str = "kvm@vger.kernel.org"
    id: str = "kvm.vger.kernel.org"
    """The List-Id of the list's mail, without angle brackets."""
    archive_url: str = "https://lore.kernel.org/kvm"
    """The public archive: full digests link to <url>/<Message-ID>/, and digest mail
    carries it as List-Archive; empty: neither."""

    def __post_init__(self) -> None:
        if self.archive_url and not self.archive_url.startswith(("https://", "http://")):
            raise ConfigError(
                f"[list] archive_url must start with https:// or http://, not "
                f"{self.archive_url!r}; set it to e.g. https://lore.kernel.org/kvm "
                "or leave it empty"
            )


class DataSection(Record):
    dir: str = "var"
    retention_days: int = 30
    """Handled command mail and sent mail are deleted after this many days."""
    failed_retention_days: int = 90
    """Mail that failed (to parse, answer or send) is kept this long for the admin."""


class ArchiveSection(Record):
    path: str = ""
    """A public-inbox epoch or v2 inbox dir to index in place (mirror mode); empty: our own."""
    follow: str = ""
    """A public-inbox inbox URL (e.g. https://lore.kernel.org/kvm) to mirror by git."""
    fetch_interval: int = 300
    """Seconds between fetches of `follow` while `kvm-digest run` runs."""
    max_epochs: int = 64
    """Most epochs of `follow` to mirror: a server offering more is stopped there."""
    max_fetch_bytes: int = 8 * 1024**3
    """Most bytes one fetch may add to the mirror, all epochs together."""
    follow_since: str = ""
    """YYYY-MM-DD: the first fetch brings only mail from that day on (shallow);
    empty: the whole history."""

    def __post_init__(self) -> None:
        if self.max_epochs < 1 or self.max_fetch_bytes < 1:
            raise ConfigError(
                "[archive] max_epochs and max_fetch_bytes must be at least 1 "
                f"(they are {self.max_epochs} and {self.max_fetch_bytes}); the defaults "
                "are 64 and 8589934592 (8 GiB)"
            )
        if self.follow_since:
            parse_day(self.follow_since, "[archive] follow_since")
        public = self.follow.startswith(("http://", "https://", "git://"))
        if (public and self.fetch_interval < 60) or self.fetch_interval < 1:
            raise ConfigError(
                f"[archive] fetch_interval = {self.fetch_interval} is too often; a server "
                "on the network needs at least 60 seconds (e.g. 300), a local inbox 1"
            )

    @property
    def since(self) -> date | None:
        """`follow_since` as a day, or None for the whole history."""
        return parse_day(self.follow_since, "[archive] follow_since") if self.follow_since else None


def parse_day(text: str, where: str) -> date:
    """A YYYY-MM-DD day, or a ConfigError naming the setting."""
    try:
        if len(text) != 10:
            raise ValueError(text)
        return date.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"{where} must be a day written YYYY-MM-DD (e.g. 2026-01-05), not {text!r}"
        ) from None


class DigestSection(Record):
    abbrev: int = 9
    top: int = 15
    templates: str = ""
    max_days: int = 31
    max_messages: int = 5000
    style: str = "full"
    """"full" (links, reviews, versions, applied, earlier series), "classic" or
    "brief" (full without the commit messages)."""
    review_wait_days: int = 7
    """Full digests list a series under "Waiting for review" once it is this many
    days old with no reply from anyone but its submitter; 0: no such section."""
    personal: bool = False
    """Subscribers get "For you" atop their digests unless they say otherwise
    (`personal on|off` by mail)."""

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise ConfigError(
                f"[digest] style must be {', '.join(STYLES[:-1])} or {STYLES[-1]}, "
                f"not {self.style!r}"
            )
        if self.review_wait_days > 365:
            raise ConfigError(
                f"[digest] review_wait_days = {self.review_wait_days} is more than a year;"
                " use a number of days such as 7, or 0 for no waiting section"
            )


MAX_WORKERS = 64


def cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class ImportSection(Record):
    max_message_size: int = 10 * 1024 * 1024
    workers: int = field(default_factory=lambda: min(cores(), MAX_WORKERS))
    """Processes that parse mail ahead of the writer in imports and indexing
    (bot/parse/pool.py); 1 parses in the writer's own process."""

    def __post_init__(self) -> None:
        if not 1 <= self.workers <= MAX_WORKERS:
            raise ConfigError(
                f"[import] workers must be a number of processes from 1 to {MAX_WORKERS} "
                f"(1 parses in the importing process; leave it out for one per core, "
                f"{min(cores(), MAX_WORKERS)} here), not {self.workers}"
            )


class ServerSection(Record):
    """What [imap] and [smtp] share: where the server is and how to log in."""

    name: ClassVar[str] = ""
    host: str = ""
    port: int = 0
    security: str = "tls"
    """"tls" (implicit TLS), "starttls", or "none" (plain; for loopback tests only)."""
    verify: bool = True
    """Check the server's TLS certificate; turning it off is explicit."""
    cafile: str = ""
    """CA certificates to trust instead of the system's (a private CA)."""
    user: str = ""
    password: str = field(default="", repr=False)
    """Better in password_file or password_env; inline, the file must be mode 0600."""
    password_file: str = ""
    password_env: str = ""
    timeout: int = 60

    def __post_init__(self) -> None:
        if self.security not in ("tls", "starttls", "none"):
            raise ConfigError(
                f"[{self.name}] security must be tls, starttls or none, not {self.security!r}"
            )
        if self.security == "none" and self.host and not is_loopback(self.host):
            raise ConfigError(
                f'[{self.name}] security = "none" sends mail and passwords in clear text; '
                f"it is only allowed for a loopback host, not {self.host}; "
                'use "tls" or "starttls"'
            )
        if self.security == "none" and self.user and self.name == "smtp":
            # SMTP AUTH in clear text is refused even on loopback (the relay
            # refuses it too); an IMAP login on loopback stays on the machine.
            raise ConfigError(
                f'[{self.name}] logs in as {self.user} but security is "none"; a password '
                'is never sent without TLS: use "tls" or "starttls"'
            )

    def secret(self) -> str:
        """The password, from the config, its own file or the environment."""
        return read_secret(f"[{self.name}]", self.password, self.password_file, self.password_env)


class ImapSection(ServerSection):
    """The mailbox the bot is subscribed with (see README, "Live intake")."""

    name: ClassVar[str] = "imap"
    port: int = 993
    auth: str = "login"
    """"login" (IMAP LOGIN) or "plain" (AUTHENTICATE PLAIN)."""
    folder: str = "INBOX"
    batch: int = 100
    idle_restart: int = 29 * 60
    poll_interval: int = 60
    mark_seen: bool = False
    move_to: str = ""
    backoff_max: int = 300
    require: list[str] = field(default_factory=lambda: ["envelope", "received"])
    """What list mail from the mailbox must show before it is archived
    (bot/intake/provenance.py): any of envelope, received, dkim, arc; [] trusts all."""
    list_senders: list[str] = field(default_factory=list)
    """Envelope senders of the list's mail (globs, e.g. "kvm+bounces-*@vger.kernel.org");
    empty: the bounce and owner addresses of [list] address and [list] id."""
    list_hosts: list[str] = field(default_factory=list)
    """Domains of the list's mail servers (e.g. "kernel.org"); empty: from [list]."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.auth not in ("login", "plain"):
            raise ConfigError(f"[imap] auth must be login or plain, not {self.auth!r}")
        unknown = [r for r in self.require if r not in PROOFS]
        if unknown:
            raise ConfigError(
                f"[imap] require names {', '.join(map(repr, unknown))}; the checks are "
                + ", ".join(PROOFS)
                + ' (e.g. require = ["envelope", "received"]), or [] to trust the mailbox'
            )


class CommandsSection(Record):
    address: str = ""
    """The bot's own address (e.g. kvm-digest@example.org); empty: no commands."""
    name: str = "KVM digest"
    """The display name on the bot's mail."""
    listen: str = "127.0.0.1:8024"
    """Where the LMTP/SMTP server for command mail listens (host:port)."""
    protocol: str = "lmtp"
    max_size: int = 1024 * 1024
    per_address_per_hour: int = 5
    """Replies to one mailbox (however its address is written) per hour; more
    wait for the next hour (told once a day). Below per_address_per_day, or
    nothing would ever wait: past that daily cap, mail is dropped."""
    per_hour: int = 500
    """Replies in all per hour; mail over a limit waits (deferred), fairly."""
    token_hours: int = 72
    max_connections: int = 100
    """Open LMTP/SMTP sessions at once; more are told 421 and closed."""
    max_connections_per_peer: int = 20
    session_seconds: int = 600
    """A session's absolute deadline: NOOPs do not extend it."""
    max_pending: int = 200
    """Command mails waiting to be handled; past it, new mail gets 452 (retry later)."""
    max_reply_bytes: int = 1024 * 1024
    """The largest reply; a bigger digest is refused with smaller ranges to ask."""
    reply_bytes_per_day: int = 4 * 1024 * 1024
    """Bytes of replies to one mailbox per day; more waits for the next day."""
    max_waiting_per_address: int = 100
    """Unanswered mails from one mailbox kept; more is refused with 451 (the MTA retries)."""
    owner: str = ""
    """A person's address, named in replies and digest footers (e.g.
    kvm-digest-owner@example.org); empty: postmaster@ the bot's domain."""
    per_address_per_day: int = 10
    """Replies to one mailbox in a day (Mailman's max_autoresponses_per_day); more
    mail from it is dropped unanswered, not deferred."""
    per_domain_per_day: int = 20
    """Replies to all the mailboxes of one domain in a day; more are dropped."""
    max_pending_bytes: int = 64 * 1024 * 1024
    """Bytes of command mail waiting to be handled; past it, MAIL gets 452."""
    sender_bytes_per_day: int = 16 * 1024 * 1024
    """Bytes of command mail one envelope sender may send in a day; then 452."""

    def __post_init__(self) -> None:
        if self.owner and not _address_shaped(self.owner):
            raise ConfigError(
                f"[commands] owner must be one address, e.g. kvm-digest-owner@example.org, "
                f"not {self.owner!r}"
            )
        if self.protocol not in ("lmtp", "smtp"):
            raise ConfigError(f"[commands] protocol must be lmtp or smtp, not {self.protocol!r}")
        host, _, port = self.listen.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(
                f"[commands] listen must be host:port, e.g. 127.0.0.1:8024, not {self.listen!r}"
            )


class SmtpSection(ServerSection):
    """The relay the bot sends through; with a user, STARTTLS is required."""

    name: ClassVar[str] = "smtp"
    host: str = "localhost"
    port: int = 25
    security: str = "starttls"
    connections: int = 8
    """Sessions with the relay at once. Through Postfix on loopback, a digest
    to 3,000 readers went at 208-291 mails/s over 4, 341 over 6, 360-362 over
    8, 341 over 12 and 310 over 16; to 10,000, at 636-648 over 4 and 738-785
    over 8 on a faster machine (benchmarks/postfix.py). Also the most mails
    a crash can send twice."""
    backoff_max: int = 3600
    max_attempts: int = 50
    hard_failures: int = 3
    """5xx answers at RCPT (the recipient itself refused) after which a subscriber
    is disabled; no other refusal counts (bot/delivery/sender.py)."""
    poll_interval: int = 2
    """Seconds between looks at the outbox for mail other processes queued
    (`kvm-digest send-now`): the daemon sends it within this time."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.poll_interval < 1:
            raise ConfigError("[smtp] poll_interval must be at least 1 (seconds)")


class ScheduleSection(Record):
    daily: str = "0 6 * * *"
    """Cron expression (UTC) for daily digests; empty: none."""
    weekly: str = "0 6 * * mon"
    send_empty: bool = False
    seconds: bool = False
    """Accept a sixth, leading seconds field (tests and load runs only)."""

    def __post_init__(self) -> None:
        # A cheap shape check at every load; the full check needs APScheduler,
        # which costs more than a digest, so only the commands that use the
        # schedule (check-config, run, send-now) call check().
        for name in ("daily", "weekly"):
            expression = getattr(self, name)
            if expression and not _cron_shaped(expression):
                raise _cron_error(name, expression, "not five fields of * , - / and digits")
            if expression and len(expression.split()) == 6 and not self.seconds:
                raise _cron_error(name, expression, "it has six fields; cron has five")

    def check(self) -> None:
        """Parse each expression fully, as the scheduler will."""
        from bot.delivery.cron import trigger  # APScheduler

        for name in ("daily", "weekly"):
            expression = getattr(self, name)
            if not expression:
                continue
            try:
                trigger(expression, self.seconds)
            except ValueError as err:
                raise _cron_error(name, expression, str(err)) from None


# What cron fields are made of: numbers, names (mon, jan), lists, ranges, steps.
_CRON_CHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ*/,?#-")


def _cron_shaped(expression: str) -> bool:
    """Five fields (or six, seconds first) of cron characters; a set, not a regex:
    compiling a Unicode-aware pattern would cost more than every other check."""
    fields = expression.split()
    return len(fields) in (5, 6) and all(set(f) <= _CRON_CHARS for f in fields)


def _cron_error(name: str, expression: str, why: str) -> ConfigError:
    return ConfigError(
        f"[schedule] {name} = {expression!r} is not a cron expression ({why}); "
        "write five fields (minute hour day-of-month month day-of-week), "
        'e.g. "0 6 * * *" for 06:00 UTC daily'
    )


class WebSection(Record):
    """The HTTP endpoint: one-click unsubscribe (RFC 8058) and the Atom feed."""

    url: str = ""
    """The endpoint's public https address, as the site's TLS proxy serves it
    (e.g. https://digest.example.org); empty: no endpoint, mailto only."""
    listen: str = "127.0.0.1:8026"
    """Where the endpoint listens (host:port), loopback behind the proxy."""

    def __post_init__(self) -> None:
        if self.url and (not self.url.startswith("https://") or len(self.url) <= 8):
            raise ConfigError(
                f"[web] url must be the https:// address your TLS proxy serves, e.g. "
                f"https://digest.example.org, not {self.url!r} (one-click unsubscribe, "
                "RFC 8058, needs https); leave it empty for no web endpoint"
            )
        if self.url and any(c in self.url for c in ' <>"\\?#'):
            raise ConfigError(f"[web] url {self.url!r} must be a plain https:// URL")
        host, _, port = self.listen.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(
                f"[web] listen must be host:port, e.g. 127.0.0.1:8026, not {self.listen!r}"
            )


def _address_shaped(address: str) -> bool:
    """One addr-spec: local@domain, no spaces, brackets or commas."""
    local, at, domain = address.rpartition("@")
    return bool(local and at and domain) and not any(c in address for c in " <>,;()")


class BouncesSection(Record):
    """Bounce handling, as Mailman 3 does it (see README, "Bounces")."""

    threshold: int = 5
    """Days with a bounce after which a subscriber is disabled (and told once)."""
    stale_days: int = 7
    """A bounce this long after the previous one starts the score again."""


class Config(Record):
    """The whole configuration; sections mirror the TOML tables."""

    list: ListSection = field(default_factory=ListSection)
    data: DataSection = field(default_factory=DataSection)
    archive: ArchiveSection = field(default_factory=ArchiveSection)
    digest: DigestSection = field(default_factory=DigestSection)
    import_: ImportSection = field(default_factory=ImportSection)
    imap: ImapSection = field(default_factory=ImapSection)
    commands: CommandsSection = field(default_factory=CommandsSection)
    smtp: SmtpSection = field(default_factory=SmtpSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    bounces: BouncesSection = field(default_factory=BouncesSection)
    web: WebSection = field(default_factory=WebSection)
    source: Path | None = None
    data_dir_override: str | None = None

    @property
    def data_dir(self) -> Path:
        return Path(self.data_dir_override or os.environ.get(ENV_DATA) or self.data.dir)

    def __post_init__(self) -> None:
        if self.archive.follow and self.imap.host:
            raise ConfigError(
                "[archive] follow and [imap] host are both set; choose one intake: "
                "follow the inbox by git, or read list mail from the mailbox"
            )

    @property
    def archive_path(self) -> Path:
        if self.archive.path:
            return Path(self.archive.path)
        if self.archive.follow:
            return self.data_dir / "mirror"
        return self.data_dir / "archive.git"

    @property
    def is_mirror(self) -> bool:
        """True when the archive is someone else's (a mirror), read-only to us."""
        return bool(self.archive.path or self.archive.follow)

    @property
    def index_path(self) -> Path:
        return self.data_dir / "index.sqlite3"


_SECTIONS: dict[str, tuple[str, type]] = {
    name.rstrip("_"): (name, type(default(Config, name)))
    for name in fields(Config)
    if name not in ("source", "data_dir_override")
}
"""Each TOML table's Config field ([import] is import_) and its section's class."""


SECRET_KEYS = frozenset({"password"})
"""Settings whose values are never printed, even in an error."""


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses, where clear text stays on the machine."""
    if host.lower().rstrip(".") in ("localhost", "localhost.localdomain"):
        return True
    import ipaddress  # only for a clear-text server: most commands never ask

    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _check_inline_password(table: dict[str, typing.Any], path: Path) -> None:
    """An inline password is only as secret as the file that holds it."""
    for name in ("imap", "smtp"):
        section = table.get(name)
        if isinstance(section, dict) and section.get("password"):
            mode = path.stat().st_mode
            if mode & 0o077:
                raise ConfigError(
                    f"[{name}] password is written in {path}, which other users can read; "
                    f"run chmod 600 {path}, or use password_file or password_env"
                )


def read_secret(where: str, value: str, file: str, env: str) -> str:
    """A password from the config, a file of its own, or the environment.

    A password file that others can read is refused: it would not be secret.
    """
    if file:
        # `${CREDENTIALS_DIRECTORY}/imap-password` works with systemd's LoadCredential=.
        path = Path(os.path.expandvars(file))
        try:
            mode = path.stat().st_mode
        except OSError as err:
            raise ConfigError(f"{where} password_file {file}: {err.strerror}") from err
        if mode & 0o077:
            raise ConfigError(
                f"{where} password_file {file} can be read by other users; run chmod 600 {file}"
            )
        return path.read_text(encoding="utf-8").strip()
    if env:
        if env not in os.environ:
            raise ConfigError(f"{where} password_env names ${env}, which is not set")
        return os.environ[env]
    return value


def load(
    path: Path | None = None, data_dir: str | None = None, archive: str | None = None
) -> Config:
    """Read and check the config file; a missing default file means defaults."""
    explicit = path or (Path(os.environ[ENV_CONFIG]) if os.environ.get(ENV_CONFIG) else None)
    path = explicit or DEFAULT_PATH
    table: dict[str, typing.Any] = {}
    if path.exists():
        import tomllib  # only with a file to read: a twentieth of a digest's start-up

        try:
            table = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path} is not valid TOML ({err}); fix the file") from err
        except OSError as err:
            raise ConfigError(f"cannot read {path}: {err.strerror}") from err
    elif explicit:
        raise ConfigError(f"config file {path} does not exist; check the path")
    config = from_table(table, str(path))
    if path.exists():
        _check_inline_password(table, path)
    overrides: dict[str, typing.Any] = {
        "source": path if path.exists() else None,
        "data_dir_override": data_dir,
    }
    if archive:
        overrides["archive"] = replace(config.archive, path=archive)
    return replace(config, **overrides)


def from_table(table: dict[str, typing.Any], where: str = "the config") -> Config:
    """Build a Config from parsed TOML, rejecting unknown or mistyped settings."""
    values: dict[str, typing.Any] = {}
    for name, value in table.items():
        if name not in _SECTIONS:
            raise ConfigError(
                f"unknown section [{name}] in {where}; known sections are "
                + ", ".join(f"[{s}]" for s in _SECTIONS)
            )
        if not isinstance(value, dict):
            raise ConfigError(f"[{name}] in {where} must be a table of settings")
        field_name, section = _SECTIONS[name]
        values[field_name] = _section(section, value, name, where)
    return Config(**values)


def _hint(cls: type, key: str) -> typing.Any:
    """The type a setting is annotated with.

    Only the settings a file sets are looked up: typing.get_type_hints would
    evaluate every annotation of every section, a tenth of a one-day
    digest's start-up. The annotations are this module's own source text
    (postponed, PEP 563), evaluated here as get_type_hints evaluates them.
    """
    for klass in cls.__mro__:
        text = klass.__dict__.get("__annotations__", {}).get(key)  # noqa: RUF063
        if text is not None:
            return _evaluated(text) if isinstance(text, str) else text
    raise KeyError(key)


@functools.cache  # a few distinct texts ("int", "str | None"), each evaluated once
def _evaluated(text: str) -> typing.Any:
    return eval(text, globals())  # our own annotations, never input


def _section(cls: type, table: dict[str, typing.Any], name: str, where: str) -> typing.Any:
    known = set(fields(cls))
    for key, value in table.items():
        if key not in known:
            raise ConfigError(
                f"unknown setting {key} in [{name}] of {where}; known settings are "
                + ", ".join(sorted(known))
            )
        expected = _hint(cls, key)
        if not _is_instance(value, expected):
            # A mistyped secret must not end up in a log: name its type only.
            shown = "" if key in SECRET_KEYS else f" {value!r}"
            raise ConfigError(
                f"[{name}] {key} in {where} must be {_describe(expected)}, "
                f"not {type(value).__name__}{shown}"
            )
        if isinstance(value, int) and not isinstance(value, bool) and value < 0:
            raise ConfigError(f"[{name}] {key} in {where} must not be negative")
    return cls(**table)


def _is_instance(value: object, expected: typing.Any) -> bool:
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        return any(_is_instance(value, arg) for arg in typing.get_args(expected))
    if origin is list:
        (item,) = typing.get_args(expected)
        return isinstance(value, list) and all(_is_instance(v, item) for v in value)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, expected)


def _describe(expected: typing.Any) -> str:
    names = {
        str: "a string",
        int: "a whole number",
        bool: "true or false",
        float: "a number",
    }
    if typing.get_origin(expected) is list:
        return "a list"
    return names.get(expected, str(expected))
