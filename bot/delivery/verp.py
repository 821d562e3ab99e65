"""VERP: each digest's envelope sender names its subscriber, unforgeably.

A digest to `reader@example.net` goes out from `bot+bounce-<token>@domain`,
so whatever comes back to that address names the subscriber it was for,
whatever its format. The token is a truncated HMAC of the address under a
random per-install key kept in the index's `meta` table: nothing per
subscriber is stored, and a stranger cannot forge a bounce for someone
else's address. The outbox writes these senders; bounce handling reads them.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3

from bot.delivery.mail import Identity

TAG = "bounce-"
"""The plus tag of VERP addresses: bot+bounce-<token>@domain."""
_KEY = "bounce_key"
_TOKEN_HEX = 16
"""64 bits of HMAC: unguessable, and short enough for any MTA's local part."""


def install_key(conn: sqlite3.Connection) -> bytes:
    """This install's VERP key, made on first use (state: kept by reindex)."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (_KEY,)).fetchone()
    if row:
        return bytes.fromhex(row[0])
    with conn:
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (_KEY, secrets.token_hex(32))
        )
    return bytes.fromhex(
        conn.execute("SELECT value FROM meta WHERE key = ?", (_KEY,)).fetchone()[0]
    )


def token(key: bytes, address: str) -> str:
    """The VERP token of one address (case-insensitive, as addresses are stored)."""
    digest = hmac.new(key, address.lower().encode(), hashlib.sha256).hexdigest()
    return digest[:_TOKEN_HEX]


def verp_sender(me: Identity, key: bytes, recipient: str) -> str:
    """The envelope sender for mail to `recipient`: bot+bounce-<token>@domain."""
    return me.plus(TAG + token(key, recipient))


def verp_token(rcpt: str) -> str | None:
    """The token of a VERP bounce address, or None for any other address."""
    tag = rcpt.lower().partition("@")[0].partition("+")[2]
    return tag[len(TAG) :] if tag.startswith(TAG) else None


def subscriber_for(conn: sqlite3.Connection, key: bytes, tok: str) -> str | None:
    """The subscriber a token was made for (one HMAC per subscriber; bounces are rare)."""
    for (address,) in conn.execute("SELECT address FROM subscribers"):
        if hmac.compare_digest(token(key, address), tok):
            return address
    return None
