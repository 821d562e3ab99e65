"""subscribe, confirm, unsubscribe: the digest subscription, double opt-in."""

from __future__ import annotations

from bot.commands import Command, CommandError, Context
from bot.delivery import subscribers


class Subscribe(Command):
    name = "subscribe"
    description = "ask for the digest: daily (default) or weekly, full or classic"
    examples = ("subscribe", "subscribe weekly", "subscribe daily classic")

    def run(self, ctx: Context, args: list[str]) -> str:
        schedule, style = parse_choice([a.lower() for a in args])
        current = subscribers.get(ctx.conn, ctx.sender)
        if (
            current
            and current.status == "active"
            and current.schedule == schedule
            and current.style == style
        ):
            return f"{ctx.sender} already receives the {schedule} digest."
        hours = ctx.config.commands.token_hours
        token = subscribers.request(ctx.conn, ctx.sender, schedule, hours, style)
        ctx.reply_subject = f"confirm {token}"
        return (
            f"Someone, probably you, asked to send the {' '.join(filter(None, (schedule, style)))}"
            f" {ctx.me.list_title}\n"
            f"digest to {ctx.sender}. To confirm, reply to this mail and keep\n"
            f"its subject, or send a mail to {ctx.me.address} that says:\n"
            f"\n    confirm {token}\n\n"
            f"The request expires in {hours} hours. If you did not ask, ignore this mail."
        )


def parse_choice(words: list[str]) -> tuple[str, str]:
    """(schedule, style) from `subscribe [daily|weekly] [full|classic]`.

    The style is "" when not given: the subscriber follows [digest] style.
    """
    schedules = [w for w in words if w in subscribers.SCHEDULES]
    styles = [w for w in words if w in subscribers.STYLES]
    if len(schedules) > 1 or len(styles) > 1 or len(schedules) + len(styles) != len(words):
        raise CommandError(
            "subscribe takes daily or weekly, and full or classic, e.g. 'subscribe daily classic'"
        )
    return (schedules[0] if schedules else "daily"), (styles[0] if styles else "")


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
        return f"{ctx.sender} now receives the {schedule} digest."


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
