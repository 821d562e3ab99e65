"""Threads and patch series, resolved on real, out-of-order mail.

A thread is the root of a message's References chain. A series is one
submitter's `[PATCH vN n/m]` set, found by walking up the reply chain while
the parent is a patch of the same version, total and sender: the message the
top patch answers (its cover letter, or a pull request, a v1, a thread) names
the series. A cover letter (`0/m`) always starts a series, and the version is
part of the id, so a v2 posted in reply to v1 is a new series. The series id
names its root message, version and sender:

    <root-message-id>/v2/sender@example.org

The root may not have arrived yet (a patch before its cover letter): the id
then names the missing parent, so when the cover letter arrives it computes
the same id and the series is whole. Patches sent without any References fall
back to: same sender, same version and total, within an hour, counter not yet
taken. Replies belong to the series of their nearest known ancestor, else to
the series of the patch whose subject they answer.

Whenever a message arrives, every message that referred to it is
re-resolved, so the order mail arrives in never changes the result.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

NO_REFS_WINDOW = 3600
"""Seconds within which un-threaded patches of one sender form one series."""
_MAX_DEPTH = 500


@dataclass(frozen=True)
class Node:
    """The columns of a message that threading looks at."""

    seq: int
    message_id: str
    kind: str
    version: int
    counter: int | None
    total: int | None
    from_key: str
    parent_id: str | None
    base_subject: str
    when: int | None
    series_id: str | None

    @property
    def is_patchy(self) -> bool:
        return self.kind in ("patch", "cover")


_COLUMNS = (
    "seq, message_id, kind, version, counter, total, from_key, parent_id, "
    "base_subject, COALESCE(date, received), series_id"
)


def series_key(root_id: str, version: int, from_key: str) -> str:
    """The series id of a root message (present or not yet arrived)."""
    return f"<{root_id}>/v{version}/{from_key}"


def load(conn: sqlite3.Connection, seq: int) -> Node:
    """One message's threading columns by archive position."""
    row = conn.execute(f"SELECT {_COLUMNS} FROM messages WHERE seq = ?", (seq,)).fetchone()
    return Node(*row)


def by_message_id(conn: sqlite3.Connection, message_id: str) -> Node | None:
    """The first message with this Message-ID, or None if it has not arrived."""
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM messages WHERE message_id = ? ORDER BY seq LIMIT 1",
        (message_id,),
    ).fetchone()
    return Node(*row) if row else None


def _joins(child: Node, parent: Node) -> bool:
    """True when `child` continues the series `parent` belongs to."""
    if not parent.is_patchy or parent.version != child.version:
        return False
    if parent.from_key != child.from_key:
        return False
    return parent.kind == "cover" or parent.total == child.total


def resolve_patch(conn: sqlite3.Connection, node: Node) -> str:
    """The series id of a patch or cover letter.

    Numbered patches climb their reply chain while it holds patches of the
    same series; the message the top one answers names the series. That is
    the cover letter, or whatever else the patches were sent in reply to (a
    pull request, a v1, a discussion) or a message that has not arrived yet.
    """
    key = lambda root: series_key(root, node.version, node.from_key)  # noqa: E731
    if node.kind == "cover" or node.total is None:
        # A cover letter starts its series; an unnumbered patch is its own.
        return key(node.message_id)
    cur = node
    for _ in range(_MAX_DEPTH):
        if cur.parent_id is None or cur.parent_id == cur.message_id:
            break
        parent = by_message_id(conn, cur.parent_id)
        if parent is None or not _joins(node, parent) or parent.kind == "cover":
            return key(cur.parent_id)
        cur = parent
    found = _unthreaded_series(conn, node) if (node.total or 0) > 1 else None
    return found or key(cur.message_id)


def _unthreaded_series(conn: sqlite3.Connection, node: Node) -> str | None:
    """The series an un-threaded patch belongs to, by sender and time."""
    if node.when is None:
        return None
    rows = conn.execute(
        """SELECT series_id, ABS(COALESCE(date, received) - ?) AS gap
             FROM messages
            WHERE from_key = ? AND version = ? AND total = ?
              AND kind IN ('patch', 'cover') AND series_id IS NOT NULL
              AND seq != ? AND gap <= ?
            ORDER BY gap LIMIT 20""",
        (node.when, node.from_key, node.version, node.total, node.seq, NO_REFS_WINDOW),
    ).fetchall()
    for series_id, _gap in rows:
        taken = conn.execute(
            "SELECT 1 FROM messages WHERE series_id = ? AND counter = ? AND seq != ?",
            (series_id, node.counter, node.seq),
        ).fetchone()
        if not taken:
            return series_id
    return None


def resolve_reply(conn: sqlite3.Connection, node: Node) -> str | None:
    """The series a reply (or other message) is about, if any."""
    for (ref,) in conn.execute(
        "SELECT ref FROM refs WHERE seq = ? ORDER BY pos", (node.seq,)
    ).fetchall():
        ancestor = by_message_id(conn, ref)
        if ancestor is not None and ancestor.series_id:
            return ancestor.series_id
    if node.kind != "reply":
        return None
    row = conn.execute(
        """SELECT series_id FROM messages
            WHERE base_subject = ? AND kind IN ('patch', 'cover') AND seq != ?
              AND series_id IS NOT NULL
            ORDER BY seq DESC LIMIT 1""",
        (node.base_subject, node.seq),
    ).fetchone()
    return row[0] if row else None


def resolve(conn: sqlite3.Connection, node: Node) -> str | None:
    """The series id of any message."""
    if node.is_patchy:
        return resolve_patch(conn, node)
    if node.kind == "reply":
        return resolve_reply(conn, node)
    return None


def place(conn: sqlite3.Connection, seq: int) -> None:
    """Resolve a newly indexed message, then everything that referred to it."""
    node = load(conn, seq)
    _set(conn, node, resolve(conn, node))
    pending = [node.message_id]
    seen = {seq}
    while pending:
        message_id = pending.pop()
        referrers = conn.execute(
            "SELECT DISTINCT seq FROM refs WHERE ref = ?", (message_id,)
        ).fetchall()
        for (ref_seq,) in referrers:
            if ref_seq in seen:
                continue
            seen.add(ref_seq)
            child = load(conn, ref_seq)
            new = resolve(conn, child)
            if new != child.series_id:
                _set(conn, child, new)
                pending.append(child.message_id)


def _set(conn: sqlite3.Connection, node: Node, series_id: str | None) -> None:
    if series_id != node.series_id:
        conn.execute("UPDATE messages SET series_id = ? WHERE seq = ?", (series_id, node.seq))
