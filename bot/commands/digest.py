"""digest: the digest for any archive range or time window, by mail.

A digest can be large and the sender of a command mail can be forged, so
only a confirmed subscriber gets it at once; anyone else first gets one
short "reply to get it" confirmation (at most one pending per mailbox).
No reply is larger than `[commands] max_reply_bytes`: a bigger digest is
refused with the two halves of the range to ask for instead.
"""

from __future__ import annotations

import re
import time

from bot.commands import Command, CommandError, Context
from bot.commands.requests import confirm_first, topic_of
from bot.delivery import subscribers
from bot.delivery.subscribers import Pending
from bot.digest import build as digestmod
from bot.digest import layout, personal, ranges
from bot.errors import RangeError

_LAST = re.compile(r"^(\d{1,4})$")
_COMMIT = re.compile(r"^[0-9a-fA-F]{4,40}$")


class Digest(Command):
    name = "digest"
    description = "the digest for a range of the archive or a time window"
    # Filled in with ids and dates from this archive (commands/help.py).
    examples = (
        "digest {start}..{end}",
        "digest {start} {end}",
        "digest since {since} until {until}",
        "digest last 3 days",
        "digest last 7 days s:x86",
    )
    alone = True

    def run(self, ctx: Context, args: list[str]) -> str | None:
        current = subscribers.get(ctx.conn, ctx.sender)
        if current is not None and current.status == "active":
            return deliver(ctx, args)
        checked(ctx, args)  # a request that cannot work gets its error now
        request = " ".join(args)
        return confirm_first(
            ctx,
            self.name,
            f"for this digest of the {ctx.me.list_title} list to be sent to {ctx.sender}:",
            f"digest {request}",
            args=request,
        )

    def confirmed(self, ctx: Context, request: Pending) -> str:
        return deliver(ctx, request.args.split())


def checked(ctx: Context, args: list[str]) -> tuple[ranges.Range, str]:
    """The range the arguments ask for, within the size limits, and its topic."""
    used = range_words(args)
    topic = topic_of(args[used:])
    try:
        rng = select(ctx, args[:used])
    except RangeError as err:
        raise CommandError(str(err)) from None
    check_size(ctx, rng)
    return rng, topic


def deliver(ctx: Context, args: list[str]) -> str:
    """The digest itself, or a refusal when it would be too large a reply."""
    rng, topic = checked(ctx, args)
    d = digestmod.build(
        ctx.conn,
        rng,
        ctx.config.list.title,
        ctx.config.digest.top,
        ctx.config.digest.abbrev,
        query=topic or None,
        style=style_for(ctx),
        archive_url=ctx.config.list.archive_url,
        review_wait_days=ctx.config.digest.review_wait_days,
    )
    text = with_for_you(ctx, rng, d, digestmod.render(d, ctx.env))
    limit = ctx.config.commands.max_reply_bytes
    if len(text.encode()) > limit:
        digits = ctx.config.digest.abbrev
        start, end = rng.abbrev(digits)
        middle = ranges._id_at(ctx.conn, (rng.start_seq + rng.end_seq) // 2)[:digits]
        raise CommandError(
            f"that digest would be {len(text.encode()) // 1024} KB, more than the "
            f"{limit // 1024} KB a reply may be; ask for a smaller range, e.g. its "
            f"halves 'digest {start}..{middle}' and 'digest {middle}..{end}'"
        )
    ctx.reply_subject = d.subject
    ctx.digest_reply = True
    return text


def with_for_you(ctx: Context, rng: ranges.Range, d: digestmod.Digest, text: str) -> str:
    """A personal subscriber's digest starts with its "For you", as mailed ones do."""
    sub = subscribers.get(ctx.conn, ctx.sender)
    if sub is None or sub.status != "active" or not sub.is_personal(ctx.config.digest.personal):
        return text
    full = d if not d.query and d.style == "full" else None
    pool = personal.pool(ctx.conn, rng, ctx.config.list.archive_url, full)
    found = personal.reader(sub.address)
    section = personal.render(pool.groups(found[1]), sub.address, ctx.env) if found else ""
    return layout.insert(text, section) if section else text


def style_for(ctx: Context) -> str:
    """The asker's chosen style when they are subscribed, else [digest] style."""
    sub = subscribers.get(ctx.conn, ctx.sender)
    return (sub.style if sub and sub.style else "") or ctx.config.digest.style


def range_words(args: list[str]) -> int:
    """How many leading words name the range; the rest is a topic query."""
    words = [a.lower() for a in args]
    if not words:
        return 0
    if words[0] == "since":
        return 4 if len(words) >= 4 and words[2] == "until" else min(len(words), 2)
    if words[0] == "last":
        return min(len(words), 3)
    if ".." not in words[0] and len(words) > 1 and _COMMIT.match(words[1]):
        return 2
    return 1


def select(ctx: Context, args: list[str]) -> ranges.Range:
    words = [a.lower() for a in args]
    if not words:
        raise CommandError("digest needs a range, e.g. 'digest A..B' or 'digest last 2 days'")
    if words[0] == "since":
        if len(words) == 2:
            return ranges.by_time(ctx.conn, ranges.parse_when(words[1]))
        if len(words) == 4 and words[2] == "until":
            return ranges.by_time(
                ctx.conn, ranges.parse_when(words[1]), ranges.parse_when(words[3])
            )
        raise CommandError("write it as 'digest since YYYY-MM-DD [until YYYY-MM-DD]'")
    if words[0] == "last":
        unit = {"day": 86400, "days": 86400, "hour": 3600, "hours": 3600}
        if len(words) == 3 and _LAST.match(words[1]) and words[2] in unit:
            since = int(time.time()) - int(words[1]) * unit[words[2]]
            return ranges.by_time(ctx.conn, since)
        raise CommandError("write it as 'digest last N days' or 'digest last N hours'")
    return ranges.parse_range(ctx.conn, " ".join(args))


def check_size(ctx: Context, rng: ranges.Range) -> None:
    """Refuse ranges larger than [digest] max_days or max_messages."""
    limits = ctx.config.digest
    count = rng.end_seq - rng.start_seq
    if count > limits.max_messages:
        raise CommandError(
            f"that range holds {count} messages, more than the limit of "
            f"{limits.max_messages}; ask for a smaller range"
        )
    first, last = ctx.conn.execute(
        "SELECT MIN(received), MAX(received) FROM messages WHERE seq > ? AND seq <= ?",
        (rng.start_seq, rng.end_seq),
    ).fetchone()
    if first is not None and last - first > limits.max_days * 86400:
        raise CommandError(
            f"that range spans more than {limits.max_days} days; ask for a smaller range"
        )
