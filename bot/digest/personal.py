""" "For you": what in a digest's range needs one reader (FORMAT.md, "For you").

Three groups, each in the reader's own terms:

- Addressed to you: series in the range whose cover letter or patches name
  the reader in To or Cc;
- Waiting for your answer: earlier series addressed to the reader that got
  replies in the range, none of them (nor any before) from the reader;
- Your series: the reader's own series (header From) with news in the
  range: replies (and so trailers and "applied"), or a newer version.

A reader is a canonical address (bot/desk/addresses.py limit_key, as the
command limits count): `Jane Doe <Jane+kvm@Example.ORG>` in a Cc line, a
reply from `jane@example.org` and the subscriber jane@example.org are one
person; a display name never counts (`"jane@example.org" <john@...>` is
John). The index keeps every patch and cover letter's recipients that way
(the `recipients` table).

Cost: everything is computed once per range, for all readers at once (a
`Pool`, a handful of indexed queries); one reader's section is then a few
dictionary look-ups and a small template, so a digest still renders once per
(schedule, topic, style) and only this block is per reader. The lines are
the full style's patch-list lines (facts and links), whatever style or
topic the reader's digest has: what is addressed to you is for you.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field

import jinja2

from bot.desk.addresses import from_header, limit_key, normal
from bot.digest import build, versions, waiting
from bot.digest.ranges import Range

TEMPLATE = "for-you.txt.j2"
GROUPS = ("Addressed to you", "Waiting for your answer", "Your series")


@dataclass
class Pool:
    """Every reader's "For you" of one range, ready to be picked by address."""

    lines: dict[str, build.SeriesLine] = field(default_factory=dict)
    addressed: dict[str, list[str]] = field(default_factory=dict)
    """Reader key -> series in the range naming it in To/Cc (patch-list order)."""
    answer: dict[str, list[str]] = field(default_factory=dict)
    """Reader key -> earlier series addressed to it, replied to, not by it."""
    own: dict[str, list[str]] = field(default_factory=dict)
    """Reader key -> its own series with news in the range."""

    def groups(self, key: str) -> list[tuple[str, list[build.SeriesLine]]]:
        """The non-empty groups of the reader with canonical address `key`."""
        found = (self.addressed.get(key, ()), self.answer.get(key, ()), self.own.get(key, ()))
        return [
            (title, [self.lines[s] for s in ids])
            for title, ids in zip(GROUPS, found, strict=True)
            if ids
        ]


def reader(address: str) -> tuple[str, str] | None:
    """(the address as shown, its canonical key) of an address as a user
    writes it (`Jane <jane@x.org>` too), or None when it is not an address."""
    found = from_header(address) if "<" in address else normal(address)
    return (found, limit_key(found)) if found else None


def pool(
    conn: sqlite3.Connection,
    rng: Range,
    archive_url: str = "",
    digest: build.Digest | None = None,
) -> Pool:
    """What every reader's "For you" of `rng` is picked from.

    `digest`, when given, must be the range's unfiltered full digest: its
    patch list and discussion are the lines (else they are built here).
    """
    if digest is None or digest.query:
        digest = build.build(conn, rng, style="full", archive_url=archive_url)
    out = Pool()
    listed = [s.series_id for s in digest.series]
    earlier = [s.series_id for s in digest.discussion]
    out.lines.update((s.series_id, s) for s in digest.series)
    out.lines.update((s.series_id, s) for s in digest.discussion)
    to = recipients(conn, listed + earlier, rng.end_seq)
    for series_id in listed:
        for key in to.get(series_id, ()):
            out.addressed.setdefault(key, []).append(series_id)
    repliers = senders(conn, earlier, rng.end_seq)
    for series_id in earlier:
        for key in to.get(series_id, ()):
            if key not in repliers.get(series_id, ()):
                out.answer.setdefault(key, []).append(series_id)
    _own(conn, rng, out, listed, earlier, archive_url)
    return out


def _own(
    conn: sqlite3.Connection,
    rng: Range,
    out: Pool,
    listed: list[str],
    earlier: list[str],
    archive_url: str,
) -> None:
    """Each submitter's series with news: replies in the range (every
    discussion series has them), or a newer version that arrived in it."""
    replied = build.reply_counts(conn, rng)
    # Patch-list series are versioned in the patch list: a newer version in
    # the range shows there as "superseded by".
    news = [s for s in listed if replied.get(s) or "superseded by" in out.lines[s].facts]
    news += earlier
    superseded = newly_superseded(conn, rng, set(listed) | set(earlier), archive_url)
    out.lines.update((s.series_id, s) for s in superseded)
    news += [s.series_id for s in superseded]
    for series_id in news:
        key = waiting.canonical(out.lines[series_id].submitter_key)
        out.own.setdefault(key, []).append(series_id)


def recipients(
    conn: sqlite3.Connection, series_ids: list[str], end_seq: int
) -> dict[str, set[str]]:
    """Series id -> canonical To/Cc addresses of its patches and cover letter."""
    out: dict[str, set[str]] = {}
    for series_id, key in conn.execute(
        """SELECT m.series_id, b.key
             FROM messages m INDEXED BY messages_series_patchy
             JOIN recipients r ON r.seq = m.seq JOIN mailboxes b ON b.id = r.mailbox
            WHERE m.series_id IN (SELECT value FROM json_each(?))
              AND m.kind IN ('patch', 'cover') AND m.seq <= ?""",
        (json.dumps(sorted(set(series_ids))), end_seq),
    ):
        out.setdefault(series_id, set()).add(key)
    return out


def senders(conn: sqlite3.Connection, series_ids: list[str], end_seq: int) -> dict[str, set[str]]:
    """Series id -> canonical senders of its replies up to `end_seq`."""
    out: dict[str, set[str]] = {}
    for series_id, addr in conn.execute(
        """SELECT series_id, from_addr FROM messages INDEXED BY messages_series_replies
            WHERE series_id IN (SELECT value FROM json_each(?))
              AND kind = 'reply' AND seq <= ?""",
        (json.dumps(sorted(set(series_ids))), end_seq),
    ):
        out.setdefault(series_id, set()).add(waiting.canonical(addr))
    return out


def newly_superseded(
    conn: sqlite3.Connection, rng: Range, skip: set[str], archive_url: str
) -> list[build.SeriesLine]:
    """Series posted before the range whose newer version arrived in it, as
    lines (`posted DATE`, then trailers; superseded by vN; applied).

    The candidates are the earlier series of the same work as a cover letter
    or first patch in the range (the `works` keys); versions.relations()
    decides, at the start and at the end of the range: news is a relation
    that became "superseded by" in between.
    """
    keys = conn.execute(
        """SELECT from_key, title_key, change_id FROM works WHERE seq > ? AND seq <= ?""",
        (rng.start_seq, rng.end_seq),
    ).fetchall()
    if not keys:
        return []
    earlier = versions.same_work(
        conn,
        {(fk, tk) for fk, tk, _ in keys},
        {cid for _, _, cid in keys if cid},
        rng.start_seq,
    )
    found = sorted(earlier - skip)
    if not found:
        return []
    shown = waiting.posted(conn, found, rng.start_seq)
    mids = {s: p.message_id for s, p in shown.items()}
    before = versions.relations(conn, mids, rng.start_seq)
    after = versions.relations(conn, mids, rng.end_seq)
    lines = [
        build.SeriesLine(
            p.subject,
            build.person(p.name, p.addr),
            f"posted {versions.day(p.posted)}",
            series_id=s,
            message_id=p.message_id,
            submitter_key=p.addr.lower(),
        )
        for s, p in shown.items()
        if after.get(s, "").startswith("superseded by") and after.get(s) != before.get(s)
    ]
    lines.sort(key=lambda line: line.subject)
    return build.with_facts(conn, lines, rng.end_seq, archive_url) if lines else []


def render(
    groups: list[tuple[str, list[build.SeriesLine]]], reader: str, env: jinja2.Environment
) -> str:
    """The reader's section, ending in the blank line before the statistics;
    '' when every group is empty (the section is left out)."""
    if not groups:
        return ""
    return env.get_template(TEMPLATE).render(groups=groups, reader=reader)


def sections(pool_: Pool, readers: Iterable[str], env: jinja2.Environment) -> dict[str, str]:
    """Address -> rendered section, for the readers that have one."""
    out = {}
    for address in readers:
        found = reader(address)
        text = render(pool_.groups(found[1]), address, env) if found else ""
        if text:
            out[address] = text
    return out
