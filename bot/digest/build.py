"""Digests: what happened on the list in an archive range, as FORMAT.md says.

`build()` reads the index (never the archive: the index already holds every
commit message) and returns plain data; `render()` puts it through the Jinja2
template `templates/digest.txt.j2`. Keeping the two apart lets one digest be
rendered once and mailed to every subscriber.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

from bot.digest import query as querymod
from bot.digest.ranges import Range

TEMPLATE = "digest.txt.j2"


@dataclass(frozen=True)
class SeriesLine:
    subject: str
    submitter: str
    summary: str


@dataclass(frozen=True)
class Entry:
    subject: str
    duplicate: bool
    title: str = ""
    author: str = ""
    body: str = ""


@dataclass(frozen=True)
class Digest:
    """Everything a digest shows, ready to render."""

    list_title: str
    start: str
    end: str
    messages: int
    top: int
    domains: list[tuple[int, str]] = field(default_factory=list)
    people: list[tuple[int, str]] = field(default_factory=list)
    series: list[SeriesLine] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)
    query: str = ""
    """The topic query it was filtered by (normalised), or ''."""

    @property
    def subject(self) -> str:
        text = f"{self.list_title} mailing list update from {self.start} to {self.end}"
        return f"{text} [{self.query}]" if self.query else text


def person(name: str, addr: str) -> str:
    """`Name <addr>`, or the bare address when there is no name."""
    return f"{name} <{addr}>" if name else addr


def _ranked(counts: Counter[str], shown: dict[str, str], top: int) -> list[tuple[int, str]]:
    """Count descending, ties by the shown text, case-insensitively."""
    order = sorted(counts, key=lambda k: (-counts[k], shown[k].casefold(), shown[k]))
    return [(counts[k], shown[k]) for k in order[:top]]


def statistics(conn: sqlite3.Connection, rng: Range, top: int, only: Collection[int] | None = None):
    """The domain and contributor tables ("Based on Email Body").

    `only`, when given, holds the archive positions a filtered digest counts.
    """
    people: Counter[str] = Counter()
    people_shown: dict[str, str] = {}
    domains: Counter[str] = Counter()
    total = 0
    for seq, name, addr in conn.execute(
        "SELECT seq, author_name, author_addr FROM messages"
        " WHERE seq > ? AND seq <= ? AND NOT redelivered ORDER BY seq",
        (rng.start_seq, rng.end_seq),
    ):
        if only is not None and seq not in only:
            continue
        total += 1
        if "@" not in addr:
            continue
        key = addr.lower()
        people[key] += 1
        people_shown[key] = person(name, addr)
        domains[key.rpartition("@")[2]] += 1
    domain_names = {d: d for d in domains}
    return (
        total,
        _ranked(domains, domain_names, top),
        _ranked(people, people_shown, top),
    )


def patch_list(
    conn: sqlite3.Connection, rng: Range, only: Collection[int] | None = None
) -> list[SeriesLine]:
    """One line per series with a patch or cover letter in the range (in `only`)."""
    rows = conn.execute(
        """SELECT series_id, kind, counter, total, subject, from_name, from_addr, is_dup, seq
             FROM messages
            WHERE seq > ? AND seq <= ? AND series_id IS NOT NULL
              AND kind IN ('patch', 'cover')
            ORDER BY seq""",
        (rng.start_seq, rng.end_seq),
    ).fetchall()
    replies = dict(
        conn.execute(
            """SELECT series_id, COUNT(*) FROM messages
            WHERE seq > ? AND seq <= ? AND kind = 'reply' AND series_id IS NOT NULL
            GROUP BY series_id""",
            (rng.start_seq, rng.end_seq),
        ).fetchall()
    )
    grouped: dict[str, list[tuple]] = {}
    if only is not None:
        rows = [row for row in rows if row[-1] in only]
    for row in rows:
        grouped.setdefault(row[0], []).append(row)
    lines = []
    for series_id, members in grouped.items():
        if _resent(conn, series_id):
            continue  # a duplicate adds nothing to the patch list
        # A copy of a cover letter (sent twice) still is the series' cover
        # letter when it is the one in the range.
        covers = [m for m in members if m[2] == 0 and not m[7]] or [m for m in members if m[2] == 0]
        patches = [m for m in members if m[2] != 0]
        shown = covers[0] if covers else min(patches, key=lambda m: m[2] or 1)
        numbers = {m[2] or 1 for m in patches}
        total = max((m[3] or 1 for m in members), default=1)
        summary = f"{len(numbers)}/{total} patches"
        if covers:
            summary += ", cover letter"
        if replies.get(series_id):
            summary += f", {replies[series_id]} replies"
        lines.append(SeriesLine(shown[4], person(shown[5], shown[6]), summary))
    return lines


def _resent(conn: sqlite3.Connection, series_id: str) -> bool:
    """True when every entry of a series duplicates an earlier one (a resend)."""
    entries_, new = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(NOT is_dup), 0) FROM messages"
        " WHERE series_id = ? AND is_entry",
        (series_id,),
    ).fetchone()
    return entries_ > 0 and new == 0


def entries(
    conn: sqlite3.Connection, rng: Range, only: Collection[int] | None = None
) -> list[Entry]:
    """Cover letters, first patches, single patches and pulls, in archive order."""
    out = []
    for (
        seq,
        subject,
        title,
        is_dup,
        from_name,
        from_addr,
        author_name,
        author_addr,
        body,
    ) in conn.execute(
        """SELECT seq, subject, title, is_dup, from_name, from_addr, author_name,
                  author_addr, body
             FROM messages WHERE seq > ? AND seq <= ? AND is_entry ORDER BY seq""",
        (rng.start_seq, rng.end_seq),
    ):
        if only is not None and seq not in only:
            continue
        if is_dup:
            out.append(Entry(subject=subject, duplicate=True))
            continue
        author = person(author_name, author_addr)
        if author_addr.lower() != from_addr.lower():
            author += f" (sent by {person(from_name, from_addr)})"
        out.append(Entry(subject=subject, duplicate=False, title=title, author=author, body=body))
    return out


def build(
    conn: sqlite3.Connection,
    rng: Range,
    list_title: str = "KVM",
    top: int = 15,
    abbrev: int = 9,
    query: str | None = None,
) -> Digest:
    """The digest of an archive range, restricted to a topic `query` if given.

    Unfiltered, every message counts; filtered, FORMAT.md's "Filtered
    digests" decides (bot/digest/query.py). A malformed query raises QueryError.
    """
    shown = counted = None
    if query:
        sel = querymod.select(conn, rng.start_seq, rng.end_seq, querymod.parse(query))
        shown, counted = sel.shown, sel.counted
    total, domains, people = statistics(conn, rng, top, counted)
    start, end = rng.abbrev(abbrev)
    return Digest(
        list_title=list_title,
        start=start,
        end=end,
        messages=total,
        top=top,
        domains=domains,
        people=people,
        series=patch_list(conn, rng, shown),
        entries=entries(conn, rng, shown),
        query=querymod.normal(query) if query else "",
    )


def environment(extra_dir: str | Path | None = None) -> jinja2.Environment:
    """The Jinja2 environment for plain-text mail templates.

    Templates come from the configured directory first, then the shipped
    `templates/` (inside the package when installed, beside it in a checkout).
    User text is only ever passed as data, never compiled as a template.
    """
    package = Path(__file__).resolve().parents[1]
    dirs = [
        str(d)
        for d in (extra_dir, package / "templates", package.parent / "templates")
        if d and Path(d).is_dir()
    ]
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(dirs),
        autoescape=False,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render(digest: Digest, env: jinja2.Environment) -> str:
    """The digest's plain-text body."""
    return env.get_template(TEMPLATE).render(d=digest)
