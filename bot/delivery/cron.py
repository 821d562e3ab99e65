"""Cron expressions (UTC), parsed by APScheduler.

Its own module so that the config can check a schedule without importing
the outbox and the digest machinery (config must not depend on delivery).
"""

from __future__ import annotations

from datetime import UTC

from apscheduler.triggers.cron import CronTrigger


def trigger(expression: str) -> CronTrigger:
    """A cron trigger in UTC (five fields, or six with seconds first)."""
    fields = expression.split()
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
