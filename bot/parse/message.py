"""One raw message in, one `ParsedMessage` out: everything the index needs.

This is the only place that decides what a message *is* (patch, cover letter,
reply, pull request, notice, other), following FORMAT.md's "Kinds of message".
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field, fields

from bot.digest.trailers import Notes, notes
from bot.errors import MailError
from bot.parse import body as bodymod
from bot.parse import mime
from bot.parse import paths as pathsmod
from bot.parse.subject import Subject, parse_subject
from bot.record import Wire, pickled_as_values, rebuilt, values_of

log = logging.getLogger(__name__)

MAX_PARENTS = 100
"""Ancestors kept per message for threading (nearest first)."""
KINDS = ("patch", "cover", "reply", "pull", "notice", "other")
_HEADER_LINE = re.compile(rb"^[\x21-\x39\x3b-\x7e]+[ \t]*:")
_LIST_ID = re.compile(r"<([^<>]+)>")
# Headers that identify a message's content, as public-inbox's ContentHash
# does: two copies that differ only in Received/X- headers are one message.
_IDENTITY_HEADERS = (
    "message-id",
    "from",
    "to",
    "cc",
    "subject",
    "date",
    "in-reply-to",
    "references",
)


@pickled_as_values
@dataclass
class ParsedMessage:
    """The facts about one message that threading and digests rely on."""

    message_id: str
    content_hash: str
    subject: Subject
    from_name: str
    from_addr: str
    author_name: str
    author_addr: str
    date: int | None
    date_offset: int
    received: int | None
    list_id: str
    kind: str
    in_reply_to: str | None = None
    references: list[str] = field(default_factory=list)
    recipients: list[str] = field(default_factory=list)
    addressees: list[str] = field(default_factory=list)
    """Patches and cover letters: the mailboxes their To and Cc deliver to
    (mime.mailboxes: the angle address wins over a display name), as written.
    Empty for other kinds: "For you" only asks whom a submission went to."""
    commit_message: str = ""
    size: int = 0
    text_hash: str = ""
    """Hash of the decoded body text with all white space removed (body.text_hash)."""
    paths: list[str] = field(default_factory=list)
    """Files the diffs touch (patches, cover letters, pulls; not replies)."""
    notes: Notes = field(default_factory=Notes)
    """Review trailers, "applied" and change-id, from the author's own text."""

    @property
    def is_entry(self) -> bool:
        """Gets a "New:" entry in a digest (FORMAT.md, "Commit messages")."""
        if self.kind in ("cover", "pull"):
            return True
        return self.kind == "patch" and self.subject.counter in (None, 0, 1)

    @property
    def parent_ids(self) -> list[str]:
        """Ancestors, nearest first: In-Reply-To, then References backwards.

        At most MAX_PARENTS: threading looks for the nearest known ancestor,
        and hostile mail carries 100,000 References.
        """
        out: list[str] = []
        seen = {self.message_id}
        for ref in ([self.in_reply_to] if self.in_reply_to else []) + self.references[::-1]:
            if ref not in seen:
                seen.add(ref)
                out.append(ref)
                if len(out) >= MAX_PARENTS:
                    break
        return out


_NAMES = [f.name for f in fields(ParsedMessage)]
_SUBJECT_AT, _NOTES_AT = _NAMES.index("subject"), _NAMES.index("notes")


def packed(p: ParsedMessage) -> list:
    """The message as builtins only, for a parser worker to send (WIRE)."""
    values = values_of(p)
    values[_SUBJECT_AT] = tuple(values_of(p.subject))
    values[_NOTES_AT] = tuple(values_of(p.notes))
    return values


def unpacked(values: list) -> ParsedMessage:
    """packed()'s message made again."""
    values[_SUBJECT_AT] = rebuilt(Subject, values[_SUBJECT_AT])
    values[_NOTES_AT] = rebuilt(Notes, values[_NOTES_AT])
    return rebuilt(ParsedMessage, values)


WIRE = Wire(packed, unpacked)
"""How parser workers send parsed messages back (bot/parse/pool.py)."""


def content_hash(headers: mime.Headers, body: bytes) -> str:
    """A hash of what makes a message itself, ignoring transport headers."""
    h = hashlib.sha256()
    for name in _IDENTITY_HEADERS:
        for value in headers.get(name, ()):
            text = " ".join(str(value).split())
            h.update(f"{name}:{text}\n".encode("utf-8", "surrogateescape"))
    h.update(b"\n\n" + body.replace(b"\r\n", b"\n").rstrip())
    return h.hexdigest()


def check_is_mail(raw: bytes) -> None:
    """Raise MailError unless `raw` starts like an RFC 5322 message."""
    if not raw.strip():
        raise MailError("the message is empty")
    first = raw.lstrip(b"\r\n").split(b"\n", 1)[0]
    if first.startswith(b"From ") or first.startswith(b">From "):
        first = raw.lstrip(b"\r\n").split(b"\n", 2)[1] if b"\n" in raw else b""
    if not _HEADER_LINE.match(first):
        raise MailError("it does not start with a mail header (Name: value)")


def classify(
    subject: Subject,
    has_diff: bool,
    mentions_pull: bool,
    is_notice: bool = False,
    embeds_diff: bool = False,
) -> str:
    """The kind of a message, in FORMAT.md's order of precedence.

    The counter decides before the tag does: a `0/n` is a cover letter and a
    numbered message with a diff is a patch even when the tag says `PULL`
    (`[PULL kvm-unit-tests 00/39]`, `[kvm-unit-tests PULL 2/2]`). Without a
    diff, `[PATCH k/n]` is no patch (a review answer, a `Tested-by` that lost
    its `Re:`), whatever its tag says. A `0/n`
    whose diff is only quoted in its letter (a sketch, a range-diff) is still
    the cover letter; one whose diff is the message itself is a patch.
    """
    if subject.is_reply:
        return "reply"
    if is_notice or subject.is_notice:
        return "notice"
    if subject.counter == 0:
        return "patch" if has_diff and not embeds_diff else "cover"
    if subject.counter is not None and has_diff:
        return "patch"
    if subject.is_pull or mentions_pull:
        return "pull"
    if has_diff:
        return "patch"
    return "other"


def author(kind: str, name: str, addr: str, inbody: dict[str, str]) -> tuple[str, str]:
    """Whom a message counts for: the in-body `From:` of a submission, else the sender.

    git send-email writes an in-body `From:` when the sender is not the
    author, so it names the author of a patch, cover letter or pull request.
    At the top of a reply it is an Outlook-style quote of the message
    answered: the reply is still the sender's. An in-body `From:` that is
    not one address (a pasted header line, an address an archive mangled)
    is ignored rather than counted for nobody.
    """
    if kind in ("patch", "cover", "pull") and "from" in inbody:
        found = mime.one_address(inbody["from"])
        if found is not None:
            return found
    return name, addr


def parse_message(raw: bytes) -> ParsedMessage:
    """Parse raw message bytes; raise MailError when they are not mail."""
    check_is_mail(raw)
    headers, body = mime.split_message(raw)

    def get(name: str) -> str | None:
        return mime.first(headers, name)

    if not any(get(h) for h in ("from", "subject", "date", "message-id")):
        raise MailError("it has none of the From, Subject, Date or Message-ID headers")
    chash = content_hash(headers, body)
    ids = mime.message_ids(get("message-id"))
    message_id = ids[0] if ids else f"{chash[:40]}@kvm-digest.invalid"
    subject = subject_of(get("subject"))
    from_name, from_addr = mime.parse_address(get("from"))
    texts = mime.body_texts(raw, headers, body)
    split = bodymod.split_body(
        texts, is_reply=subject.is_reply, numbered_cover=subject.counter == 0
    )
    kind = classify(
        subject, split.has_diff, split.mentions_pull, split.is_notice, split.embeds_diff
    )
    author_name, author_addr = author(kind, from_name, from_addr, split.inbody)
    in_reply_to = mime.message_ids(get("in-reply-to"))
    references = []
    for value in headers.get("references", ()):
        references.extend(mime.message_ids(value))
    recipients = []
    for header in ("to", "cc"):
        for value in headers.get(header, ()):
            recipients.extend(mime.addresses(value))
    addressees = []
    if kind in ("patch", "cover"):
        for header in ("to", "cc"):
            for value in headers.get(header, ()):
                addressees.extend(mime.mailboxes(value))
    received = None
    if rcvd := get("received"):
        received = mime.parse_date(str(rcvd).rpartition(";")[2])
    date, date_offset = mime.parse_date_and_offset(get("date"))
    return ParsedMessage(
        message_id=message_id,
        content_hash=chash,
        subject=subject,
        from_name=from_name,
        from_addr=from_addr,
        author_name=author_name,
        author_addr=author_addr,
        date=date,
        date_offset=date_offset,
        received=received if received is not None else date,
        list_id=_list_id(get("list-id")),
        kind=kind,
        in_reply_to=in_reply_to[0] if in_reply_to else None,
        references=references,
        recipients=recipients,
        addressees=addressees,
        commit_message=split.commit_message if kind in ("patch", "cover", "pull") else "",
        size=len(raw),
        text_hash=split.text_hash,
        paths=pathsmod.touched(texts) if kind in ("patch", "cover", "pull") else [],
        notes=notes(kind, texts),
    )


def subject_of(value: str | None) -> Subject:
    """A Subject header's value, decoded and parsed (no header reads as "")."""
    return _subject(value or "")


@mime.once_per_value
def _subject(value: str) -> Subject:
    """Once per distinct value: replies repeat their thread's subject."""
    return parse_subject(mime.decode_header_value(value))


def _list_id(value: str | None) -> str:
    if not value:
        return ""
    text = mime.decode_header_value(value)
    m = _LIST_ID.search(text)
    return (m.group(1) if m else text).strip().lower()


def parse_within(raw: bytes, max_size: int) -> ParsedMessage:
    """Parse a message for the archive; a MailError says why not (too large, not mail).

    Here, with the parser, and not in the importer: the importer's parser
    workers (bot/parse/pool.py) then load only the parser, not git.
    """
    if len(raw) > max_size:
        raise MailError(
            f"it is {len(raw)} bytes, more than the limit of {max_size} ([import] max_message_size)"
        )
    return parse_message(raw)


def parse_lenient(raw: bytes) -> ParsedMessage:
    """Parse a message already in the archive; never raises.

    Mirrors may hold anything. A blob that is not mail, or that the parser
    cannot read, is still indexed (as "other", with no subject) so that
    archive positions and ranges stay whole.
    """
    try:
        result: ParsedMessage | Exception = parse_message(raw)
    except Exception as err:  # judged by lenient(): logged, and indexed as "other"
        result = err
    return lenient(raw, result)


def lenient(raw: bytes, result: ParsedMessage | Exception) -> ParsedMessage:
    """parse_lenient's answer from parse_message's result (or error), parsed anywhere.

    The error is logged here, in the process that writes the index, however
    far away the parse ran (bot/parse/pool.py).
    """
    if isinstance(result, ParsedMessage):
        return result
    err = result
    if not isinstance(err, MailError):
        log.error(
            "could not parse an archived message: %s: %s", type(err).__name__, err, exc_info=err
        )
    digest = hashlib.sha256(raw).hexdigest()
    return ParsedMessage(
        message_id=f"{digest[:40]}@kvm-digest.invalid",
        content_hash=digest,
        subject=parse_subject(""),
        from_name="",
        from_addr="",
        author_name="",
        author_addr="",
        date=None,
        date_offset=0,
        received=None,
        list_id="",
        kind="other",
        size=len(raw),
    )
