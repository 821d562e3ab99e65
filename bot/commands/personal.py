"""personal: "For you" atop your digest, on or off (confirmed by a token).

"For you" lists the series sent to you, waiting for your answer, and your
own series with news (bot/digest/personal.py). Like every change to a
subscription, it is confirmed by a token mailed to the subscriber: a forged
mail can only make the bot send one confirmation, and none while one waits.
"""

from __future__ import annotations

from bot.commands import Command, CommandError, Context
from bot.commands.requests import confirmation
from bot.delivery import subscribers
from bot.delivery.subscribers import Pending

CHOICES = ("on", "off")


class Personal(Command):
    name = "personal"
    description = "a 'For you' section atop your digests: on or off"
    examples = ("personal on", "personal off")

    def run(self, ctx: Context, args: list[str]) -> str | None:
        if len(args) != 1 or args[0].lower() not in CHOICES:
            raise CommandError("personal takes on or off, e.g. 'personal on'")
        want = args[0].lower()
        current = subscribers.get(ctx.conn, ctx.sender)
        if current is None or current.status != "active":
            raise CommandError(f"{ctx.sender} is not subscribed; send 'subscribe' first")
        if current.is_personal(ctx.config.digest.personal) == (want == "on"):
            return f"'For you' is already {want} for {ctx.sender}."
        if subscribers.pending(ctx.conn, ctx.key, self.name):
            return None  # the confirmation already sent still works
        token = subscribers.request(
            ctx.conn,
            ctx.sender,
            current.schedule,
            ctx.config.commands.token_hours,
            action=self.name,
            args=want,
            key=ctx.key,
        )
        what = f"to turn 'For you' {want} in the {ctx.me.list_title} digests of {ctx.sender}"
        return confirmation(ctx, what, token)

    def confirmed(self, ctx: Context, request: Pending) -> str:
        if request.args not in CHOICES:
            raise CommandError("that confirmation is damaged; send 'personal on' again")
        if not subscribers.set_personal(ctx.conn, request.address, request.args == "on"):
            raise CommandError(f"{request.address} is not subscribed; send 'subscribe' first")
        if request.args == "off":
            return f"'For you' is now off for {request.address}."
        return (
            f"'For you' is now on for {request.address}: each digest starts with the\n"
            "series sent to you, those waiting for your answer, and your own series\n"
            "with news."
        )
