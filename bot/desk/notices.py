"""Notes the bot sends a mailbox at most once a day, and what they say.

A forged flood must not turn a note into the amplifier the limits prevent,
so each kind of note goes to a mailbox (its canonical address, as limits
count it) at most once in NOTICE_SECONDS; the `notices` table remembers
when each was last sent. The first kind: an answer deferred past the
mailbox's limit ("it comes at 14:05 UTC").
"""

from __future__ import annotations

import sqlite3
import time

from bot.delivery.mail import Identity

NOTICE_SECONDS = 86400
"""A mailbox hears a note of one kind at most once in this many seconds."""


def due(conn: sqlite3.Connection, key: str, kind: str, now: int) -> bool:
    """True when the mailbox `key` may be sent a note of `kind` now."""
    row = conn.execute(
        "SELECT sent FROM notices WHERE limit_key = ? AND kind = ?", (key, kind)
    ).fetchone()
    return row is None or row[0] <= now - NOTICE_SECONDS


def record(conn: sqlite3.Connection, key: str, kind: str, now: int) -> None:
    """Remember that a note of `kind` went to `key` (in the caller's transaction)."""
    conn.execute(
        "INSERT INTO notices (limit_key, kind, sent) VALUES (?, ?, ?)"
        " ON CONFLICT (limit_key, kind) DO UPDATE SET sent = excluded.sent",
        (key, kind, now),
    )


def utc(when: int) -> str:
    """`14:05 UTC on 2026-12-01`."""
    return time.strftime("%H:%M UTC on %Y-%m-%d", time.gmtime(when))


def deferral_notice(me: Identity, until: int) -> str:
    """The short note that an answer waits for a limit, and when it comes."""
    return (
        f"Your mail to {me.address} arrived after the bot had sent you as many\n"
        "answers as it may for now. It is kept, and will be answered at about\n"
        f"{utc(until)}. Mail you send meanwhile waits its turn too.\n"
        "\n"
        "You get this note at most once a day.\n"
    )
