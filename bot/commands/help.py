"""help: the command list with examples."""

from __future__ import annotations

from bot.commands import Command, Context, registry


class Help(Command):
    name = "help"
    description = "this list of commands, with examples"
    examples = ("help",)

    def run(self, ctx: Context, args: list[str]) -> str:
        return help_text(ctx)


def help_text(ctx: Context) -> str:
    """The help text, rendered from templates/help.txt.j2."""
    return ctx.env.get_template("help.txt.j2").render(
        me=ctx.me, commands=list(registry().values()), config=ctx.config
    )
