"""Digest subscribers and their double opt-in.

A subscription starts as a token mailed to the address that asked; only the
owner of that mailbox can confirm it, so nobody can subscribe someone else.
Tokens are random, valid for `[commands] token_hours`, single use, and only
their SHA-256 is stored.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time
from dataclasses import dataclass

SCHEDULES = ("daily", "weekly")
STYLES = ("full", "classic")


@dataclass(frozen=True)
class Subscriber:
    address: str
    schedule: str
    status: str
    hard_failures: int
    style: str = ""
    """The digest style asked for; "" means the configured [digest] style."""


def _hash(token: str) -> str:
    return hashlib.sha256(token.strip().encode()).hexdigest()


def request(
    conn: sqlite3.Connection, address: str, schedule: str, hours: int, style: str = ""
) -> str:
    """A new confirmation token for `address` (in the caller's transaction)."""
    token = secrets.token_hex(16)
    conn.execute("DELETE FROM tokens WHERE expires < ?", (int(time.time()),))
    conn.execute(
        "INSERT INTO tokens (token_hash, address, schedule, expires, style) VALUES (?, ?, ?, ?, ?)",
        (_hash(token), address.lower(), schedule, int(time.time()) + hours * 3600, style),
    )
    return token


def confirm(conn: sqlite3.Connection, token: str, address: str) -> str | None:
    """Use a token: subscribe its address and return the schedule, else None.

    The token must be unexpired and must come back from the address it was
    sent to; it is deleted either way once it matches.
    """
    row = conn.execute(
        "SELECT address, schedule, expires, style FROM tokens WHERE token_hash = ?",
        (_hash(token),),
    ).fetchone()
    if row is None or row[0] != address.lower():
        return None
    conn.execute("DELETE FROM tokens WHERE token_hash = ?", (_hash(token),))
    if row[2] < time.time():
        return None
    subscribe(conn, row[0], row[1], row[3])
    return row[1]


def subscribe(
    conn: sqlite3.Connection, address: str, schedule: str = "daily", style: str = ""
) -> None:
    """Make `address` an active subscriber (admin add, or a confirmed token)."""
    now = int(time.time())
    conn.execute(
        "INSERT INTO subscribers (address, schedule, status, created, changed, style)"
        " VALUES (?, ?, 'active', ?, ?, ?) ON CONFLICT(address) DO UPDATE SET"
        " schedule = excluded.schedule, status = 'active', changed = excluded.changed,"
        " hard_failures = 0, style = excluded.style",
        (address.lower(), schedule, now, now, style),
    )


def unsubscribe(conn: sqlite3.Connection, address: str) -> bool:
    """End a subscription; False when there was none."""
    cur = conn.execute(
        "UPDATE subscribers SET status = 'unsubscribed', changed = ?"
        " WHERE address = ? AND status != 'unsubscribed'",
        (int(time.time()), address.lower()),
    )
    return cur.rowcount > 0


def get(conn: sqlite3.Connection, address: str) -> Subscriber | None:
    row = conn.execute(
        "SELECT address, schedule, status, hard_failures, style FROM subscribers WHERE address = ?",
        (address.lower(),),
    ).fetchone()
    return Subscriber(*row) if row else None


def active(conn: sqlite3.Connection, schedule: str) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT address FROM subscribers WHERE status = 'active' AND schedule = ?"
            " ORDER BY address",
            (schedule,),
        )
    ]


def active_by_style(
    conn: sqlite3.Connection, schedule: str, default_style: str
) -> dict[str, list[str]]:
    """Active subscribers of a schedule grouped by the digest style they get.

    Each style's digest is rendered once for its whole group.
    """
    groups: dict[str, list[str]] = {}
    for address, style in conn.execute(
        "SELECT address, style FROM subscribers WHERE status = 'active' AND schedule = ?"
        " ORDER BY address",
        (schedule,),
    ):
        groups.setdefault(style or default_style, []).append(address)
    return groups


def listing(conn: sqlite3.Connection) -> list[Subscriber]:
    return [
        Subscriber(*r)
        for r in conn.execute(
            "SELECT address, schedule, status, hard_failures, style FROM subscribers"
            " ORDER BY address"
        )
    ]
