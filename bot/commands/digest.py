"""digest: the digest for any archive range or time window, by mail."""

from __future__ import annotations

import re
import time

from bot.commands import Command, CommandError, Context
from bot.delivery import subscribers
from bot.digest import build as digestmod
from bot.digest import ranges
from bot.errors import RangeError

_LAST = re.compile(r"^(\d{1,4})$")


class Digest(Command):
    name = "digest"
    description = "the digest for a range of the archive or a time window"
    examples = (
        "digest d62e82362..caab494ce",
        "digest d62e82362 caab494ce",
        "digest since 2025-11-01 until 2025-11-08",
        "digest last 3 days",
    )
    alone = True

    def run(self, ctx: Context, args: list[str]) -> str:
        try:
            rng = select(ctx, args)
        except RangeError as err:
            raise CommandError(str(err)) from None
        check_size(ctx, rng)
        d = digestmod.build(
            ctx.conn,
            rng,
            ctx.config.list.title,
            ctx.config.digest.top,
            ctx.config.digest.abbrev,
            style=style_for(ctx),
            archive_url=ctx.config.list.archive_url,
        )
        ctx.reply_subject = d.subject
        return digestmod.render(d, ctx.env)


def style_for(ctx: Context) -> str:
    """The asker's chosen style when they are subscribed, else [digest] style."""
    sub = subscribers.get(ctx.conn, ctx.sender)
    return (sub.style if sub and sub.style else "") or ctx.config.digest.style


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
