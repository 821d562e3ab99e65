"""topic: narrow your digest to the series a lei-style query matches.

A topic is as much a change to a subscription as its schedule: a forged
`topic s:nothing-ever-matches` would stop a reader's digests, so it is
confirmed by the subscriber, like every change (requests.confirm_first).
"""

from __future__ import annotations

from bot.commands import Command, CommandError, Context
from bot.commands.requests import confirm_first, topic_line, topic_of
from bot.delivery import subscribers
from bot.delivery.subscribers import Pending


class Topic(Command):
    name = "topic"
    description = "only series matching a query (s: f: b: dfn:), or 'topic none'"
    examples = ("topic dfn:arch/arm64/kvm/ OR s:arm64", "topic none")

    def run(self, ctx: Context, args: list[str]) -> str | None:
        if not args:
            raise CommandError(
                "topic takes a query or 'none', e.g. 'topic dfn:arch/arm64/kvm/' or 'topic none'"
            )
        topic = "" if [a.lower() for a in args] == ["none"] else topic_of(args)
        current = subscribers.get(ctx.conn, ctx.sender)
        if current is None or current.status != "active":
            raise CommandError(
                f"{ctx.sender} is not subscribed; send 'subscribe daily' (or weekly), "
                "followed by the topic"
            )
        if current.topic == topic:
            return (
                f"{ctx.sender} already has that topic."
                if topic
                else (f"{ctx.sender} already receives the whole list.")
            )
        title = ctx.me.list_title
        what = (
            f"to send {ctx.sender} only the series of the {title} digest matching this topic:"
            if topic
            else f"to send {ctx.sender} the whole {title} list in its digest again"
        )
        return confirm_first(ctx, self.name, what, topic, topic=topic)

    def confirmed(self, ctx: Context, request: Pending) -> str:
        if not subscribers.set_topic(ctx.conn, request.address, request.topic):
            raise CommandError(f"{request.address} is not subscribed")
        if not request.topic:
            return f"{request.address} now receives the whole list in its digest."
        return f"{request.address} now receives only the series matching its topic:" + (
            topic_line(ctx, request.topic)
        )
