"""status: subscription state, schedule, the last digest's range."""

from __future__ import annotations

from datetime import UTC, datetime

from bot.commands import Command, Context
from bot.commands.welcome import style_of
from bot.delivery import subscribers
from bot.delivery.cron import describe


class Status(Command):
    name = "status"
    description = "your subscription: schedule, style, topic, the last digest"
    examples = ("status",)
    arguments = False

    def run(self, ctx: Context, args: list[str]) -> str:
        sub = subscribers.get(ctx.conn, ctx.sender)
        if sub is None or sub.status == "unsubscribed":
            lines = [f"{ctx.sender} is not subscribed."]
            schedule = "daily"
        else:
            lines = [f"{ctx.sender}: {sub.status}, {sub.schedule} digest."]
            if sub.status == "disabled":
                lines.append(
                    "Digests stopped because mail to this address bounced or was"
                    " refused;\nsend 'subscribe' to get them again."
                )
            style, default = style_of(ctx, sub.style)
            lines.append(f"Style: {style}" + (" (the server's default)." if default else "."))
            if sub.topic:
                lines.append(f"Topic, only matching series:\n    {ctx.quote(sub.topic, 72)}")
            else:
                lines.append("Topic: none, the whole list.")
            personal = sub.is_personal(ctx.config.digest.personal)
            lines.append(f"For you: {'on' if personal else 'off'} ('personal on|off' to change).")
            schedule = sub.schedule
        row = ctx.conn.execute(
            "SELECT start_id, end_id, created FROM digests WHERE schedule = ?"
            " ORDER BY id DESC LIMIT 1",
            (schedule,),
        ).fetchone()
        abbrev = ctx.config.digest.abbrev
        if row:
            when = datetime.fromtimestamp(row[2], UTC).strftime("%Y-%m-%d %H:%M UTC")
            lines.append(
                f"The last {schedule} digest, on {when}, covered "
                f"{row[0][:abbrev]}..{row[1][:abbrev]}."
            )
        else:
            lines.append(f"No {schedule} digest has been sent yet.")
        expression = getattr(ctx.config.schedule, schedule)
        if expression:
            words = describe(expression, ctx.config.schedule.seconds)
            lines.append(f"The {schedule} digest goes out {words} (cron '{expression}').")
        else:
            lines.append(f"The {schedule} digest is switched off on this server.")
        return "\n".join(lines)
