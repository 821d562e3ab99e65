"""topic: narrow your digest to the series a lei-style query matches."""

from __future__ import annotations

from bot.commands import Command, CommandError, Context
from bot.commands.requests import topic_of
from bot.delivery import subscribers


class Topic(Command):
    name = "topic"
    description = "only series matching a query (s: f: b: dfn:), or 'topic none'"
    examples = ("topic dfn:arch/arm64/kvm/ OR s:arm64", "topic none")

    def run(self, ctx: Context, args: list[str]) -> str:
        if not args:
            raise CommandError(
                "topic takes a query or 'none', e.g. 'topic dfn:arch/arm64/kvm/' or 'topic none'"
            )
        topic = "" if [a.lower() for a in args] == ["none"] else topic_of(args)
        if not subscribers.set_topic(ctx.conn, ctx.sender, topic):
            raise CommandError(
                f"{ctx.sender} is not subscribed; send 'subscribe daily {' '.join(args)}'"
                if topic
                else f"{ctx.sender} is not subscribed; send 'subscribe'"
            )
        if not topic:
            return f"{ctx.sender} now receives the whole list in its digest."
        return f"{ctx.sender} now receives only the series matching {topic}."
