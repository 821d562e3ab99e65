"""help: the command list with examples."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bot.commands import Command, Context, registry

FALLBACK = {
    "start": "d62e82362",
    "end": "caab494ce",
    "since": "2021-03-01",
    "until": "2021-03-02",
}
"""Example values for an empty archive: the reference digest's range."""

RECENT = 10
"""How many of the newest messages the range example covers."""


class Help(Command):
    name = "help"
    description = "this list of commands, with examples"
    examples = ("help",)
    arguments = False

    def run(self, ctx: Context, args: list[str]) -> str:
        return help_text(ctx)


def archive_examples(ctx: Context) -> dict[str, str]:
    """Ids and dates from this archive, so every example can be sent as it is.

    The range is the newest few messages; the window is the newest message's
    UTC day. Copied from the help mail, they give a real, small digest.
    """
    conn = ctx.conn
    row = conn.execute(
        "SELECT seq, commit_id, COALESCE(received, date) FROM messages ORDER BY seq DESC LIMIT 1"
    ).fetchone()
    if row is None:
        return dict(FALLBACK)
    end_seq, end_id, when = row
    start = conn.execute(
        "SELECT commit_id FROM messages WHERE seq = ?", (max(end_seq - RECENT, 1),)
    ).fetchone()
    digits = ctx.config.digest.abbrev
    day = datetime.fromtimestamp(when, UTC).date() if when else None
    values = {"start": start[0][:digits], "end": end_id[:digits]}
    if day is None:
        return {**FALLBACK, **values}
    return {**values, "since": day.isoformat(), "until": (day + timedelta(days=1)).isoformat()}


def _fill(example: str, values: dict[str, str]) -> str:
    # Plain replacement, not str.format: other examples may hold braces.
    for key, value in values.items():
        example = example.replace("{" + key + "}", value)
    return example


def help_text(ctx: Context) -> str:
    """The help text, rendered from templates/help.txt.j2."""
    values = archive_examples(ctx)
    commands = list(registry().values())
    examples = {c.name: [_fill(e, values) for e in c.examples] for c in commands}
    return ctx.env.get_template("help.txt.j2").render(
        me=ctx.me, commands=commands, examples=examples, config=ctx.config
    )
