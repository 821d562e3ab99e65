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

Conventions from real mail (and patchwork's own test suite):

- A patch that answers a cover letter of the same sender belongs to it even
  when the patch's subject omits the version or carries a lower one
  (`[PATCH 1/4]` under `[PATCH net-next v3 0/4]`), has no counter (`[PATCH
  v4]` under `[PATCH v4 0/1]`: an unnumbered patch is 1/1), or carries
  another version while the cover letter has no patches of its own version
  (`[Patch v3 1/3]` under `[Patch v2 0/3]`). A higher version under a cover
  letter that has its own patches is a new series sent in reply to the old.
- A v2 cover letter and its v2 patches all sent in reply to the v1 cover
  letter (`git send-email --in-reply-to=<v1>` for the whole set): the
  patches' parent is v1, but their own cover letter is their sibling; they
  join it.
- A patch joins the patch it answers only when both are numbered, of one
  sender, version and total: four `[PATCH 1/2]` answering one `[PATCH]`
  are four series, each named by its own 1/2.
- A cover letter sent twice within the hour (same sender and subject) names
  one series: the patches may answer either copy.
- A duplicate (a copy of an earlier patch or cover letter, see index.py)
  belongs to the series of its original, and so do the replies it gets and
  the patches that answer it.

Whenever a message arrives, every message that referred to it (and, for a
cover letter, its twins and siblings; for any message, its copies) is
re-resolved, so the order mail arrives in never changes the result. A
re-delivery (the same message again, see index.py) belongs to no series.
"""

from __future__ import annotations

import sqlite3

from bot.record import Record

NO_REFS_WINDOW = 3600
"""Seconds within which un-threaded patches of one sender form one series."""
_MAX_DEPTH = 500


class Node(Record):
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
    redelivered: int = 0
    dup_of: int | None = None
    """The archive position of the message this one is a copy of (index.py)."""

    @property
    def is_patchy(self) -> bool:
        return self.kind in ("patch", "cover")


_COLUMNS = (
    "seq, message_id, kind, version, counter, total, from_key, parent_id, "
    "base_subject, COALESCE(date, received), series_id, redelivered, dup_of"
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


def _same_series_patch(child: Node, parent: Node) -> bool:
    """True when `parent` is an earlier patch of the series `child` is in.

    Both numbered: a numbered patch answering an unnumbered one (`[PATCH
    1/2]` under `[PATCH]`) starts a series of its own.
    """
    return (
        parent.kind == "patch"
        and parent.total is not None
        and parent.version == child.version
        and parent.from_key == child.from_key
        and parent.total == child.total
    )


def _cover_takes(conn: sqlite3.Connection, child: Node, cover: Node) -> bool:
    """True when a patch answering `cover` belongs to the cover's series.

    Same sender, and the total agrees (an unnumbered patch is 1/1) unless
    the version does too; the version may be left out or lower, or differ
    when the cover letter has no patches of its own version. A higher
    version answering a cover letter that has its own patches is a new
    series sent in reply to the old one.
    """
    if cover.kind != "cover" or cover.from_key != child.from_key:
        return False
    if child.total is None and cover.total != 1:
        return False  # an unnumbered patch is 1/1
    if cover.version == child.version:
        return True
    if cover.total != (child.total or 1):
        return False
    return child.version < cover.version or not _has_own_patches(conn, cover)


def _has_own_patches(conn: sqlite3.Connection, cover: Node) -> bool:
    """True when patches of the cover letter's own version and sender answer it."""
    return (
        conn.execute(
            """SELECT 1 FROM refs r JOIN messages m ON m.seq = r.seq
                WHERE r.ref = ? AND m.kind = 'patch' AND m.from_key = ? AND m.version = ?
                  AND NOT m.redelivered AND m.dup_of IS NULL LIMIT 1""",
            (cover.message_id, cover.from_key, cover.version),
        ).fetchone()
        is not None
    )


def cover_series(conn: sqlite3.Connection, cover: Node) -> str:
    """The series id of a cover letter: the earliest of its twins names it.

    A cover letter sent twice (same sender, same subject, within the hour)
    is one series, so patches answering either copy land together.
    """
    if cover.dup_of is not None:
        original = _series_at(conn, cover.dup_of)
        if original is not None:
            return original
    root = cover.message_id
    if cover.when is not None:
        # The cover letter itself is among the rows: the earliest copy wins.
        # (`kind IN (...)` repeats the partial index's condition so SQLite uses it.)
        row = conn.execute(
            """SELECT message_id FROM messages
                WHERE kind IN ('patch', 'cover') AND kind = 'cover'
                  AND from_key = ? AND base_subject = ?
                  AND NOT redelivered AND ABS(COALESCE(date, received) - ?) <= ?
                ORDER BY COALESCE(date, received), message_id LIMIT 1""",
            (cover.from_key, cover.base_subject, cover.when, NO_REFS_WINDOW),
        ).fetchone()
        if row is not None:
            root = row[0]
    return series_key(root, cover.version, cover.from_key)


def _sibling_cover(conn: sqlite3.Connection, node: Node, parent_id: str) -> str | None:
    """The series of a cover letter of this patch's own that shares its parent."""
    row = conn.execute(
        f"""SELECT {_COLUMNS} FROM messages
             WHERE parent_id = ? AND kind = 'cover' AND from_key = ? AND version = ?
               AND (total = ? OR total IS NULL) AND NOT redelivered AND seq != ?
             ORDER BY COALESCE(date, received), message_id LIMIT 1""",
        (parent_id, node.from_key, node.version, node.total, node.seq),
    ).fetchone()
    return cover_series(conn, Node(*row)) if row else None


def resolve_patch(conn: sqlite3.Connection, node: Node) -> str:
    """The series id of a patch or cover letter.

    Numbered patches climb their reply chain while it holds patches of the
    same series; the message the top one answers names the series. That is
    the cover letter, or whatever else the patches were sent in reply to (a
    pull request, a v1, a discussion) or a message that has not arrived yet;
    unless a cover letter of the patches' own sits beside them there. A top
    patch answering a patch of another series names its own series.
    """
    key = lambda root: series_key(root, node.version, node.from_key)  # noqa: E731
    if node.dup_of is not None:
        original = _series_at(conn, node.dup_of)
        if original is not None:
            return original
    if node.kind == "cover":
        return cover_series(conn, node)
    if node.total is None:
        # An unnumbered patch is its own series, unless it is the 1/1 of a
        # cover letter it answers.
        parent = by_message_id(conn, node.parent_id) if node.parent_id else None
        if parent is not None and _cover_takes(conn, node, parent):
            return cover_series(conn, parent)
        return key(node.message_id)
    cur = node
    for _ in range(_MAX_DEPTH):
        if cur.parent_id is None or cur.parent_id == cur.message_id:
            break
        parent = by_message_id(conn, cur.parent_id)
        if parent is not None and _same_series_patch(node, parent):
            cur = parent
            continue
        same_version = parent is not None and parent.version == node.version
        if same_version and _cover_takes(conn, node, parent):
            return cover_series(conn, parent)
        sibling = _sibling_cover(conn, node, cur.parent_id)
        if sibling:
            return sibling
        if parent is not None and _cover_takes(conn, node, parent):
            return cover_series(conn, parent)
        if parent is not None and parent.kind == "patch":
            return key(cur.message_id)
        return key(cur.parent_id)
    found = _unthreaded_series(conn, node) if (node.total or 0) > 1 else None
    return found or key(cur.message_id)


def _series_at(conn: sqlite3.Connection, seq: int) -> str | None:
    """The series of the message at an archive position (a copy's original)."""
    row = conn.execute("SELECT series_id FROM messages WHERE seq = ?", (seq,)).fetchone()
    return row[0] if row else None


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
    """The series id of any message (none for a re-delivery)."""
    if node.redelivered:
        return None
    if node.is_patchy:
        return resolve_patch(conn, node)
    if node.kind == "reply":
        return resolve_reply(conn, node)
    return None


def place(conn: sqlite3.Connection, seq: int, node: Node | None = None) -> None:
    """Resolve a newly indexed message, then everything that depends on it.

    `node` is its row as just inserted, when the caller has it: one
    SELECT less for each message an import indexes.
    """
    if node is None:
        node = load(conn, seq)
    _set(conn, node, resolve(conn, node))
    pending = [node]
    seen = {seq}
    while pending:
        for dep_seq in _dependents(conn, pending.pop()):
            if dep_seq in seen:
                continue
            seen.add(dep_seq)
            dep = load(conn, dep_seq)
            new = resolve(conn, dep)
            if new != dep.series_id:
                _set(conn, dep, new)
                pending.append(dep)


def _dependents(conn: sqlite3.Connection, node: Node) -> list[int]:
    """Messages whose series may change when `node` arrives or moves.

    Those that refer to it; for a cover letter also its twins (a copy sent
    within the hour) and the patches beside it (answering the same parent).
    """
    seqs = [
        r[0]
        for r in conn.execute("SELECT DISTINCT seq FROM refs WHERE ref = ?", (node.message_id,))
    ]
    # Its copies follow it into its series.
    seqs += [r[0] for r in conn.execute("SELECT seq FROM messages WHERE dup_of = ?", (node.seq,))]
    if node.kind == "patch" and node.parent_id:
        # Patches of another version beside it under a cover letter: whether
        # they join the cover depends on its having patches of its own version.
        seqs += [
            r[0]
            for r in conn.execute(
                """SELECT seq FROM messages WHERE parent_id = ? AND from_key = ?
                      AND kind = 'patch' AND version != ?""",
                (node.parent_id, node.from_key, node.version),
            )
        ]
    if node.kind == "cover":
        seqs += [
            r[0]
            for r in conn.execute(
                """SELECT seq FROM messages
                    WHERE kind IN ('patch', 'cover') AND kind = 'cover'
                      AND from_key = ? AND base_subject = ?""",
                (node.from_key, node.base_subject),
            )
        ]
        if node.parent_id:
            seqs += [
                r[0]
                for r in conn.execute(
                    """SELECT seq FROM messages WHERE parent_id = ? AND from_key = ?
                          AND kind IN ('patch', 'cover')""",
                    (node.parent_id, node.from_key),
                )
            ]
    return seqs


def _set(conn: sqlite3.Connection, node: Node, series_id: str | None) -> None:
    if series_id != node.series_id:
        conn.execute("UPDATE messages SET series_id = ? WHERE seq = ?", (series_id, node.seq))
