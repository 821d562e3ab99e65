"""List mail from a mailbox must prove it came through the list.

Anyone can mail the bot's mailbox a message that says `List-Id:
<kvm.vger.kernel.org>`; archived, its "cover letter" would go out in every
digest. So before the IMAP door archives list mail, it checks what only the
list's own servers leave on it (`[imap] require`, README "Live intake"):

- `envelope`: the envelope sender, which the mailbox's own server writes
  into the topmost `Return-Path` (or, without one, the `Sender` header), is
  one of the list's bounce addresses: `kvm+bounces-...@vger.kernel.org`
  (vger today), `kvm-owner@vger.kernel.org` (vger before 2021),
  `kvmarm-bounces@lists.cs.columbia.edu` (Mailman), or `[imap]
  list_senders`.
- `received`: the `Received:` trace says the mail reached our side from one
  of the list's hosts. Headers are read top down, as the servers wrote
  them: hops inside our side (no `from`, a loopback or private address, a
  host of a domain our servers named in `by`) are skipped; the first hop
  from outside must be a list host, named as the receiving server verified
  it (the reverse-DNS name in parentheses, not the sender's own HELO).
  Whatever a forger writes below that line is never read. When the
  receiving server could not look the name up (`unknown [ip]`), the HELO
  counts only from an address a verified hop from a list host came from
  before (one of 15,000 kvmarm messages reached lfdr.de that way).
- `dkim`, `arc` (off by default; dkimpy): a valid DKIM signature, or a
  valid ARC chain sealed, by one of the list's domains.

The list's addresses and hosts come from `[list] address` and `[list] id`
(a List-Id `kvm.vger.kernel.org` is the address `kvm@vger.kernel.org`)
unless configured. Mail that fails is kept in `failures` with the reason.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from bot.config import ImapSection, ListSection
from bot.parse import mime

DnsFunc = Callable[..., bytes | str | None]
"""dkimpy's TXT lookup: (name: bytes, timeout=5) -> the record."""

MAX_HOPS = 30
"""Received headers read at most: a real trace is a dozen."""
_ANGLE = re.compile(r"<([^<>]*)>")
_FROM = re.compile(r"^\s*from\s+(\S+)(?:\s+\(([^()]*)\))?", re.IGNORECASE)
_BY = re.compile(r"\bby\s+([^\s;()]+)", re.IGNORECASE)
_IP = re.compile(r"\[(?:ipv6:)?([0-9a-f:.]+)\]", re.IGNORECASE)
_HOST = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)+\.?$")
_INTERNAL = tuple(
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
    )
)
"""Addresses only a site's own hosts have (RFC 1918, loopback, link-local, ULA)."""
_SECOND_LEVEL = frozenset({"ac", "co", "com", "edu", "gov", "ltd", "ne", "net", "or", "org"})
"""Second-level labels under a country code that are not a site of their own
(`example.co.uk`): enough of the public suffix list for choosing a default."""


def site(host: str) -> str:
    """The registered domain a host belongs to: `mm01.cs.columbia.edu` -> `columbia.edu`."""
    labels = host.lower().rstrip(".").split(".")
    n = 3 if len(labels) >= 3 and labels[-2] in _SECOND_LEVEL and len(labels[-1]) == 2 else 2
    return ".".join(labels[-n:])


def within(host: str, domains: tuple[str, ...]) -> bool:
    """True when `host` is one of `domains` or a host under one."""
    host = host.lower().rstrip(".")
    return any(host == d or host.endswith("." + d) for d in domains)


def list_addresses(section: ListSection) -> list[str]:
    """The list's posting addresses: [list] address, and the one its List-Id names."""
    found = [section.address.lower()] if "@" in section.address else []
    local, dot, domain = section.id.lower().partition(".")
    if dot and "." in domain:
        found.append(f"{local}@{domain}")
    return list(dict.fromkeys(found))


def default_senders(lists: list[str]) -> tuple[str, ...]:
    """The envelope senders list servers use, for each list address."""
    out = []
    for address in lists:
        local, _, domain = address.partition("@")
        out += [
            f"{local}-bounces@{domain}",  # Mailman 2 and 3
            f"{local}-bounces+*@{domain}",  # Mailman with VERP
            f"{local}+bounces*@{domain}",  # vger (subspace.kernel.org), mlmmj-like
            f"{local}-owner@{domain}",  # majordomo: vger before 2021, sympa
            f"{local}-owner+*@{domain}",
            f"owner-{local}@{domain}",
            f"{local}+bnc*@{domain}",  # Google Groups
        ]
    return tuple(out)


def default_hosts(lists: list[str]) -> tuple[str, ...]:
    """The list's servers' domains: the list domain's parent (`vger.kernel.org` ->
    `kernel.org`, whose hosts `smtp.subspace.kernel.org` and the mirrors relay it)."""
    out = []
    for address in lists:
        domain = address.partition("@")[2]
        labels = domain.split(".")
        out.append(".".join(labels[1:]) if len(labels) > len(site(domain).split(".")) else domain)
    return tuple(dict.fromkeys(out))


def _address(value: str) -> str:
    match = _ANGLE.search(value)
    return (match.group(1) if match else value).strip().lower()


@dataclass(frozen=True)
class Hop:
    """One Received header, as the receiving server wrote it."""

    host: str | None
    """Where it came from, as verified (reverse DNS), else as named; None if unknown."""
    ip: str | None
    by: str | None
    has_from: bool
    helo: str | None = None
    """The name the sender gave itself, unchecked."""


def hop(value: str) -> Hop:
    """Read `from HELO (rdns [ip]) by host ...` (Postfix, Sendmail, Exim, Gmail...)."""
    found = _FROM.match(value)
    by = _BY.search(value)
    if found is None:
        return Hop(None, None, by.group(1).lower() if by else None, False)
    named, inside = found.group(1).lower(), (found.group(2) or "").lower()
    ip = _IP.search(inside) or _IP.search(named)
    words = inside.replace("[", " [").split()
    verified = words[0].rstrip(".") if words and _HOST.match(words[0]) else None
    helo = named.rstrip(".") if _HOST.match(named) else None
    if words and words[0] == "unknown":
        host = None  # the server found no name for the address: only the HELO, unchecked
    elif verified:
        host = verified
    else:
        host = helo
    return Hop(host, ip.group(1) if ip else None, by.group(1).lower() if by else None, True, helo)


def _internal(h: Hop) -> bool:
    """A hop inside a site: no `from`, a loopback or private address, localhost."""
    if not h.has_from or h.host in ("localhost", "localhost.localdomain"):
        return True
    if h.ip:
        try:
            address = ipaddress.ip_address(h.ip)
        except ValueError:
            return False
        return any(
            address in network for network in _INTERNAL if network.version == address.version
        )
    return False


@dataclass(frozen=True)
class Proof:
    """The checks list mail from the mailbox must pass, and what they compare with."""

    require: tuple[str, ...]
    senders: tuple[str, ...]
    hosts: tuple[str, ...]
    dnsfunc: DnsFunc | None = None
    """DNS for dkim/arc; None: dkimpy's own (dnspython). Tests serve keys here."""
    known: set[str] = field(default_factory=set, compare=False)
    """Addresses verified hops from list hosts came from (learned as mail arrives)."""

    @classmethod
    def of(cls, imap: ImapSection, lst: ListSection, dnsfunc: DnsFunc | None = None) -> Proof:
        lists = list_addresses(lst)
        senders = tuple(s.lower() for s in imap.list_senders) or default_senders(lists)
        hosts = tuple(h.lower().strip(".") for h in imap.list_hosts) or default_hosts(lists)
        return cls(tuple(imap.require), senders, hosts, dnsfunc)

    @property
    def slow(self) -> bool:
        """True when a check looks keys up in DNS (run it off the event loop)."""
        return "dkim" in self.require or "arc" in self.require

    def failure(self, raw: bytes) -> str | None:
        """Why this mail does not prove it came through the list, or None."""
        if not self.require:
            return None
        headers, _ = mime.split_message(raw)
        for check in self.require:
            try:
                why = getattr(self, check)(headers, raw)
            except Exception as err:  # dkimpy on hostile mail: the mail is kept, not lost
                why = f"its {check} could not be checked ({type(err).__name__}: {err})"
            if why:
                return shown(why) if len(why) > 300 else why
        return None

    def envelope(self, headers: mime.Headers, raw: bytes) -> str | None:
        path = mime.first(headers, "return-path")
        if path is not None:
            sender = _address(path)
            if self._list_sender(sender):
                return None
            return f"its envelope sender (Return-Path) {shown(sender)!r} is not the list's"
        sender = _address(mime.first(headers, "sender") or "")
        if sender and self._list_sender(sender):
            return None
        return "it has no Return-Path, and no Sender header of the list's"

    def _list_sender(self, address: str) -> bool:
        return any(fnmatch.fnmatchcase(address, pattern) for pattern in self.senders)

    def received(self, headers: mime.Headers, raw: bytes) -> str | None:
        ours: set[str] = set()
        for value in headers.get("received", [])[:MAX_HOPS]:
            h = hop(value)
            if h.by and _HOST.match(h.by):
                ours.add(site(h.by))
            if h.host and within(h.host, self.hosts):
                if h.ip:
                    self.known.add(h.ip)
                return None
            if h.host is None and h.helo and within(h.helo, self.hosts) and h.ip in self.known:
                return None  # a list host whose name was not looked up, at its known address
            if _internal(h) or (h.host and site(h.host) in ours):
                continue  # a hop inside our side, or inside one server
            return (
                f"it reached us from {shown(h.host or h.ip or 'an unknown host')!r}, "
                f"not from the list's servers ({', '.join(self.hosts)})"
            )
        return "no Received header shows it came from the list's servers"

    def dkim(self, headers: mime.Headers, raw: bytes) -> str | None:
        import dkim  # dkimpy: only when [imap] require asks for it

        kwargs = {"dnsfunc": self.dnsfunc} if self.dnsfunc else {}
        for idx in range(len(headers.get("dkim-signature", []))):
            signer = dkim.DKIM(raw)
            try:
                valid = signer.verify(idx=idx, **kwargs)
            except dkim.DKIMException:
                continue
            domain = (signer.domain or b"").decode("ascii", "replace")
            if valid and within(domain, self.hosts):
                return None
        return f"it has no valid DKIM signature of the list's domains ({', '.join(self.hosts)})"

    def arc(self, headers: mime.Headers, raw: bytes) -> str | None:
        import dkim

        kwargs = {"dnsfunc": self.dnsfunc} if self.dnsfunc else {}
        cv, results, _reason = dkim.arc_verify(raw, **kwargs)
        sealers = [r.get("as-domain", b"").decode("ascii", "replace") for r in results]
        if cv == dkim.CV_Pass and any(within(d, self.hosts) for d in sealers):
            return None
        return f"it has no valid ARC chain sealed by the list's domains ({', '.join(self.hosts)})"


def shown(text: str) -> str:
    """A forger's text as it may appear in a log line or a failure reason."""
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= 80 else text[:77] + "..."
