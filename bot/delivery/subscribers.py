"""Digest subscribers and their double opt-in.

A subscription starts as a token mailed to the address that asked; only the
owner of that mailbox can confirm it, so nobody can subscribe someone else.
The same goes for unsubscribing and for a digest asked for by someone who
is not a subscriber. Tokens are random, valid for `[commands] token_hours`,
single use, and only their SHA-256 is stored. At most one token per action
is pending for a canonical address, so forged requests cannot make the bot
mail a victim again and again.

Each subscriber also has a secret of its own, sent only to it in the
List-Unsubscribe header of its digests (`bot+unsubscribe-<secret>@`): mail
to that address is the proof of ownership, so it unsubscribes at once.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time
from dataclasses import dataclass

from bot.desk import addresses

SCHEDULES = ("daily", "weekly")


@dataclass(frozen=True)
class Subscriber:
    address: str
    schedule: str
    status: str
    hard_failures: int
    topic: str = ""
    """A topic query (bot/digest/query.py): only matching series; '' for all."""
    style: str = ""
    """The digest style asked for; "" means the configured [digest] style."""
    personal: str = ""
    """"on" or "off" for "For you" atop its digests; "" means [digest] personal."""

    def is_personal(self, default: bool) -> bool:
        return self.personal == "on" if self.personal else default


def canonical(address: str) -> str:
    """The stored form of an address: `Una@Bücher.DE` is `una@xn--bcher-kva.de`.

    The same rule as command mail's asker (bot.desk.addresses.normal), so an
    admin-added subscriber is found when it writes to the bot.
    """
    return addresses.normal(address) or address.strip().lower()


def _hash(token: str) -> str:
    return hashlib.sha256(token.strip().encode()).hexdigest()


@dataclass(frozen=True)
class Pending:
    """A confirmed request, as stored with its token."""

    action: str
    address: str
    schedule: str
    args: str
    topic: str = ""
    style: str = ""


def pending(conn: sqlite3.Connection, key: str, action: str) -> bool:
    """True when an unexpired `action` token is waiting for the mailbox `key`."""
    return bool(
        conn.execute(
            "SELECT 1 FROM tokens WHERE limit_key = ? AND action = ? AND expires >= ?",
            (key, action, int(time.time())),
        ).fetchone()
    )


def request(
    conn: sqlite3.Connection,
    address: str,
    schedule: str,
    hours: int,
    *,
    action: str = "subscribe",
    args: str = "",
    key: str = "",
    topic: str = "",
    style: str = "",
) -> str:
    """A new confirmation token for `address` (in the caller's transaction).

    An older pending token for the same action and mailbox is replaced.
    """
    token = secrets.token_hex(16)
    now = int(time.time())
    conn.execute("DELETE FROM tokens WHERE expires < ?", (now,))
    if key:
        conn.execute("DELETE FROM tokens WHERE limit_key = ? AND action = ?", (key, action))
    conn.execute(
        "INSERT INTO tokens (token_hash, address, schedule, expires, action, args, limit_key,"
        " topic, style) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            _hash(token),
            canonical(address),
            schedule,
            now + hours * 3600,
            action,
            args,
            key,
            topic,
            style,
        ),
    )
    return token


def use(conn: sqlite3.Connection, token: str, address: str) -> Pending | None:
    """Use a token: the request it confirms, or None.

    The token must be unexpired and must come back from the address it was
    sent to; it is deleted either way once it matches.
    """
    row = conn.execute(
        "SELECT address, schedule, expires, action, args, topic, style FROM tokens"
        " WHERE token_hash = ?",
        (_hash(token),),
    ).fetchone()
    if row is None or row[0] != canonical(address):
        return None
    conn.execute("DELETE FROM tokens WHERE token_hash = ?", (_hash(token),))
    if row[2] < time.time():
        return None
    return Pending(
        action=row[3], address=row[0], schedule=row[1], args=row[4], topic=row[5], style=row[6]
    )


def confirm(conn: sqlite3.Connection, token: str, address: str) -> str | None:
    """Use a subscribe token: subscribe its address and return the schedule, else None."""
    found = use(conn, token, address)
    if found is None or found.action != "subscribe":
        return None
    subscribe(conn, found.address, found.schedule, found.topic, found.style)
    return found.schedule


def subscribe(
    conn: sqlite3.Connection,
    address: str,
    schedule: str = "daily",
    topic: str = "",
    style: str = "",
) -> None:
    """Make `address` an active subscriber (admin add, or a confirmed token).

    A subscription created again (after an unsubscribe, or once disabled)
    gets a new List-Unsubscribe secret: the address in its old digests, and
    any old mail to it still in a mailbox, must not end the new one.
    """
    now = int(time.time())
    conn.execute(
        "INSERT INTO subscribers (address, schedule, status, created, changed, unsub_secret,"
        " topic, style) VALUES (?, ?, 'active', ?, ?, ?, ?, ?) ON CONFLICT(address) DO UPDATE"
        " SET schedule = excluded.schedule, status = 'active', changed = excluded.changed,"
        " hard_failures = 0, unsub_secret = CASE WHEN status = 'active'"
        " THEN COALESCE(unsub_secret, excluded.unsub_secret) ELSE excluded.unsub_secret END,"
        " topic = excluded.topic, style = excluded.style",
        (canonical(address), schedule, now, now, secrets.token_hex(12), topic, style),
    )


def set_topic(conn: sqlite3.Connection, address: str, topic: str) -> bool:
    """Change an active subscriber's topic ('' for the whole list); False if none."""
    cur = conn.execute(
        "UPDATE subscribers SET topic = ?, changed = ? WHERE address = ? AND status = 'active'",
        (topic, int(time.time()), canonical(address)),
    )
    return cur.rowcount > 0


def set_personal(conn: sqlite3.Connection, address: str, on: bool) -> bool:
    """Turn an active subscriber's "For you" on or off; False if there is none."""
    cur = conn.execute(
        "UPDATE subscribers SET personal = ?, changed = ? WHERE address = ? AND status = 'active'",
        ("on" if on else "off", int(time.time()), canonical(address)),
    )
    return cur.rowcount > 0


def personal_readers(conn: sqlite3.Connection, schedule: str, default: bool) -> set[str]:
    """The active subscribers of a schedule who get "For you" in their digests."""
    wanted = ("on", "") if default else ("on",)
    return {
        r[0]
        for r in conn.execute(
            "SELECT address, personal FROM subscribers WHERE status = 'active' AND schedule = ?",
            (schedule,),
        )
        if r[1] in wanted
    }


def unsubscribe_secret(conn: sqlite3.Connection, address: str) -> str | None:
    """The secret of `address` for its List-Unsubscribe address, if it has one."""
    row = conn.execute(
        "SELECT unsub_secret FROM subscribers WHERE address = ?", (canonical(address),)
    ).fetchone()
    return row[0] if row else None


def by_secret(conn: sqlite3.Connection, secret: str) -> str | None:
    """The subscriber whose List-Unsubscribe secret this is, or None."""
    if not secret:
        return None
    row = conn.execute(
        "SELECT address FROM subscribers WHERE unsub_secret = ?", (secret.lower(),)
    ).fetchone()
    return row[0] if row else None


def unsubscribe(conn: sqlite3.Connection, address: str) -> bool:
    """End a subscription; False when there was none."""
    cur = conn.execute(
        "UPDATE subscribers SET status = 'unsubscribed', changed = ?"
        " WHERE address = ? AND status != 'unsubscribed'",
        (int(time.time()), canonical(address)),
    )
    return cur.rowcount > 0


def get(conn: sqlite3.Connection, address: str) -> Subscriber | None:
    row = conn.execute(
        "SELECT address, schedule, status, hard_failures, topic, style, personal"
        " FROM subscribers WHERE address = ?",
        (canonical(address),),
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


def groups(
    conn: sqlite3.Connection, schedule: str, default_style: str
) -> dict[tuple[str, str], list[str]]:
    """Active subscribers of a schedule by (topic, style): each group's digest is
    rendered once, however many read it ('' topic, the whole list, first)."""
    found: dict[tuple[str, str], list[str]] = {}
    for address, topic, style in conn.execute(
        "SELECT address, topic, style FROM subscribers WHERE status = 'active'"
        " AND schedule = ? ORDER BY topic, style, address",
        (schedule,),
    ):
        found.setdefault((topic, style or default_style), []).append(address)
    return found


def listing(conn: sqlite3.Connection) -> list[Subscriber]:
    return [
        Subscriber(*r)
        for r in conn.execute(
            "SELECT address, schedule, status, hard_failures, topic, style, personal"
            " FROM subscribers ORDER BY address"
        )
    ]
