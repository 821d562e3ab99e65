"""What the commands that change something share: confirmations and topics.

No command lives here. A request that needs its owner's confirmation is
stored as a token with an action named after the command that made it
(`confirm_first`); `confirm` hands the token back to that command's
`confirmed()`, so no command imports another.
"""

from __future__ import annotations

import textwrap

from bot.commands import CommandError, Context
from bot.delivery import subscribers
from bot.digest import query

INDENT = "    "


def confirmation(ctx: Context, what: str, token: str, words: str = "") -> str:
    """The text of a confirmation mail; its subject is set to 'confirm TOKEN'.

    `what` is the bot's own description of the request; `words`, the
    asker's own (a topic, a range), are quoted once, as one short line.
    """
    hours = ctx.config.commands.token_hours
    ctx.reply_subject = f"confirm {token}"
    sentence = f"Someone, probably you, asked {what}"
    asked = textwrap.fill(sentence if sentence.endswith(":") else sentence + ".", 72) + "\n"
    if words:
        asked += f"\n{INDENT}{ctx.quote(words, 72)}\n\n"
    return asked + (
        f"To confirm, reply to this mail and keep its subject, or send a mail\n"
        f"to {ctx.me.address} that says:\n"
        f"\n    confirm {token}\n\n"
        f"The request expires in {hours} hours. If you did not ask, ignore this\n"
        f"mail: nothing happens, and no other mail about it is sent meanwhile."
    )


def confirm_first(
    ctx: Context,
    action: str,
    what: str,
    words: str = "",
    *,
    schedule: str = "",
    args: str = "",
    topic: str = "",
    style: str = "",
) -> str | None:
    """Ask the owner of ctx.sender to confirm a request of the command `action`.

    Every change to a subscription goes through here (README, "Confirm, then
    act"): a token for `action` is stored with what the request needs
    (`confirm` hands it back to that command's `confirmed()`), and the
    confirmation goes to the address concerned. While one is pending for
    the mailbox, None: the asker gets no new mail, so forged requests cannot
    flood a victim.
    """
    if subscribers.pending(ctx.conn, ctx.key, action):
        return None
    token = subscribers.request(
        ctx.conn,
        ctx.sender,
        schedule,
        ctx.config.commands.token_hours,
        action=action,
        args=args,
        key=ctx.key,
        topic=topic,
        style=style,
    )
    return confirmation(ctx, what, token, words)


def topic_of(words: list[str]) -> str:
    """A topic query from command words, normalised; '' for none."""
    if not words:
        return ""
    try:
        return query.normal(" ".join(words))
    except query.QueryError as err:
        raise CommandError(str(err)) from None


def about(topic: str) -> str:
    """' on a topic' for replies, or nothing for the whole list (never the query)."""
    return " on a topic" if topic else ""


def topic_line(ctx: Context, topic: str) -> str:
    """The topic, quoted once, as an indented line of its own ('' for none)."""
    return f"\n\n{INDENT}{ctx.quote(topic, 72)}" if topic else ""
