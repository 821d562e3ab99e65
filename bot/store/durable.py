"""Transactions that are on disk when they end, not only committed.

The index runs WAL with `synchronous = NORMAL`: a commit survives a crash
of the process, but a power cut can take back the commits since the last
checkpoint. That is fine for a cache of git, and for most state; it is not
fine where the bot answers the outside world on the strength of a commit:
LMTP's 250 (the MTA deletes its copy) and the outbox's mark of an attempt
(the relay gets the mail next). Those transactions run with `synchronous =
FULL`, which syncs the WAL before the commit returns; because the WAL is
sequential, that also makes every earlier commit durable.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def durable(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """`with durable(conn):` is `with conn:`, plus an fsync before it returns."""
    (previous,) = conn.execute("PRAGMA synchronous").fetchone()
    conn.execute("PRAGMA synchronous = FULL")
    try:
        with conn:
            yield conn
    finally:
        conn.execute(f"PRAGMA synchronous = {int(previous)}")
