"""subscribe, confirm, unsubscribe: the digest subscription, double opt-in."""

from __future__ import annotations

from bot.commands import Command, CommandError, Context
from bot.delivery import subscribers
from bot.digest import query


class Subscribe(Command):
    name = "subscribe"
    description = "ask to receive the digest, daily (default) or weekly"
    examples = ("subscribe", "subscribe weekly", "subscribe daily dfn:arch/arm64/kvm/")

    def run(self, ctx: Context, args: list[str]) -> str:
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
        hours = ctx.config.commands.token_hours
        token = subscribers.request(ctx.conn, ctx.sender, schedule, hours, topic)
        ctx.reply_subject = f"confirm {token}"
        return (
            f"Someone, probably you, asked to send the {schedule} {ctx.me.list_title}\n"
            f"digest to {ctx.sender}. To confirm, reply to this mail and keep\n"
            f"its subject, or send a mail to {ctx.me.address} that says:\n"
            f"\n    confirm {token}\n\n"
            + (f"Only series matching the topic {topic} will be sent.\n" if topic else "")
            + f"The request expires in {hours} hours. If you did not ask, ignore this mail."
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


class Confirm(Command):
    name = "confirm"
    description = "complete a subscription with the token you were sent"
    examples = ("confirm 0123456789abcdef0123456789abcdef",)

    def run(self, ctx: Context, args: list[str]) -> str:
        if len(args) != 1:
            raise CommandError("confirm takes the token from the confirmation mail")
        schedule = subscribers.confirm(ctx.conn, args[0], ctx.sender)
        if schedule is None:
            raise CommandError(
                "that confirmation token is unknown, used, expired or was sent to "
                "another address; send 'subscribe' again"
            )
        sub = subscribers.get(ctx.conn, ctx.sender)
        return f"{ctx.sender} now receives the {schedule} digest{about(sub.topic if sub else '')}."


class Unsubscribe(Command):
    name = "unsubscribe"
    description = "stop receiving the digest (from the subscribed address)"
    examples = ("unsubscribe",)

    def run(self, ctx: Context, args: list[str]) -> str:
        if not subscribers.unsubscribe(ctx.conn, ctx.sender):
            raise CommandError(f"{ctx.sender} is not subscribed")
        return (
            f"{ctx.sender} will not receive the digest any more. Goodbye, and\n"
            f"thanks for reading; 'subscribe' brings it back."
        )
