"""Retention: the index keeps the archive's derived rows forever, state not.

Command mail (`inbound`) and sent mail (`outbox`, rendered `digests`) are
working state: once handled they are kept `[data] retention_days` for the
admin to look at, then deleted, so a stream of mail to the bot cannot grow
the index without bound (handled command mail keeps no raw bytes even
before). Failed mail is kept `failed_retention_days`. What command mail was
ever handled (`seen_mail`, two 16-byte hashes a mail) is never purged: an
old command fetched again must not run again.
"""

from __future__ import annotations

import sqlite3
import time

DAY = 86400


def purge(
    conn: sqlite3.Connection,
    retention_days: int,
    failed_retention_days: int,
    now: float | None = None,
) -> dict[str, int]:
    """Delete handled state older than its retention; return counts by table."""
    now = time.time() if now is None else now
    # The reply limits count the last hour's outbox and the last day's
    # answered mail: never purge inside that window, whatever is configured.
    done_before = int(now - max(retention_days, 1) * DAY)
    failed_before = int(now - max(failed_retention_days, 1) * DAY)
    counts: dict[str, int] = {}
    with conn:
        counts["inbound"] = conn.execute(
            "DELETE FROM inbound WHERE done AND ("
            " (error IS NULL AND COALESCE(handled, received) < ?)"
            " OR (error IS NOT NULL AND COALESCE(handled, received) < ?))",
            (done_before, failed_before),
        ).rowcount
        counts["outbox"] = conn.execute(
            "DELETE FROM outbox WHERE (status = 'sent' AND COALESCE(sent_at, created) < ?)"
            " OR (status = 'failed' AND created < ?)",
            (done_before, failed_before),
        ).rowcount
        # A rendered digest goes once nothing in the outbox refers to it; the
        # schedules table, not the digests, carries where the next one starts.
        counts["digests"] = conn.execute(
            "DELETE FROM digests WHERE created < ?"
            " AND NOT EXISTS (SELECT 1 FROM outbox WHERE outbox.digest_id = digests.id)",
            (done_before,),
        ).rowcount
        counts["failures"] = conn.execute(
            "DELETE FROM failures WHERE created < ?", (failed_before,)
        ).rowcount
        counts["tokens"] = conn.execute(
            "DELETE FROM tokens WHERE expires < ?", (int(now),)
        ).rowcount
        # Once-a-day notices only matter for a day.
        counts["notices"] = conn.execute(
            "DELETE FROM notices WHERE sent < ?", (int(now - 2 * DAY),)
        ).rowcount
    return counts
