"""Composing the bot's own mail: plain text, correct headers.

The standard library's EmailMessage encodes the body (quoted-printable when
a line is too long for SMTP, CRLF line ends) and the short address and date
fields. The fields whose shape clients depend on are written here, as RFC
5322 and RFC 2369 write them: `List-*` values are `<URL>` lists in plain
ASCII folded only between URLs, `References` folds only between ids, and
`Subject:` folds only at spaces inside its text, never right after the
colon (the stdlib encodes a long URL as RFC 2047 words, which no client can
click, and may fold a subject before its first word). This module also
decides which headers a digest or a reply carries: RFC 2369 and RFC 8058
list headers and RFC 3834's Auto-Submitted, so other robots do not answer us.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, replace
from email.header import Header
from email.message import EmailMessage
from email.policy import SMTP, SMTPUTF8
from email.utils import formataddr, formatdate, make_msgid

from bot.config import Config
from bot.errors import MailError
from bot.version import mailer

_SPECIALS = re.compile(r'[()<>\[\]:;@\\,."]')
"""RFC 5322 specials: a phrase holding one is written as a quoted string."""
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]+")
# Characters that never appear in an unquoted addr-spec we would send to.
_NOT_IN_ADDRESS = re.compile(r"[\s<>()\[\],;:\\\"\x00-\x1f\x7f]")
MAX_ADDRESS = 254
"""RFC 5321's limit on a forward path, in octets."""
MAX_LINE = 998
"""RFC 5322's limit on a line, in bytes, without the CRLF."""
FOLD = 78
"""RFC 5322's recommended line length: header fields fold before passing it."""
ONE_CLICK = "List-Unsubscribe=One-Click"
"""RFC 8058: the List-Unsubscribe-Post value, and the body a client POSTs."""


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
    list_address: str = ""
    """The list itself, where discussion belongs (digest footers, replies)."""
    owner: str = ""
    """A person's address for questions; empty: postmaster@ the bot's domain."""
    web_url: str = ""
    """The web endpoint's public https address ([web] url); empty: none."""

    @classmethod
    def from_config(cls, config: Config, fallback: str = "") -> Identity:
        """The bot as the config describes it; `fallback` when it has no address."""
        return cls(
            config.commands.address or fallback,
            config.commands.name,
            config.list.title,
            config.list.archive_url,
            config.list.address,
            config.commands.owner,
            config.web.url.rstrip("/"),
        )

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2] or "localhost"

    @property
    def contact(self) -> str:
        """Where a person answers: the owner, else postmaster (RFC 5321 4.5.1)."""
        return self.owner or f"postmaster@{self.domain}"

    def unsubscribe_address(self, secret: str | None) -> str:
        """The reader's own unsubscribe address, or the shortcut (which confirms)."""
        return self.plus(f"unsubscribe-{secret}" if secret else "unsubscribe")

    def unsubscribe_url(self, secret: str | None) -> str:
        """The reader's one-click page (RFC 8058), or "" without a web endpoint."""
        return f"{self.web_url}/u/{secret}" if secret and self.web_url else ""

    def plus(self, tag: str) -> str:
        """`bot@example.org` -> `bot+tag@example.org`."""
        local, _, domain = self.address.partition("@")
        return f"{local}+{tag}@{domain}"

    @property
    def list_id(self) -> str:
        """RFC 2919: a label and a dotted id derived from the bot's address."""
        return f"{self.list_title} digest <{self.list_id_value}>"

    @property
    def list_id_value(self) -> str:
        local, _, domain = self.address.partition("@")
        return f"{local}.{domain}"

    def new_message_id(self) -> str:
        return make_msgid(domain=self.domain)


def folded(name: str, parts: list[str]) -> bytes:
    """`Name: part part ...` with CRLF, each part kept whole on its line.

    A fold (CRLF and a space) goes only before a part that would pass 78
    columns, never before the first one: the value starts on the field's
    own line, so `^Subject: KVM` filters and raw views read it.
    """
    lines = [f"{name}: {parts[0]}"]
    for part in parts[1:]:
        if len(lines[-1]) + 1 + len(part) > FOLD:
            lines.append(" " + part)
        else:
            lines[-1] += " " + part
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def text_field(name: str, value: str) -> bytes:
    """An unstructured field (Subject), folded only at spaces inside its text.

    ASCII text is written as it is; anything else as RFC 2047 encoded words,
    the first on the field's own line.
    """
    value = header_safe(value) or "(none)"
    if value.isascii():
        return folded(name, value.split(" "))
    encoded = Header(value, "utf-8", header_name=name).encode(linesep="\r\n")
    return f"{name}: {encoded}\r\n".encode("ascii")


def list_id_field(me: Identity) -> bytes:
    """RFC 2919's `List-Id: label <id>`, in plain ASCII like every List-* field.

    A title that is not ASCII loses its accents in the label (`Ünïcode` reads
    `Unicode`): list headers are never RFC 2047-encoded.
    """
    label = header_safe(f"{me.list_title} digest")
    if not label.isascii():
        folded_label = unicodedata.normalize("NFKD", label).encode("ascii", "ignore").decode()
        label = " ".join(folded_label.split()) or "digest"
    if _SPECIALS.search(label):
        label = '"' + label.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return folded("List-Id", [*label.split(" "), f"<{header_safe(me.list_id_value)}>"])


def url_field(name: str, urls: list[str]) -> bytes:
    """An RFC 2369 field: `<URL>, <URL>` in plain ASCII, folded only between URLs."""
    return folded(
        name, [f"<{header_safe(u)}>," for u in urls[:-1]] + [f"<{header_safe(urls[-1])}>"]
    )


def id_field(name: str, ids: str) -> bytes:
    """References or In-Reply-To: `<id> <id>`, folded only between ids."""
    return folded(name, header_safe(ids).split(" "))


def _joined(msg: EmailMessage, own: list[bytes]) -> bytes:
    """The stdlib's encoding of `msg`, with our own field lines after its others."""
    data = msg.as_bytes()
    end = data.index(b"\r\n\r\n") + 2
    return data[:end] + b"".join(own) + data[end:]


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
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = message_id
    msg["Auto-Submitted"] = "auto-replied"
    msg["X-Mailer"] = mailer()  # which version sent it, for whoever debugs a reply
    _set_body(msg, body)
    own = [text_field("Subject", subject)]
    if in_reply_to:
        own.append(id_field("In-Reply-To", in_reply_to))
        own.append(id_field("References", references or in_reply_to))
    return _joined(msg, own)


@dataclass(frozen=True)
class Prepared:
    """A digest encoded once for all its readers: what every copy shares.

    Encoding a 20 KB body is most of the cost of a mail; a digest goes to
    thousands of readers, so each copy only adds its own few headers (To,
    Message-ID, Date, List-Unsubscribe) and its footer.
    """

    head: bytes
    """The shared header lines, each ending in CRLF."""
    body: bytes
    """The blank line and the encoded body."""
    cte: str = "8bit"
    """The body's transfer encoding: quoted-printable when a line is too long
    for SMTP, and so is whatever is added to it (a section, a footer)."""
    blank_end: bool = True
    """The body ends with a blank line, as a footer needs before its `-- `."""
    top: int | None = None
    """Where in `body` a reader's own section may go (see with_section), if anywhere."""


def prepare_digest(me: Identity, subject: str, body: str, split: int | None = None) -> Prepared:
    """The parts of a digest mail that are the same for every reader.

    `split` is a position in `body` (at a line start) where a reader's own
    section may later be inserted, already encoded (with_section).
    """
    msg = EmailMessage(policy=SMTP)
    msg["From"] = formataddr((me.name, me.address))
    msg["Auto-Submitted"] = "auto-generated"
    msg["Precedence"] = "bulk"
    cte = _set_body(msg, body)
    msg["X-Mailer"] = mailer()
    own = [
        text_field("Subject", subject),
        list_id_field(me),
        url_field("List-Help", [f"mailto:{me.plus('help')}?subject=help"]),
        url_field("List-Subscribe", [f"mailto:{me.plus('subscribe')}?subject=subscribe"]),
    ]
    if me.archive_url:
        own.append(url_field("List-Archive", [me.archive_url]))
    # RFC 2369: NO says the digest is not a list anyone can post to.
    own.append(b"List-Post: NO\r\n")
    data = _joined(msg, own)
    end = data.index(b"\r\n\r\n") + 2
    encoded = data[end:]
    return Prepared(
        head=data[:end],
        body=encoded,
        cte=cte,
        blank_end=body.endswith("\n\n"),
        top=_top(encoded, body, split, cte),
    )


# -- a reader's own section inside a shared digest ("For you") ---------------


def _top(encoded: bytes, body: str, split: int | None, cte: str) -> int | None:
    """Where the encoded text of `body[:split]` ends in `encoded` (the blank
    line and the body). Both encodings work line by line, so whole lines
    encode alike alone and in the body; the check makes sure of it."""
    if split is None or not 0 < split <= len(body) or body[split - 1] != "\n":
        return None
    head = b"\r\n" + _encoded(body[:split], cte)
    return len(head) if encoded.startswith(head) else None


def with_section(prepared: Prepared, section: str) -> Prepared | None:
    """The prepared digest with one reader's section at its `top`, encoded
    like the rest: a few hundred bytes encoded per reader, not the digest.

    None when it cannot be done so (no place for it, or a line too long for
    an 8bit body): the caller prepares that reader's copy whole.
    """
    if prepared.top is None or not section.endswith("\n"):
        return None
    if prepared.cte == "8bit" and any(
        len(line) > MAX_LINE for line in section.encode("utf-8", "surrogateescape").splitlines()
    ):
        return None
    at = prepared.top
    body = prepared.body[:at] + _encoded(section, prepared.cte) + prepared.body[at:]
    return replace(prepared, body=body, top=None)


def address(
    prepared: Prepared,
    me: Identity,
    to: str,
    message_id: str,
    secret: str | None = None,
    footer: str = "",
) -> bytes:
    """One reader's copy of a prepared digest; MailError for a bad `to`.

    Digests carry the list headers (List-Id, List-Unsubscribe...),
    `Auto-Submitted: auto-generated` and `Precedence: bulk`. `secret` is
    the reader's own unsubscribe secret: List-Unsubscribe names its one-click
    page (RFC 8058, with a web endpoint) and its secret address, which works
    at once; without one, the shortcut, which asks for confirmation.
    `footer` is appended to the body after a blank line, encoded as the
    body is.
    """
    to, utf8 = wire_address(to)
    headers = reader_fields(to, utf8, formatdate(usegmt=True), message_id)
    headers += unsubscribe_fields(me, secret)
    if footer and not prepared.blank_end:
        footer = "\n" + footer
    return headers + prepared.head + prepared.body + _encoded(footer, prepared.cte)


_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+")
_MESSAGE_ID = re.compile(r"<[!-;=?-~]+>")


def reader_fields(to: str, utf8: bool, date: str, message_id: str) -> bytes:
    """To, Date and Message-ID of one reader's copy, as the stdlib writes them.

    Once per mail of a fan-out: a plain ASCII address and id on lines
    that need no folding (every real one) are written directly, byte for
    byte what the email package makes of them, at a tenth of its cost;
    anything else goes through the email package.
    """
    # The email package writes a GMT date as the offset +0000.
    stamp = date[:-4] + " +0000" if date.endswith(" GMT") else date
    fields = f"To: {to}\r\nDate: {stamp}\r\nMessage-ID: {message_id}\r\n"
    if (
        date.endswith(" GMT")
        and not utf8
        and _DOT_ATOM.fullmatch(to)
        and _MESSAGE_ID.fullmatch(message_id)
        and len(to) <= 74
        and len(message_id) <= 66
    ):
        return fields.encode("ascii")
    own = EmailMessage(policy=SMTPUTF8 if utf8 else SMTP)
    own["To"] = to
    own["Date"] = date
    own["Message-ID"] = message_id
    headers = own.as_bytes()
    return headers[: headers.index(b"\r\n\r\n") + 2]


def unsubscribe_fields(me: Identity, secret: str | None) -> bytes:
    """List-Unsubscribe, and List-Unsubscribe-Post when there is an https page."""
    mailto = f"mailto:{me.unsubscribe_address(secret)}?subject=unsubscribe"
    page = me.unsubscribe_url(secret)
    if not page:
        return url_field("List-Unsubscribe", [mailto])
    return (
        url_field("List-Unsubscribe", [page, mailto])
        + f"List-Unsubscribe-Post: {ONE_CLICK}\r\n".encode()
    )


def _encoded(text: str, cte: str) -> bytes:
    """`text` as a body part of this encoding, as the stdlib writes it (CRLF lines).

    For what is added to a body encoded once for all readers (a section, a
    footer). 8bit is the text's UTF-8 lines as they are (what set_content
    writes, at a tenth of its cost: this runs once per mail);
    quoted-printable goes through the stdlib itself. Whole lines encode the
    same alone as inside the body, so the pieces join.
    """
    if not text:
        return b""
    if cte == "8bit":
        return b"\r\n".join(text.encode("utf-8", "surrogateescape").splitlines()) + b"\r\n"
    msg = EmailMessage(policy=SMTP)
    msg.set_content(text, charset="utf-8", cte=cte)
    data = msg.as_bytes()
    return data[data.index(b"\r\n\r\n") + 4 :]


def _set_body(msg: EmailMessage, body: str) -> str:
    """UTF-8 text, 8bit, or quoted-printable when a line is too long for SMTP.

    Returns the transfer encoding used."""
    # As the wire splits lines (CR, LF), not as str.splitlines() does: it
    # also splits at U+2028 and other separators a list post may hold.
    data = body.encode("utf-8", "surrogateescape")
    too_long = any(len(line) > MAX_LINE for line in data.splitlines())
    cte = "quoted-printable" if too_long else "8bit"
    msg.set_content(body, charset="utf-8", cte=cte)
    return cte
