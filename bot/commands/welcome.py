"""A subscription in words: the welcome a new subscriber gets, and `status`.

Mailman's welcome tells a new member how the list works; ours says when the
digest comes (in UTC, from the cron schedule), in which style, on which
topic, how to change each, how to leave and where the archive is. No
command lives here.
"""

from __future__ import annotations

from bot.commands import Context
from bot.delivery import subscribers
from bot.delivery.cron import describe

STYLE_WORDS = {
    "full": "full: the patch list with links, reviews, versions and who applied\n"
    "        each series, the discussion, then the commit messages",
    "classic": "classic: statistics, the patch list and the commit messages, the\n"
    "        list's documented layout",
    "brief": "brief: the patch list with links, reviews and versions, and the\n"
    "        discussion, without the commit messages",
}
"""What each style holds (FORMAT.md, "Three styles"), for people."""


def style_of(ctx: Context, chosen: str) -> tuple[str, bool]:
    """The style a subscriber reads, and whether it is the server's default."""
    return chosen or ctx.config.digest.style, not chosen


def when(ctx: Context, schedule: str) -> str:
    """`every Monday at 06:00 UTC (cron '0 6 * * mon')`, or that it is off."""
    expression = getattr(ctx.config.schedule, schedule, "")
    if not expression:
        return "never: this server has the schedule switched off"
    return f"{describe(expression, ctx.config.schedule.seconds)} (cron '{expression}')"


def welcome(ctx: Context, address: str) -> str:
    """The text of the reply that completes a subscription."""
    sub = subscribers.get(ctx.conn, address)
    assert sub is not None, "welcome() follows subscribe()"
    style, default = style_of(ctx, sub.style)
    return ctx.env.get_template("welcome.txt.j2").render(
        me=ctx.me,
        address=address,
        schedule=sub.schedule,
        when=when(ctx, sub.schedule),
        style=STYLE_WORDS[style] + (" (the server's default)" if default else ""),
        # The one line of the asker's words a reply may quote (README, "No echo").
        topic=ctx.quote(sub.topic, 72) if sub.topic else "",
    )
