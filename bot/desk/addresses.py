"""Canonical addresses: one spelling per mailbox, for lookups and for limits.

An attacker who can write `Victim+1@EXAMPLE.org`, `"victim"@example.org` and
`victim@xn--exmple-cua.org` must not get a fresh rate limit, a fresh pending
confirmation or a second subscription for each spelling. Two forms:

- `normal()`: the address a subscriber is stored and looked up under, and the
  one the bot writes to: local part unquoted and lower-cased (as the
  subscriber table always was), domain lower-cased, IDNA-encoded, no
  trailing dot.
- `limit_key()`: coarser, for counting (Mailman's rules and more): also
  without the `+tag` and without quotes, backslashes and white space, so
  every written form of one mailbox shares one budget. Being coarser than
  the mailbox only ever makes limits stricter, never looser.

`from_header()` finds the real address in a From header. The standard
library's parser reads `victim@example.com <attacker@evil.com>` as the victim
(the display name wins); a mail server delivers replies to the angle address,
so that is the one that counts here.
"""

from __future__ import annotations

import re
from email.errors import HeaderParseError

_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
_COMMENT = re.compile(r"\((?:[^()\\]|\\.)*\)")
_ANGLE = re.compile(r"<([^<>]*@[^<>]*)>")
_TRAILING_DOT = re.compile(r"\.+(\s*>|\s*$)")
_NOISE = re.compile(r'[\s"\\\x00-\x1f\x7f]+')
MAX_ADDRESS = 254
"""RFC 5321's limit on a forward path; longer is not an address."""


def domain_ascii(domain: str) -> str | None:
    """The domain lower-cased and IDNA-encoded (`bücher.de` -> `xn--bcher-kva.de`).

    None when it is not a valid domain name.
    """
    domain = domain.strip().rstrip(".").lower()
    if not domain or any(c.isspace() for c in domain):
        return None
    if domain.startswith("[") and domain.endswith("]"):
        return domain  # an address literal: nothing to encode
    if domain.isascii():
        # The codec's own rule for an ASCII name, without importing it:
        # encodings.idna brings stringprep and unicodedata, which an ASCII
        # domain never needs (a one-shot digest no longer imports them).
        labels = domain.split(".")
        return domain if all(0 < len(label) < 64 for label in labels) else None
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return None


def normal(address: str) -> str | None:
    """The stored, looked-up and written form of `address`, or None if it is none."""
    local, at, domain = address.strip().strip("<>").rpartition("@")
    if not at or not local:
        return None
    if len(local) >= 2 and local.startswith('"') and local.endswith('"'):
        local = re.sub(r"\\(.)", r"\1", local[1:-1])
    if _NOISE.sub("", local) != local:
        return None  # white space or quotes inside: not something we reply to
    ascii_domain = domain_ascii(domain)
    if ascii_domain is None or "." not in ascii_domain.strip("[]"):
        return None
    result = f"{local.lower()}@{ascii_domain}"
    return result if len(result) <= MAX_ADDRESS else None


def limit_key(address: str) -> str:
    """The key every limit is counted under: one per mailbox, however written."""
    local, _, domain = address.strip().strip("<>").rpartition("@")
    local = _NOISE.sub("", local).lower().split("+", 1)[0]
    return f"{local}@{domain_ascii(domain) or domain.lower()}"


def from_header(value: str) -> str | None:
    """The one real address of a From header, normalised; None if there is not one.

    A header naming several mailboxes, or none, has no single asker, so
    nobody is answered.
    """
    if not value or len(value) > 2000:
        return None
    # Angle addresses outside quoted display names and comments are what
    # a relay delivers to; if there are any, they decide.
    bare = _COMMENT.sub(" ", _QUOTED.sub('""', value))
    angles = {a.strip() for a in _ANGLE.findall(bare)}
    if len(angles) > 1:
        return None
    if len(angles) == 1:
        (spec,) = angles
        # Re-read the angle address inside the original (quotes and all).
        return _parse_one(f"<{spec}>") if '"' not in spec else _from_original(value)
    return _parse_one(value)


def _from_original(value: str) -> str | None:
    """An angle address with a quoted local part: let the real parser read it."""
    match = re.search(r'<((?:"(?:[^"\\]|\\.)*"|[^<>"])*@[^<>"]*)>\s*$', value)
    return _parse_one(f"<{match.group(1)}>") if match else None


def _parse_one(value: str) -> str | None:
    # A fully qualified `example.com.` is the same domain; the parser rejects the dot.
    # Imported here: limit_key() is on every digest's path (the index and
    # "For you" canonicalise with it), and email.policy costs 10 ms to load.
    from email.policy import default

    value = _TRAILING_DOT.sub(r"\1", value)
    try:
        header = default.header_factory("from", value)
        addresses = header.addresses  # type: ignore[attr-defined]
    except (HeaderParseError, IndexError, ValueError):
        return None
    if len(addresses) != 1 or not addresses[0].username or not addresses[0].domain:
        return None
    found = addresses[0]
    if "@" in found.username:
        return None
    return normal(f"{found.username}@{found.domain}")
