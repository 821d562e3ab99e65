"""Cron expressions (UTC), parsed by APScheduler.

Its own module so that the config can check a schedule without importing
the outbox and the digest machinery (config must not depend on delivery).
"""

from __future__ import annotations

from datetime import UTC

from apscheduler.triggers.cron import CronTrigger

FIELDS = "minute hour day-of-month month day-of-week"


def trigger(expression: str, seconds: bool = False) -> CronTrigger:
    """A cron trigger in UTC: five fields, as crontab(5) has.

    Six, with seconds first, only when `seconds` is set ([schedule] seconds,
    for tests and load runs that need a digest every few seconds): an
    operator who writes six fields by habit from another tool gets an error
    instead of a schedule that means something else.
    """
    fields = expression.split()
    if len(fields) == 6 and not seconds:
        raise ValueError(f"it has six fields; cron has five: {FIELDS}")
    if len(fields) == 6:
        second, minute, hour, day, month, dow = fields
        return CronTrigger(
            second=second,
            minute=minute,
            hour=hour,
            day=day,
            month=month,
            day_of_week=dow,
            timezone=UTC,
        )
    return CronTrigger.from_crontab(expression, timezone=UTC)


def describe(expression: str, seconds: bool = False) -> str:
    """The schedule in words, e.g. "every day at 06:00 UTC" (cron-descriptor).

    For people reading a `status` reply or check-config, who should not have
    to read cron. The expression is checked first, so words never describe a
    schedule the daemon would refuse.
    """
    from cron_descriptor import ExpressionDescriptor, Options

    trigger(expression, seconds)
    options = Options()
    options.use_24hour_time_format = True
    options.verbose = False
    words = ExpressionDescriptor(expression, options).get_description()
    fields = expression.split()
    calendar = fields[-3:]
    if words.startswith("At ") and "," not in words and calendar == ["*", "*", "*"]:
        return f"every day at {words[3:]} UTC"
    head, sep, rest = words.partition(", only on ")
    if head.startswith("At ") and sep and "," not in rest and fields[-3:-1] == ["*", "*"]:
        return f"every {rest} at {head[3:]} UTC"
    return f"{words[0].lower()}{words[1:]} (UTC)"
