"""Composing the bot's own mail: plain text, correct headers.

The standard library's EmailMessage does the encoding (RFC 2047 for headers,
quoted-printable when a line is too long for SMTP, CRLF line ends); this
module decides which headers a digest or a reply carries: RFC 5322 basics,
RFC 2369 list headers and RFC 3834's Auto-Submitted, so other robots do not
answer us.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP, SMTPUTF8
from email.utils import formataddr, formatdate, make_msgid

from bot.errors import MailError
from bot.version import mailer

_UNSAFE = re.compile(r"[\x00-\x1f\x7f]+")
# Characters that never appear in an unquoted addr-spec we would send to.
_NOT_IN_ADDRESS = re.compile(r"[\s<>()\[\],;:\\\"\x00-\x1f\x7f]")
MAX_ADDRESS = 254
"""RFC 5321's limit on a forward path, in octets."""
MAX_LINE = 998
"""RFC 5322's limit on a line, in bytes, without the CRLF."""


def wire_address(address: str) -> tuple[str, bool]:
    """The address as it goes on the wire, and whether it needs SMTPUTF8.

    A non-ASCII domain is IDNA-encoded (`bücher.example` becomes
    `xn--bcher-kva.example`), which every relay accepts; only a non-ASCII
    local part needs the relay's SMTPUTF8 (RFC 6531). Anything that is not
    a plain addr-spec raises MailError: we never guess where mail should go.
    """
    local, at, domain = address.strip().rpartition("@")
    if (
        not at
        or not local
        or not domain
        or len(address) > MAX_ADDRESS
        or _NOT_IN_ADDRESS.search(local + domain)
        or "@" in local
        or local.startswith(".")
        or local.endswith(".")
        or ".." in local
    ):
        raise MailError(f"{address!r} is not an address mail can be sent to")
    try:
        ascii_domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        raise MailError(f"the domain of {address!r} is not a valid domain name") from None
    return f"{local}@{ascii_domain.lower()}", not local.isascii()


def header_safe(text: str) -> str:
    """User text made safe for a header: no CR, LF or other controls."""
    return " ".join(_UNSAFE.sub(" ", text).split())


@dataclass(frozen=True)
class Identity:
    """Who the bot is on the wire."""

    address: str
    name: str = "KVM digest"
    list_title: str = "KVM"
    archive_url: str = ""
    """The list's public archive, for List-Archive (RFC 2369); empty: no header."""

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2] or "localhost"

    def plus(self, tag: str) -> str:
        """`bot@example.org` -> `bot+tag@example.org`."""
        local, _, domain = self.address.partition("@")
        return f"{local}+{tag}@{domain}"

    @property
    def list_id(self) -> str:
        """RFC 2919: a label and a dotted id derived from the bot's address."""
        local, _, domain = self.address.partition("@")
        return f"{self.list_title} digest <{local}.{domain}>"

    def new_message_id(self) -> str:
        return make_msgid(domain=self.domain)


def compose(
    me: Identity,
    to: str,
    subject: str,
    body: str,
    message_id: str,
    *,
    in_reply_to: str | None = None,
    references: str | None = None,
) -> bytes:
    """One plain-text reply or notice, ready for SMTP; MailError for a bad `to`.

    It is threaded under the mail it answers and says `auto-replied`, so
    other robots do not answer it. Digests are built by prepare_digest()
    and address() instead: encoded once, addressed per reader.
    """
    to, utf8 = wire_address(to)
    msg = EmailMessage(policy=SMTPUTF8 if utf8 else SMTP)
    msg["From"] = formataddr((me.name, me.address))
    msg["To"] = to
    msg["Subject"] = header_safe(subject)
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = message_id
    if in_reply_to:
        msg["In-Reply-To"] = header_safe(in_reply_to)
        msg["References"] = header_safe(references or in_reply_to)
    msg["Auto-Submitted"] = "auto-replied"
    msg["X-Mailer"] = mailer()  # which version sent it, for whoever debugs a reply
    _set_body(msg, body)
    return msg.as_bytes()


@dataclass(frozen=True)
class Prepared:
    """A digest encoded once for all its readers: what every copy shares.

    Encoding a 20 KB body is most of the cost of a mail; a digest goes to
    thousands of readers, so each copy only adds its own few headers (To,
    Message-ID, Date, List-Unsubscribe), encoded by the same stdlib policy.
    """

    head: bytes
    """The shared header lines, each ending in CRLF."""
    body: bytes
    """The blank line and the encoded body."""


def prepare_digest(me: Identity, subject: str, body: str) -> Prepared:
    """The parts of a digest mail that are the same for every reader."""
    msg = EmailMessage(policy=SMTP)
    msg["From"] = formataddr((me.name, me.address))
    msg["Subject"] = header_safe(subject)
    msg["List-Id"] = me.list_id
    msg["List-Help"] = f"<mailto:{me.plus('help')}?subject=help>"
    msg["List-Subscribe"] = f"<mailto:{me.plus('subscribe')}?subject=subscribe>"
    if me.archive_url:
        msg["List-Archive"] = f"<{header_safe(me.archive_url)}>"
    # RFC 2369: NO says the digest is not a list anyone can post to.
    msg["List-Post"] = "NO"
    msg["Auto-Submitted"] = "auto-generated"
    msg["Precedence"] = "bulk"
    msg["X-Mailer"] = mailer()
    _set_body(msg, body)
    data = msg.as_bytes()
    end = data.index(b"\r\n\r\n") + 2
    return Prepared(head=data[:end], body=data[end:])


def address(
    prepared: Prepared,
    me: Identity,
    to: str,
    message_id: str,
    unsubscribe: str | None = None,
) -> bytes:
    """One reader's copy of a prepared digest; MailError for a bad `to`.

    Digests carry the list headers (List-Id, List-Unsubscribe...),
    `Auto-Submitted: auto-generated` and `Precedence: bulk`. `unsubscribe`
    is the reader's own secret unsubscribe address; without one,
    List-Unsubscribe names the shortcut, which asks for confirmation.
    """
    to, utf8 = wire_address(to)
    own = EmailMessage(policy=SMTPUTF8 if utf8 else SMTP)
    own["To"] = to
    own["Date"] = formatdate(usegmt=True)
    own["Message-ID"] = message_id
    where = unsubscribe or me.plus("unsubscribe")
    own["List-Unsubscribe"] = f"<mailto:{where}?subject=unsubscribe>"
    headers = own.as_bytes()
    return headers[: headers.index(b"\r\n\r\n") + 2] + prepared.head + prepared.body


def _set_body(msg: EmailMessage, body: str) -> None:
    """UTF-8 text, 8bit, or quoted-printable when a line is too long for SMTP."""
    too_long = any(len(line.encode()) > MAX_LINE for line in body.splitlines())
    msg.set_content(body, charset="utf-8", cte="quoted-printable" if too_long else "8bit")
