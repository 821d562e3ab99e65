"""Decoding real mail: headers (RFC 5322, 2047) and text parts (MIME, charsets).

Mailing-list mail is messy: 8-bit bytes in headers, encoded words that lie
about their charset, base64 that does not decode, parts that claim one charset
and hold another. Everything here degrades to readable text and never raises.
We use the standard library's `email` package with the fast compat32 policy:
the modern policy builds header objects we do not need and costs ~5x more.
"""

from __future__ import annotations

import codecs
import email
import email.errors
import email.message
import email.utils
import functools
import quopri
import re
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from email.header import decode_header
from typing import TypeVar

_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]+")
_WS = re.compile(r"\s+")
_FOLD = re.compile(r"\n[ \t]+")
_SURROGATE = re.compile("[\udc80-\udcff]")
_ADDR = re.compile(r"[\w.+=/!#$%&'*?^`{|}~-]+@[\w-]+(?:\.[\w-]+)+")
# Address lists are cut at characters no bare address holds, and only the
# pieces with an "@" are matched: a regex search over the whole header would
# retry at every position of a long run of letters (quadratic on hostile mail).
_ADDR_BREAK = re.compile(r"[\s<>()\[\],;:\"\\]+")
# One mailbox, whole: `Name <a@b>` (the name may hold commas), `a@b (Name)`.
_ONE_ADDRESS = re.compile(
    r"(?:(?P<name>[^<>]*)<(?P<addr>[^<>\s@]+@[^<>\s@]+)>"
    r"|(?P<bare>[^<>\s@(),;\"]+@[^<>\s@(),;\"]+)(?:\s*\((?P<comment>[^()]*)\))?)"
)
_PATCH_NAME = re.compile(r"\.(patch|diff)$", re.I)
# Many text parts claim a charset they do not hold; these are the usual truth.
_FALLBACK_CHARSETS = ("utf-8", "cp1252")
# Codecs Python knows that are not charsets a mail can be written in: they
# interpret the bytes (punycode, escapes) and raise or run long on hostile
# input. A part that names one is read with the fallbacks instead.
_NOT_CHARSETS = frozenset({"punycode", "idna", "raw_unicode_escape", "unicode_escape", "rot_13"})
_DECODE_ERRORS = (UnicodeError, ValueError, OverflowError, TypeError)
MAX_HEADER_CHARS = 16 * 1024
"""Header text decoded for display (Subject, From) is cut here. No real
subject or name comes near it, and the stdlib's RFC 2047 and address
parsers are superlinear (or recursive) on long hostile values."""
MAX_MIME_PARTS = 500
"""A multipart mail with more parts is read as flat text: the stdlib's MIME
parser costs ~0.5 ms a part and recurses once per nesting level."""
_PART_HEADER = re.compile(rb"^content-type:", re.I | re.M)
_LIST_BREAK = re.compile(r"[,;]")
_MESSAGE_ID = re.compile(r"<([^<>\s]+)>")


Headers = dict[str, list[str]]
"""Header values by lower-cased name, in message order, still encoded."""


def split_message(raw: bytes) -> tuple[Headers, bytes]:
    """Split raw mail into its unfolded headers and its body bytes.

    The feed parser of the standard library is the slow part of reading list
    mail (kvmarm messages carry ~45 headers, most of them Received:), and all
    it does for a header block is what these lines do: split at the first
    empty line, join continuation lines, split at the first colon. 8-bit bytes
    survive as surrogates, exactly as compat32 keeps them. (A regex that picks
    out only the wanted headers is slower: re tries it at every position.)
    """
    end = _header_end(raw)
    head, body = (raw[: end[0]], raw[end[1] :]) if end else (raw, b"")
    text = head.decode("ascii", "surrogateescape")
    # One C-level pass unfolds every header, so the cost is linear in the
    # size of the header block however often it is folded (hostile mail
    # folds a References header 400,000 times).
    text = _FOLD.sub(" ", text.replace("\r", ""))
    headers: Headers = {}
    # Lines without a colon (an mbox "From " line) or starting with white
    # space (a fold before any header) are no field. A split and a partition
    # per line, not a multi-line regex: re tries `^` at every character.
    for line in text.split("\n"):
        name, colon, value = line.partition(":")
        if not colon or not name or name[0] in " \t":
            continue
        name = name.strip()
        if " " in name:
            continue  # garbage: a field name holds no space
        headers.setdefault(name.lower(), []).append(value.strip())
    return headers, body


def _header_end(raw: bytes) -> tuple[int, int] | None:
    """Where the header block ends and where the body starts, if anywhere.

    A "\r" left at the end of the header block is dropped with the others.
    """
    lf = raw.find(b"\n\n")
    # Only before the first "\n\n" (or overlapping it): the rest of a long
    # body is not searched for a "\n\r\n" that could not come first.
    crlf = raw.find(b"\n\r\n", 0, lf + 3 if lf >= 0 else len(raw))
    if crlf >= 0 and (lf < 0 or crlf < lf):
        return crlf, crlf + 3
    return (lf, lf + 2) if lf >= 0 else None


def first(headers: Headers, name: str) -> str | None:
    """The first value of a header, or None."""
    values = headers.get(name)
    return values[0] if values else None


def body_texts(raw: bytes, headers: Headers, body: bytes) -> list[str]:
    """The readable text parts of a message (see text_parts).

    A single-part message is decoded straight from its body bytes; only
    multipart mail goes through the full MIME parser.
    """
    ctype = (first(headers, "content-type") or "text/plain").lower()
    if ctype.lstrip().startswith("multipart/"):
        if len(_PART_HEADER.findall(body, 0)) <= MAX_MIME_PARTS:
            try:
                return text_parts(email.message_from_bytes(raw))
            except RecursionError:
                pass  # deep nesting within the part limit can still exhaust the stack
        return [decode_text(body, None).replace("\r\n", "\n")]
    content_type = first(headers, "content-type")
    ctype, charset = _content_type(content_type or None)
    cte = (first(headers, "content-transfer-encoding") or "").lower()
    if ctype in _TEXT_TYPES and cte not in _ENCODED:
        # What get_payload(decode=True) and _part_text() make of it, without
        # building a Message: the most common shape of list mail by far.
        payload = quopri.decodestring(body) if cte == "quoted-printable" else body
        return [_clean(decode_text(payload, charset))]
    part = email.message.Message()
    for name in ("content-type", "content-transfer-encoding", "content-disposition"):
        if value := first(headers, name):
            part[name] = value
    part.set_payload(body.decode("ascii", "surrogateescape"))
    return text_parts(part)


_TEXT_TYPES = ("text/plain", "text/x-patch", "text/x-diff")
# Transfer encodings that body_texts leaves to the email package; for every
# other value get_payload(decode=True) returns the body bytes as they are.
_ENCODED = frozenset({"base64", "x-uuencode", "uuencode", "uue", "x-uue"})


@functools.lru_cache(maxsize=512)
def _content_type(value: str | None) -> tuple[str, str | None]:
    """A part's (content type, charset) exactly as the email package reads them.

    Read by the email package itself, once per distinct header value: list
    mail repeats a handful of them, and building a Message for every
    message costs more than the rest of decoding its body.
    """
    part = email.message.Message()
    if value:
        part["content-type"] = value
    return part.get_content_type(), part.get_content_charset()


def _unsurrogate(value: str) -> str:
    """Turn raw 8-bit header bytes (kept as surrogates) back into text."""
    if value.isascii() or not _SURROGATE.search(value):
        return value  # isascii() is O(1) for ASCII strings: the common case
    data = value.encode("ascii", "surrogateescape")
    return decode_text(data, None)


def decode_text(data: bytes, charset: str | None) -> str:
    """Decode bytes in their declared charset, falling back sensibly.

    A wrong or unknown charset is common; we try the declared one strictly,
    then UTF-8, then cp1252 (a superset of latin-1 for printable text), which
    always succeeds.
    """
    tried: list[str] = []
    for name in (_codec(charset), *_FALLBACK_CHARSETS):
        if not name or name in tried:
            continue
        tried.append(name)
        try:
            return data.decode(name)
        except _DECODE_ERRORS:
            continue
    return data.decode("latin-1")


def _codec(charset: str | None) -> str | None:
    """The Python codec for a declared charset, or None if it is not a charset."""
    if not charset:
        return None
    try:
        info = codecs.lookup(charset.strip().strip("\"'"))
    except (LookupError, ValueError, TypeError):
        return None
    if info.name.replace("-", "_") in _NOT_CHARSETS or not getattr(info, "_is_text_encoding", True):
        return None
    return info.name


def decode_header_value(value: str | None) -> str:
    """Decode RFC 2047 words, strip control characters, collapse white space.

    The result is safe to put back into a header: it holds no CR or LF.
    """
    if not value:
        return ""
    value = _unsurrogate(str(value)[:MAX_HEADER_CHARS])
    parts: list[str] = []
    try:
        chunks = decode_header(value)
    except (ValueError, LookupError, email.errors.HeaderParseError):
        chunks = [(value, None)]
    for chunk, charset in chunks:
        if isinstance(chunk, bytes):
            parts.append(decode_text(chunk, charset))
        else:
            parts.append(chunk)
    # When any word is encoded, every chunk is bytes and keeps its own
    # spacing, so a plain join is right (it is what make_header does).
    text = "".join(parts)
    return _WS.sub(" ", _CONTROL.sub(" ", text)).strip()


CACHED_CHARS = 1024
"""Header values up to this long are read once per distinct value (a list's
senders and Cc lists repeat); longer ones, rare and maybe hostile, are not
kept."""
_T = TypeVar("_T")


CACHED_VALUES = 256
"""Distinct values remembered per reader. Repeats come close together (a
thread's subject, a series' Cc list): on the kvmarm epoch 256 entries hit
as often as 4,096 within 4%. And the daemon parses live mail in its own
process for weeks, so what a cache holds must stop growing within minutes
(at 4,096 the soak read the caches filling as a 240 KB/min leak)."""


def once_per_value(read: Callable[[str], _T]) -> Callable[[str], _T]:
    """`read`, remembered for the last CACHED_VALUES distinct values up to
    CACHED_CHARS long.

    Its result is shared by every caller that reads the same value, so it
    must be immutable (a str, a tuple, a frozen dataclass).
    """
    cached = functools.lru_cache(maxsize=CACHED_VALUES)(read)

    @functools.wraps(read)
    def reader(value: str) -> _T:
        return cached(value) if len(value) <= CACHED_CHARS else read(value)

    return reader


def parse_address(value: str | None) -> tuple[str, str]:
    """Return (display name, address) from a From-like header, both decoded.

    The display name loses the quotes that enclose all of it (`"Jinhui Guo"`),
    not quotes inside it (`Hector Martin 'marcan'`); a missing address gives "".
    """
    if not value:
        return "", ""
    return _parse_address(value)


@once_per_value
def _parse_address(value: str) -> tuple[str, str]:
    raw = _unsurrogate(str(value)[:MAX_HEADER_CHARS])
    try:
        name, addr = email.utils.parseaddr(_CONTROL.sub(" ", raw))
    except (IndexError, ValueError, RecursionError, email.errors.HeaderParseError):
        # Some stdlib versions raise on shapes like ".@"; fall back below.
        name, addr = "", ""
    if "@" not in addr and (whole := one_address(raw)) is not None:
        # `Last, First <a@b>`: RFC 5322 reads two mailboxes, people mean one.
        return whole
    if not addr and "@" in raw:
        # parseaddr gives up on some broken headers; take the first token with @.
        addr = next((w.strip("<>,;\"'") for w in raw.split() if "@" in w), "")
    name = _unquote(decode_header_value(name).strip())
    addr = _CONTROL.sub("", addr).strip()
    if name.lower() == addr.lower():
        name = ""
    return name, addr


def one_address(value: str | None) -> tuple[str, str] | None:
    """(name, address) when `value` reads as exactly one mailbox, else None.

    `Name <a@b>`, `<a@b>`, `a@b` or `a@b (Name)`, and nothing after it. An
    unquoted comma belongs to the name (`Last, First <a@b>`), as people
    write their names in in-body `From:` lines and some clients in headers;
    the RFC 5322 reading would make it two mailboxes, the first without an
    address. A header block pasted on one line (`From: X <a@b> Sent: ...`)
    or an address that lost its `@` to an archive (`user () host ! com`) is
    not one mailbox.
    """
    if not value:
        return None
    text = _CONTROL.sub(" ", _unsurrogate(str(value)[:MAX_HEADER_CHARS])).strip()
    m = _ONE_ADDRESS.fullmatch(text)
    if not m:
        return None
    addr = m.group("addr") or m.group("bare")
    name = m.group("name") if m.group("addr") else m.group("comment")
    name = _unquote(decode_header_value(name or "").strip())
    if name.lower() == addr.lower():
        name = ""
    return name, addr


def _unquote(name: str) -> str:
    """Remove one pair of quotes when they enclose the whole name."""
    while len(name) >= 2 and name[0] == name[-1] and name[0] in "\"'":
        name = name[1:-1].strip()
    return name


def parse_date(value: str | None) -> int | None:
    """Seconds since the epoch for an RFC 5322 date, or None when unreadable."""
    return parse_date_and_offset(value)[0]


def parse_date_and_offset(value: str | None) -> tuple[int | None, int]:
    """Epoch seconds (None when unreadable) and the zone offset in minutes.

    One parse for both: the archive's commits need the offset, the index
    the time, and the Date header is read once per message.
    """
    if not value:
        return None, 0
    text = _unsurrogate(str(value)).strip()
    try:
        when = _plain_date(text) or email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None, 0
    if not isinstance(when, datetime):
        return None, 0
    offset = when.utcoffset()
    minutes = int(offset.total_seconds() // 60) if offset else 0
    try:
        return int(when.timestamp()), minutes
    except (OverflowError, OSError, ValueError):
        return None, minutes


# The shape nearly every mail client writes: "Tue, 3 Mar 2020 10:11:12 +0100".
_PLAIN_DATE = re.compile(
    r"(?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun),\s+)?(\d{1,2})\s+([A-Za-z]{3})\s+([1-9]\d{3})"
    r"\s+(\d{1,2}):(\d{2}):(\d{2})\s+([+-])(\d{4})(?:\s.*)?",
    re.S | re.ASCII,
)
_MONTHS = {
    name: number
    for number, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1
    )
}


def _plain_date(text: str) -> datetime | None:
    """What parsedate_to_datetime() makes of a date in the plain shape, or None
    for any other (left to it). A regex and the datetime constructor instead
    of the email package's tokenizer: every message has two dates to read."""
    m = _PLAIN_DATE.fullmatch(text)
    if m is None or (month := _MONTHS.get(m.group(2).lower())) is None:
        return None
    zone = int(m.group(8))
    if zone == 0 and m.group(7) == "-":
        return None  # "-0000": an unknown zone, which it reads as local time
    seconds = (zone // 100) * 3600 + (zone % 100) * 60
    day, year, hour, minute, second = (int(m.group(i)) for i in (1, 3, 4, 5, 6))
    return datetime(
        year,
        month,
        day,
        hour,
        minute,
        second,
        tzinfo=timezone(timedelta(seconds=-seconds if m.group(7) == "-" else seconds)),
    )


def addresses(value: str | None) -> list[str]:
    """Every address in an address-list header, lower-cased.

    A regex, not getaddresses(): routing only needs the addresses, and the
    full RFC 5322 parser costs more than the rest of parsing on long Cc lists.
    """
    if not value:
        return []
    return list(_addresses(value))


@once_per_value
def _addresses(value: str) -> tuple[str, ...]:
    found = []
    for piece in _ADDR_BREAK.split(_unsurrogate(str(value))):
        if (
            piece.count("@") == 1
            and len(piece) <= 254
            and (m := _ADDR.fullmatch(piece.strip("'.")))
        ):
            found.append(m.group(0).lower())
    return tuple(found)


_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
_COMMENT = re.compile(r"\((?:[^()\\]|\\.)*\)")
_ANGLE = re.compile(r"<([^<>]*)>")
# Only at the start of a word, and without backtracking: a 60 KB run of
# letters before a lone "@" must cost one scan, not one per position.
_BARE = re.compile(r'(?<![^\s<>:;,])(?:"(?:[^"\\]|\\.)*+"|[^\s<>:;,"@])++@[^\s<>:;,"@]+')
MAX_ADDRESS_LIST = 64 * 1024
"""Characters of a To or Cc header read for its mailboxes (a long Cc list is
a few KB); the rest of a hostile one is ignored."""


def mailboxes(value: str | None) -> list[str]:
    """The mailboxes an address-list header (To, Cc) delivers to, as written.

    What a relay delivers to, not what a reader sees: the angle address of
    each element wins over its display name, so `"jane@example.com"
    <john@example.com>` and `jane@example.com <john@example.com>` name John
    only; quoted names may hold commas (`"Doe, Jane" <jane@example.com>`);
    comments, groups (`undisclosed-recipients:;`) and RFC 2047 names are
    passed over. Canonical forms are for the caller (bot.desk.addresses).
    Linear time: quoted strings and comments go in one regex pass each.
    """
    if not value:
        return []
    return list(_mailboxes(value))


@once_per_value
def _mailboxes(value: str) -> tuple[str, ...]:
    text = _unsurrogate(str(value)[:MAX_ADDRESS_LIST])
    if '"' in text:
        text = _QUOTED.sub(_quoted_part, text)
    if "(" in text:
        text = _COMMENT.sub(" ", text)
    found = []
    for element in _LIST_BREAK.split(text):
        if "@" not in element:
            continue
        angles = [a for a in _ANGLE.findall(element) if "@" in a]
        if angles:
            address = angles[-1].strip()
        elif "<" not in element and ">" not in element and (m := _BARE.search(element)):
            address = m.group(0)
        else:
            continue
        if len(address) <= 254:
            found.append(address)
    return tuple(found)


def _quoted_part(m: re.Match[str]) -> str:
    """A quoted display name goes (it is not where mail is delivered); a
    quoted local part (`"jane doe"@example.com`) keeps its text."""
    end = m.end()
    if m.string[end : end + 1] == "@":
        return m.group(0)
    return '""'


def message_ids(value: str | None) -> list[str]:
    """All `<id>` tokens of a Message-ID, In-Reply-To or References header."""
    if not value:
        return []
    text = _unsurrogate(str(value))
    found = _MESSAGE_ID.findall(text)
    if not found and text.strip() and " " not in text.strip():
        # Some clients forget the angle brackets.
        found = [text.strip()]
    return found


def text_parts(msg: email.message.Message) -> list[str]:
    """The readable text of a message: plain-text parts and attached patches.

    HTML-only mail yields its HTML part stripped of tags, so it still reads.
    Binary attachments and signatures are skipped.
    """
    texts: list[str] = []
    html: list[str] = []
    for part in msg.walk():
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        if ctype in ("text/plain", "text/x-patch", "text/x-diff") or _PATCH_NAME.search(
            str(part.get_filename() or "")
        ):
            texts.append(_part_text(part))
        elif ctype == "text/html":
            html.append(_part_text(part))
    if not texts and html:
        texts = [re.sub(r"<[^>]*>", "", h) for h in html]
    return texts


def _part_text(part: email.message.Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        payload = str(part.get_payload()).encode("utf-8", "surrogateescape")
    return _clean(decode_text(payload, part.get_content_charset()))


def _clean(text: str) -> str:
    """A decoded part's text with Unix line ends and no NUL characters."""
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
