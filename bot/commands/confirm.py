"""confirm: complete a request with the token its owner was mailed."""

from __future__ import annotations

from bot.commands import Command, CommandError, Context, registry
from bot.delivery import subscribers


class Confirm(Command):
    name = "confirm"
    description = "complete a request with the token you were sent"
    examples = ("confirm 0123456789abcdef0123456789abcdef",)

    def urgent(self, args: list[str]) -> bool:
        return True  # the token proves the owner: what it confirms is done now

    def run(self, ctx: Context, args: list[str]) -> str | None:
        if len(args) != 1:
            raise CommandError("confirm takes the token from the confirmation mail")
        found = subscribers.use(ctx.conn, args[0], ctx.sender)
        if found is None:
            raise CommandError(
                "that confirmation token is unknown, used, expired or was sent to "
                "another address; send your request again"
            )
        # The token names the command that asked for it; that command finishes it.
        command = registry().get(found.action)
        if command is None:
            raise CommandError(
                "that confirmation is for a request this version no longer knows; "
                "send your request again"
            )
        return command.confirmed(ctx, found)
