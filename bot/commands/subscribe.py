"""subscribe, confirm, unsubscribe: the digest subscription, double opt-in.

Every change is confirmed by a token mailed to the address concerned
(requests.confirm_first), and at most one token per action is pending for a
mailbox: a repeated request while one waits gets no new mail, so forged
requests cannot flood a victim. The one exception is the subscriber's own
secret unsubscribe address from the List-Unsubscribe header of its digests,
which only that subscriber received (and which changes whenever the
subscription is made again).
"""

from __future__ import annotations

from bot.commands import Command, CommandError, Context
from bot.commands.requests import about, confirm_first, topic_of
from bot.commands.welcome import welcome
from bot.config import STYLES
from bot.delivery import subscribers
from bot.delivery.subscribers import Pending


class Subscribe(Command):
    name = "subscribe"
    description = "the digest: daily or weekly; full, classic or brief; a topic"
    examples = (
        "subscribe",
        "subscribe weekly",
        "subscribe daily classic",
        "subscribe weekly brief",
        "subscribe daily dfn:arch/arm64/kvm/",
    )

    def run(self, ctx: Context, args: list[str]) -> str | None:
        schedule, style, rest = parse_choice(args)
        topic = topic_of(rest)
        current = subscribers.get(ctx.conn, ctx.sender)
        if current is not None and current.status != "unsubscribed":
            # A change of schedule or style keeps what was not named: the
            # welcome says 'subscribe weekly brief' changes those two, and
            # `topic none` is how a topic goes.
            topic = topic if rest else current.topic
            style = style or current.style
        if (
            current
            and current.status == "active"
            and current.schedule == schedule
            and current.topic == topic
            and current.style == style
        ):
            return f"{ctx.sender} already receives the {schedule} digest{about(topic)}."
        kind = " ".join(filter(None, (schedule, style)))
        what = f"to send the {kind} {ctx.me.list_title} digest to {ctx.sender}"
        if topic:
            what += ", with only the series matching this topic:"
        return confirm_first(
            ctx, self.name, what, topic, schedule=schedule, topic=topic, style=style
        )

    def confirmed(self, ctx: Context, request: Pending) -> str:
        subscribers.subscribe(
            ctx.conn, request.address, request.schedule, request.topic, request.style
        )
        return welcome(ctx, request.address)


def parse_choice(args: list[str]) -> tuple[str, str, list[str]]:
    """(schedule, style, topic words) of `subscribe [daily|weekly] [STYLE] [QUERY]`.

    The style is "" when not given: the subscriber follows [digest] style. A
    topic comes only after a schedule or style, so a typo such as 'wekly' is
    an error rather than a query.
    """
    schedule = style = ""
    rest = list(args)
    while rest and rest[0].lower() in (*subscribers.SCHEDULES, *STYLES):
        word = rest.pop(0).lower()
        if word in subscribers.SCHEDULES and not schedule:
            schedule = word
        elif word in STYLES and not style:
            style = word
        else:
            rest = [word]  # a second schedule or style: an error below
            break
    repeated = bool(rest) and rest[0].lower() in (*subscribers.SCHEDULES, *STYLES)
    if repeated or (rest and not (schedule or style)):
        raise CommandError(
            "subscribe takes daily or weekly, full, classic or brief, then an optional"
            " topic, e.g. 'subscribe daily brief' or 'subscribe weekly dfn:arch/arm64/kvm/'"
        )
    return schedule or "daily", style, rest


class Unsubscribe(Command):
    name = "unsubscribe"
    description = "stop receiving the digest (confirmed by a token)"
    examples = ("unsubscribe",)

    def urgent(self, args: list[str]) -> bool:
        # The per-subscriber secret address (List-Unsubscribe) works at once,
        # whatever the limits; a plain 'unsubscribe' needs its token mail.
        return len(args) == 1

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
        return confirm_first(
            ctx,
            self.name,
            f"to stop sending the {ctx.me.list_title} digest to {ctx.sender}",
            schedule=current.schedule,
        )

    def confirmed(self, ctx: Context, request: Pending) -> str:
        return goodbye(ctx, request.address)


def goodbye(ctx: Context, address: str) -> str:
    """Unsubscribe `address` (its owner has proved it) and say so."""
    if not subscribers.unsubscribe(ctx.conn, address):
        raise CommandError(f"{address} is not subscribed")
    return (
        f"{address} will not receive the digest any more. Goodbye, and\n"
        f"thanks for reading; 'subscribe' brings it back."
    )
