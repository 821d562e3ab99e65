"""Digests: what happened on the list in an archive range, as FORMAT.md says.

`build()` reads the index (never the archive: the index already holds every
commit message) and returns plain data; `render()` puts it through the Jinja2
template `templates/digest.txt.j2`. Keeping the two apart lets one digest be
rendered once and mailed to every subscriber.

Three styles (FORMAT.md, "Three styles"): `classic` is the documented
layout line for line; `full` (the default) adds lore links, review trailers
with their givers' names, versions, "applied by" and the discussion on
earlier series; `brief` is full without the commit messages. The added facts
are read from tables the index fills as mail arrives (trailers, applied,
works), joined to the series at build time, so a full digest costs a few
indexed look-ups per series more than a classic one.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections import Counter
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

import jinja2

from bot.config import STYLES
from bot.digest import query as querymod
from bot.digest import versions, waiting
from bot.digest.ranges import Range
from bot.record import Record, field, replace

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

TEMPLATE = "digest.txt.j2"
TRAILER_ORDER = ("Reviewed-by", "Acked-by", "Tested-by")
NAMES_SHOWN = 3
"""Trailer givers named per kind (FORMAT.md); more are counted as `+N`."""
# public-inbox's mid_escape: RFC 3986 path characters stay, the rest is
# percent-encoded as UTF-8 ("/" too, so an id never adds a path level).
_MID_SAFE = "!$&'()*+,;=:@"


class SeriesLine(Record):
    subject: str
    submitter: str
    summary: str
    facts: str = ""
    """Full style: trailers; version; applied (empty when nothing to say)."""
    link: str = ""
    series_id: str = ""
    message_id: str = ""
    """The Message-ID of the message whose subject is shown."""
    submitter_key: str = ""


class Entry(Record):
    subject: str
    duplicate: bool
    title: str = ""
    author: str = ""
    body: str = ""
    link: str = ""
    message_id: str = ""


class Digest(Record):
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
    discussion: list[SeriesLine] = field(default_factory=list)
    """Full style: series posted before the range that got replies in it."""
    commit_messages: bool = True
    """False in the brief style: no "Patch Commit Messages" section."""
    waiting: list[SeriesLine] = field(default_factory=list)
    """Full and brief styles: series that turned `wait_days` old in the range, unanswered."""
    wait_days: int = 0
    style: str = "full"

    @property
    def subject(self) -> str:
        text = f"{self.list_title} mailing list update from {self.start} to {self.end}"
        return f"{text} [{self.query}]" if self.query else text


def person(name: str, addr: str) -> str:
    """`Name <addr>`, or the bare address when there is no name."""
    return f"{name} <{addr}>" if name else addr


def each(items: Iterable[T], make: Callable[[T], R | None], name: Callable[[T], str]) -> list[R]:
    """`make(item)` for every item, Nones dropped; an item that breaks it is left out.

    One series or message whose data no line can be made of (a bug meeting
    data it did not foresee) must not stop the digest: it is logged with
    its traceback and the rest goes out. The schedule moves on as usual.
    """
    out = []
    for item in items:
        try:
            made = make(item)
        except Exception:
            log.exception("left %s out of the digest: it could not be shown", name(item))
            continue
        if made is not None:
            out.append(made)
    return out


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


def reply_counts(conn: sqlite3.Connection, rng: Range) -> dict[str, int]:
    """Replies in the range, per series (the messages_replies index answers it)."""
    return dict(
        conn.execute(
            """SELECT series_id, COUNT(*) FROM messages
                WHERE seq > ? AND seq <= ? AND kind = 'reply' AND series_id IS NOT NULL
                GROUP BY series_id""",
            (rng.start_seq, rng.end_seq),
        ).fetchall()
    )


def patch_list(
    conn: sqlite3.Connection, rng: Range, only: Collection[int] | None = None
) -> list[SeriesLine]:
    """One line per series with a patch or cover letter in the range (in `only`)."""
    rows = conn.execute(
        """SELECT series_id, kind, counter, total, subject, from_name, from_addr, is_dup,
                  message_id, seq
             FROM messages
            WHERE seq > ? AND seq <= ? AND series_id IS NOT NULL
              AND kind IN ('patch', 'cover')
            ORDER BY seq""",
        (rng.start_seq, rng.end_seq),
    ).fetchall()
    counts = reply_counts(conn, rng)
    grouped: dict[str, list[tuple]] = {}
    if only is not None:
        rows = [row for row in rows if row[-1] in only]
    for row in rows:
        grouped.setdefault(row[0], []).append(row)
    return each(
        grouped.items(),
        lambda item: _series_line(item[0], item[1], counts.get(item[0], 0)),
        lambda item: f"series {item[0]}",
    )


def _series_line(series_id: str, members: list[tuple], count: int) -> SeriesLine | None:
    """The patch-list line of one series from its patches and cover letters in the range.

    A duplicate (a resent copy) adds nothing: a series whose messages in the
    range are all copies has no line, and otherwise it shows its cover
    letter (a copy of it too: a cover letter sent twice, the patches
    answering the second) or its lowest-numbered patch that is no copy.
    `k` counts the distinct patches that are no copies, and never exceeds n.
    """
    new = [m for m in members if not m[7]]
    if not new:
        return None
    covers = [m for m in new if m[2] == 0] or [m for m in members if m[2] == 0]
    patches = [m for m in new if m[2] != 0]
    shown = covers[0] if covers else min(patches, key=lambda m: (m[2] or 1, m[-1]))
    total = max((m[3] or 1 for m in members), default=1)
    k = min(len({m[2] or 1 for m in patches}), total)
    summary = f"{k}/{total} patches"
    if covers:
        summary += ", cover letter"
    if count:
        summary += f", {replies(count)}"
    return SeriesLine(
        shown[4],
        person(shown[5], shown[6]),
        summary,
        series_id=series_id,
        message_id=shown[8],
        submitter_key=shown[6].lower(),
    )


def entries(
    conn: sqlite3.Connection, rng: Range, only: Collection[int] | None = None
) -> list[Entry]:
    """Cover letters, first patches, single patches and pulls, in archive order."""
    rows = conn.execute(
        """SELECT seq, subject, title, is_dup, from_name, from_addr, author_name,
                  author_addr, body, message_id
             FROM messages WHERE seq > ? AND seq <= ? AND is_entry ORDER BY seq""",
        (rng.start_seq, rng.end_seq),
    )
    if only is not None:
        rows = (row for row in rows if row[0] in only)
    return each(rows, _entry, lambda row: f"message {row[9]}")


def _entry(row: tuple) -> Entry:
    _seq, subject, title, is_dup, from_name, from_addr, author_name, author_addr, body, mid = row
    if is_dup:
        return Entry(subject=subject, duplicate=True)
    author = person(author_name, author_addr)
    if author_addr.lower() != from_addr.lower():
        author += f" (sent by {person(from_name, from_addr)})"
    return Entry(
        subject=subject,
        duplicate=False,
        title=title,
        author=author,
        body=body,
        message_id=mid,
    )


def link(archive_url: str, message_id: str) -> str:
    """The archive's page for a message, as lore spells it ("" without an archive)."""
    if not archive_url or not message_id:
        return ""
    return f"{archive_url.rstrip('/')}/{quote(message_id, safe=_MID_SAFE)}/"


def _in_json(ids: list[str]) -> str:
    """Series ids as one JSON parameter, for `IN (SELECT value FROM json_each(?))`."""
    return json.dumps(sorted(set(ids)))


def trailer_counts(conn: sqlite3.Connection, series_ids: list[str], end_seq: int) -> dict[str, str]:
    """`2 Reviewed-by (A, B), 1 Tested-by (C)` per series: distinct givers per
    kind in its replies, named in the order their trailers arrived."""
    givers: dict[str, dict[str, dict[str, str]]] = {}
    for series_id, kind, who_key, who_name in conn.execute(
        """SELECT m.series_id, t.kind, t.who_key, t.who_name
             FROM messages m JOIN trailers t ON t.seq = m.seq
            WHERE m.series_id IN (SELECT value FROM json_each(?))
              AND m.kind = 'reply' AND m.seq <= ?
            ORDER BY m.seq""",
        (_in_json(series_ids), end_seq),
    ):
        names = givers.setdefault(series_id, {}).setdefault(kind, {})
        names.setdefault(who_key, who_name or who_key)  # the first trailer names them
    return {
        sid: ", ".join(named(k, list(c[k].values())) for k in TRAILER_ORDER if c.get(k))
        for sid, c in givers.items()
    }


def named(kind: str, names: list[str]) -> str:
    """`2 Reviewed-by (A, B)`; past three names, `5 Reviewed-by (A, B, C +2)`."""
    shown = ", ".join(names[:NAMES_SHOWN])
    more = f" +{len(names) - NAMES_SHOWN}" if len(names) > NAMES_SHOWN else ""
    return f"{len(names)} {kind} ({shown}{more})"


def replies(n: int) -> str:
    """`1 reply`, `2 replies`."""
    return f"{n} reply" if n == 1 else f"{n} replies"


def applied_by(
    conn: sqlite3.Connection, submitters: dict[str, str], end_seq: int
) -> dict[str, str]:
    """`applied by <Name> [to <where>]` per series: the first reply by someone else that says so.

    `submitters` maps each series id to its submitter's lower-cased address.
    The name is the one the note gives (the patchwork bot names the
    maintainer), else its sender's; `where` is the tree or branch it names.
    """
    out: dict[str, str] = {}
    for series_id, from_key, name, addr, who, dest in conn.execute(
        """SELECT m.series_id, m.from_key, m.from_name, m.from_addr, a.who_name, a.dest
             FROM messages m JOIN applied a ON a.seq = m.seq
            WHERE m.series_id IN (SELECT value FROM json_each(?))
              AND m.kind = 'reply' AND m.seq <= ?
            ORDER BY m.seq""",
        (_in_json(list(submitters)), end_seq),
    ):
        if series_id not in out and from_key != submitters[series_id]:
            out[series_id] = applied_text(who or name or addr, dest)
    return out


def applied_text(name: str, dest: str) -> str:
    """`applied by Marc Zyngier`, `applied by Jakub Kicinski to netdev/net.git (main)`."""
    return f"applied by {name} to {dest}" if dest else f"applied by {name}"


def with_facts(
    conn: sqlite3.Connection,
    lines: list[SeriesLine],
    end_seq: int,
    archive_url: str,
    versioned: set[str] | None = None,
) -> list[SeriesLine]:
    """The full style's extra lines: trailers; version; applied, and the link.

    Versions are said only for the series in `versioned` (all when None):
    the discussion section leaves them out. One call for both sections
    keeps a digest's extra cost to a handful of indexed queries.
    """
    ids = [s.series_id for s in lines]
    reviews = trailer_counts(conn, ids, end_seq)
    applied = applied_by(conn, {s.series_id: s.submitter_key for s in lines}, end_seq)
    shown = {
        s.series_id: s.message_id for s in lines if versioned is None or s.series_id in versioned
    }
    versioned_text = versions.relations(conn, shown, end_seq) if shown else {}

    def full(s: SeriesLine) -> SeriesLine:
        parts = [reviews.get(s.series_id, ""), versioned_text.get(s.series_id, "")]
        parts.append(applied.get(s.series_id, ""))
        facts = "; ".join(p for p in parts if p)
        return replace(s, facts=facts, link=link(archive_url, s.message_id))

    return each(lines, full, lambda s: f"series {s.series_id}")


def discussion(conn: sqlite3.Connection, rng: Range, listed: set[str]) -> list[SeriesLine]:
    """Series posted before the range that got replies in it, by first reply.

    Without facts or links: build() adds them together with the patch list's.
    """
    replied = [
        (series_id, count)
        for series_id, count in conn.execute(
            """SELECT series_id, COUNT(*) FROM messages
                WHERE seq > ? AND seq <= ? AND kind = 'reply' AND series_id IS NOT NULL
                GROUP BY series_id ORDER BY MIN(seq)""",
            (rng.start_seq, rng.end_seq),
        )
        if series_id not in listed
    ]
    # Each series as the patch list showed it (its cover letter, else its
    # lowest patch, posted before the range) and when it was first posted.
    shown: dict[str, tuple] = {}
    posted: dict[str, int] = {}
    for series_id, key, when, subject, name, addr, message_id in conn.execute(
        """SELECT series_id, COALESCE(counter, 1) * 1000000000 + seq,
                  COALESCE(date, received), subject, from_name, from_addr, message_id
             FROM messages INDEXED BY messages_series_patchy
            WHERE series_id IN (SELECT value FROM json_each(?))
              AND kind IN ('patch', 'cover') AND seq <= ? AND NOT is_dup""",
        (_in_json([sid for sid, _ in replied]), rng.start_seq),
    ):
        if when is not None:
            posted[series_id] = min(when, posted.get(series_id, when))
        if series_id not in shown or key < shown[series_id][0]:
            shown[series_id] = (key, subject, name, addr, message_id)

    def line(item: tuple[str, int]) -> SeriesLine | None:
        series_id, count = item
        if series_id not in shown:
            return None
        _, subject, name, addr, message_id = shown[series_id]
        return SeriesLine(
            subject,
            person(name, addr),
            f"posted {versions.day(posted.get(series_id))}, {replies(count)}",
            series_id=series_id,
            message_id=message_id,
            submitter_key=addr.lower(),
        )

    return each(replied, line, lambda item: f"series {item[0]}")


# -- Waiting for review (FORMAT.md; which series wait: waiting.py) -----------


def waiting_section(
    conn: sqlite3.Connection,
    rng: Range,
    wait_days: int,
    archive_url: str,
    node: querymod.Node | None = None,
) -> list[SeriesLine]:
    """The series that turned `wait_days` old in the range while still open,
    as patch-list lines with their facts; only those `node` matches, if given."""
    found = waiting.open_series(conn, rng, wait_days)
    if node is not None:
        matching = querymod.matching_series(conn, [p.series_id for p in found], rng.end_seq, node)
        found = [p for p in found if p.series_id in matching]
    applied = applied_by(conn, {p.series_id: p.addr.lower() for p in found}, rng.end_seq)
    lines = [
        SeriesLine(
            p.subject,
            person(p.name, p.addr),
            p.summary,
            series_id=p.series_id,
            message_id=p.message_id,
            submitter_key=p.addr.lower(),
        )
        for p in found
        if p.series_id not in applied
    ]
    return with_facts(conn, lines, rng.end_seq, archive_url) if lines else []


def build(
    conn: sqlite3.Connection,
    rng: Range,
    list_title: str = "KVM",
    top: int = 15,
    abbrev: int = 9,
    query: str | None = None,
    style: str = "full",
    archive_url: str = "",
    review_wait_days: int = 7,
) -> Digest:
    """The digest of an archive range, in the `full`, `classic` or `brief`
    style (full without the commit messages), restricted to a topic `query`
    if given.

    Unfiltered, every message counts; filtered, FORMAT.md's "Filtered
    digests" decides (bot/digest/query.py). A malformed query raises QueryError.
    """
    if style not in STYLES:
        raise ValueError(f"unknown digest style {style!r}; use one of {', '.join(STYLES)}")
    shown = counted = matching = None
    if query:
        sel = querymod.select(conn, rng.start_seq, rng.end_seq, querymod.parse(query))
        shown, counted, matching = sel.shown, sel.counted, sel.series
    total, domains, people = statistics(conn, rng, top, counted)
    start, end = rng.abbrev(abbrev)
    series = patch_list(conn, rng, shown)
    items = entries(conn, rng, shown) if style != "brief" else []
    earlier: list[SeriesLine] = []
    waits: list[SeriesLine] = []
    if style in ("full", "brief"):
        listed = {s.series_id for s in series}
        earlier = discussion(conn, rng, listed)
        if matching is not None:
            earlier = [s for s in earlier if s.series_id in matching]
        both = with_facts(conn, series + earlier, rng.end_seq, archive_url, versioned=listed)
        series, earlier = both[: len(series)], both[len(series) :]
        items = [replace(e, link=link(archive_url, e.message_id)) for e in items]
        node = querymod.parse(query) if query else None
        waits = waiting_section(conn, rng, review_wait_days, archive_url, node)
    return Digest(
        list_title=list_title,
        start=start,
        end=end,
        messages=total,
        top=top,
        domains=domains,
        people=people,
        series=series,
        entries=items,
        discussion=earlier,
        query=querymod.normal(query) if query else "",
        commit_messages=style != "brief",
        waiting=waits,
        wait_days=review_wait_days,
        style=style,
    )


def environment(extra_dir: str | Path | None = None, cached: bool = False) -> jinja2.Environment:
    """The Jinja2 environment for plain-text mail templates.

    Templates come from the configured directory first, then the shipped
    `templates/` (inside the package when installed, beside it in a checkout).
    User text is only ever passed as data, never compiled as a template.
    `cached`: compiled templates are kept between processes (template_cache).
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
        bytecode_cache=template_cache() if cached else None,
    )


def template_cache() -> jinja2.BytecodeCache | None:
    """Jinja2's compiled-template cache, so a one-shot command does not recompile.

    Compiling the digest template costs more than building a day's digest;
    the daemon compiles once, but each `kvm-digest digest` is a new process.
    Jinja2 keeps the cache in a per-user directory of the temp dir that it
    checks is ours and private, and keys entries on the template's name and
    source, so an edited template is compiled again. Without a usable
    directory: no cache, and the same digest.
    """

    class Quiet(jinja2.FileSystemBytecodeCache):
        def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
            try:
                super().dump_bytecode(bucket)
            except OSError as err:  # a full temp dir costs speed, never the digest
                log.debug("not caching the compiled template: %s", err)

    try:
        return Quiet()
    except (OSError, RuntimeError) as err:  # RuntimeError: no private temp dir
        log.debug("no template cache: %s", err)
        return None


def render(digest: Digest, env: jinja2.Environment) -> str:
    """The digest's plain-text body.

    A series or entry the template cannot render (a custom template's
    filter on data it did not expect) is left out and logged, so the rest
    of the digest still goes out; only a template that cannot render the
    digest's frame at all raises.
    """
    template = env.get_template(TEMPLATE)
    try:
        return template.render(d=digest)
    except Exception:
        log.warning("the digest does not render whole; leaving out what breaks it")
    frame = replace(digest, series=[], discussion=[], entries=[])
    template.render(d=frame)  # raises when the frame itself is broken

    def alone(part: str) -> Callable[[object], object]:
        def check(item: object) -> object:
            template.render(d=replace(frame, **{part: [item]}))
            return item

        return check

    def named(item: object) -> str:
        return f"{getattr(item, 'subject', '?')!r} ({getattr(item, 'message_id', '')})"

    kept = replace(
        digest,
        series=each(digest.series, alone("series"), named),
        discussion=each(digest.discussion, alone("discussion"), named),
        entries=each(digest.entries, alone("entries"), named),
    )
    return template.render(d=kept)
