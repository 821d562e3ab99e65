"""subscribe, confirm, unsubscribe: the digest subscription, double opt-in.

Every change is confirmed by a token mailed to the address concerned, and at
most one token per action is pending for a mailbox: a repeated request while
one waits gets no new mail, so forged requests cannot flood a victim. The one
exception is the subscriber's own secret unsubscribe address from the
List-Unsubscribe header of its digests, which only that subscriber received.
"""

from __future__ import annotations

import textwrap

from bot.commands import Command, CommandError, Context
from bot.delivery import subscribers
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


class Subscribe(Command):
    name = "subscribe"
    description = "ask to receive the digest, daily (default) or weekly"
    examples = ("subscribe", "subscribe weekly", "subscribe daily dfn:arch/arm64/kvm/")

    def run(self, ctx: Context, args: list[str]) -> str | None:
        schedule = args[0].lower() if args else "daily"
        if schedule not in subscribers.SCHEDULES:
            raise CommandError(
                "subscribe takes daily or weekly, then an optional topic,"
                " e.g. 'subscribe weekly' or 'subscribe daily dfn:arch/arm64/kvm/'"
            )
        topic = topic_of(args[1:])
        current = subscribers.get(ctx.conn, ctx.sender)
        if (
            current
            and current.status == "active"
            and current.schedule == schedule
            and current.topic == topic
        ):
            return f"{ctx.sender} already receives the {schedule} digest{about(topic)}."
        if subscribers.pending(ctx.conn, ctx.key, "subscribe"):
            return None  # the confirmation already sent still works
        token = subscribers.request(
            ctx.conn,
            ctx.sender,
            schedule,
            ctx.config.commands.token_hours,
            key=ctx.key,
            topic=topic,
        )
        what = f"to send the {schedule} {ctx.me.list_title} digest{about(topic)} to {ctx.sender}"
        return confirmation(ctx, what, token)


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


class Confirm(Command):
    name = "confirm"
    description = "complete a request with the token you were sent"
    examples = ("confirm 0123456789abcdef0123456789abcdef",)

    def run(self, ctx: Context, args: list[str]) -> str | None:
        if len(args) != 1:
            raise CommandError("confirm takes the token from the confirmation mail")
        found = subscribers.use(ctx.conn, args[0], ctx.sender)
        if found is None:
            raise CommandError(
                "that confirmation token is unknown, used, expired or was sent to "
                "another address; send your request again"
            )
        if found.action == "unsubscribe":
            return goodbye(ctx, found.address)
        if found.action == "digest":
            from bot.commands.digest import deliver  # digest imports this module

            return deliver(ctx, found.args.split())
        subscribers.subscribe(ctx.conn, found.address, found.schedule, found.topic)
        return f"{ctx.sender} now receives the {found.schedule} digest{about(found.topic)}."


class Unsubscribe(Command):
    name = "unsubscribe"
    description = "stop receiving the digest (confirmed by a token)"
    examples = ("unsubscribe",)

    def run(self, ctx: Context, args: list[str]) -> str | None:
        if len(args) == 1:
            # `unsubscribe SECRET`: what mail to bot+unsubscribe-SECRET@ means.
            owner = subscribers.by_secret(ctx.conn, args[0])
            if owner is None:
                raise CommandError(
                    "that unsubscribe address is unknown; send 'unsubscribe' from the "
                    "subscribed address instead"
                )
            return goodbye(ctx, owner)
        if args:
            raise CommandError("unsubscribe takes nothing more, e.g. 'unsubscribe'")
        current = subscribers.get(ctx.conn, ctx.sender)
        if current is None or current.status == "unsubscribed":
            raise CommandError(f"{ctx.sender} is not subscribed")
        if subscribers.pending(ctx.conn, ctx.key, "unsubscribe"):
            return None
        token = subscribers.request(
            ctx.conn,
            ctx.sender,
            current.schedule,
            ctx.config.commands.token_hours,
            action="unsubscribe",
            key=ctx.key,
        )
        return confirmation(
            ctx, f"to stop sending the {ctx.me.list_title} digest to {ctx.sender}", token
        )


def goodbye(ctx: Context, address: str) -> str:
    """Unsubscribe `address` (its owner has proved it) and say so."""
    if not subscribers.unsubscribe(ctx.conn, address):
        raise CommandError(f"{address} is not subscribed")
    return (
        f"{address} will not receive the digest any more. Goodbye, and\n"
        f"thanks for reading; 'subscribe' brings it back."
    )
