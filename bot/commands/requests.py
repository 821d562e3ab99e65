"""What the commands that change something share: confirmations and topics.

No command lives here. A request that needs its owner's confirmation is
stored as a token with an action named after the command that made it;
`confirm` hands the token back to that command's `confirmed()`, so no
command imports another.
"""

from __future__ import annotations

import textwrap

from bot.commands import CommandError, Context
from bot.digest import query


def confirmation(ctx: Context, what: str, token: str) -> str:
    """The text of a confirmation mail; its subject is set to 'confirm TOKEN'."""
    hours = ctx.config.commands.token_hours
    ctx.reply_subject = f"confirm {token}"
    return (
        textwrap.fill(f"Someone, probably you, asked {what}.", 72) + "\n"
        f"To confirm, reply to this mail and keep its subject, or send a mail\n"
        f"to {ctx.me.address} that says:\n"
        f"\n    confirm {token}\n\n"
        f"The request expires in {hours} hours. If you did not ask, ignore this\n"
        f"mail: nothing happens, and no other mail about it is sent meanwhile."
    )


def topic_of(words: list[str]) -> str:
    """A topic query from command words, normalised; '' for none."""
    if not words:
        return ""
    try:
        return query.normal(" ".join(words))
    except query.QueryError as err:
        raise CommandError(str(err)) from None


def about(topic: str) -> str:
    """' on topic X' for replies, or nothing for the whole list."""
    return f" on topic {topic}" if topic else ""
