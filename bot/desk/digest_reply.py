"""Replies to a digest: a person asking about a series, not giving a command.

A reader who answers a digest ("Is the vgic-v4 change safe on GICv4.1?")
means to ask the series' authors, but a digest reply reaches only the bot.
Instead of help text the reader gets a short answer: the list address and
the lore link of the series asked about, so the question can be sent where
it is read.

A mail answers a digest when its In-Reply-To or References name a digest
Message-ID we sent (the outbox keeps them for `[data] retention_days`), or
its subject is a digest subject (`Re: KVM mailing list update from A to B`).
The series is found, in this order: the series line quoted just above the
reader's own text (an inline answer); the one series the quote holds; the
series whose title shares the most distinctive words with the reader's
text; else the answer names the digest's archive range.
"""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from bot.delivery.mail import Identity
from bot.desk import reading
from bot.digest import ranges
from bot.digest.build import link
from bot.errors import RangeError

_WORD = re.compile(r"[a-z0-9](?:[a-z0-9_.-]*[a-z0-9])?")
_COMMON = frozenset(
    re.findall(
        r"\w+",
        "the and for with from this that these those are was were has have not but you your "
        "can could would should will when what which who how why does did its into onto "
        "there their them then than also only just about patch patches series reply",
    )
)
"""Words too common to tell one series from another."""
_RANGE = r" mailing list update from ([0-9a-f]{7,40}) to ([0-9a-f]{7,40})"
MAX_SERIES = 2000
"""Series of one digest considered at most (a month of a busy list has ~600)."""


@dataclass(frozen=True)
class Series:
    subject: str
    title: str
    message_id: str


@dataclass(frozen=True)
class Answered:
    """The digest a mail answers: its subject and range (None when unknown)."""

    subject: str
    range: ranges.Range | None


def answered_digest(
    conn: sqlite3.Connection, me: Identity, subject: str, ids: list[str]
) -> Answered | None:
    """The digest this mail answers, by Message-ID or by subject; None if none."""
    if ids:
        marks = ",".join("?" * len(ids))
        row = conn.execute(
            "SELECT d.subject, d.start_id, d.end_id FROM outbox o JOIN digests d"
            f" ON d.id = o.digest_id WHERE o.kind = 'digest' AND o.message_id IN ({marks})"
            " ORDER BY o.id DESC LIMIT 1",
            ids,
        ).fetchone()
        if row:
            try:
                return Answered(row[0], ranges.by_ids(conn, row[1], row[2]))
            except RangeError:
                return Answered(row[0], None)
    match = re.match(
        re.escape(me.list_title) + _RANGE,
        reading.bare_subject(subject),
        re.IGNORECASE,
    )
    if not match:
        return None
    try:
        rng = ranges.by_ids(conn, match[1].lower(), match[2].lower())
    except RangeError:
        return Answered(f"{me.list_title} mailing list update", None)
    return Answered(f"{me.list_title} mailing list update from {match[1]} to {match[2]}", rng)


def series_in(conn: sqlite3.Connection, rng: ranges.Range) -> list[Series]:
    """The series a digest of `rng` shows: patches, cover letters or replies in it."""
    ids = [
        row[0]
        for row in conn.execute(
            "SELECT series_id FROM messages WHERE seq > ? AND seq <= ?"
            " AND series_id IS NOT NULL GROUP BY series_id ORDER BY MIN(seq) LIMIT ?",
            (rng.start_seq, rng.end_seq, MAX_SERIES),
        )
    ]
    shown: dict[str, tuple] = {}
    for series_id, counter, seq, subject, title, message_id in conn.execute(
        "SELECT series_id, COALESCE(counter, 1), seq, subject, title, message_id"
        " FROM messages WHERE series_id IN (SELECT value FROM json_each(?))"
        " AND kind IN ('patch', 'cover') AND NOT is_dup",
        (json.dumps(ids),),
    ):
        key = (counter, seq)
        if series_id not in shown or key < shown[series_id][0]:
            shown[series_id] = (key, subject, title, message_id)
    return [Series(*shown[s][1:]) for s in ids if s in shown]


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


def parts(lines: list[str]) -> tuple[list[tuple[bool, str]], list[str]]:
    """The mail's lines as (quoted, text), and the reader's own lines.

    Quoted: `>` lines, and everything after an unquoted copy of the
    original (Outlook); the reader's own text stops at a signature.
    """
    out: list[tuple[bool, str]] = []
    own: list[str] = []
    original = signed = False
    for i, line in enumerate(lines):
        if not original and reading.original_starts(lines, i):
            original = True
        quoted = line.lstrip().startswith(">")
        if not line.strip() or (reading.is_quote(line) and not quoted):
            continue  # blank, or an attribution line
        if quoted or original:
            out.append((True, line.lstrip().lstrip("> ")))
            continue
        if line.rstrip() in ("--", "-- "):
            signed = True
        if not signed:
            out.append((False, line))
            own.append(line)
    return out, own


def pick(series: list[Series], lines: list[str]) -> Series | None:
    """The series a reply asks about, if its text tells (see the module doc)."""
    by_text: dict[str, Series] = {}
    for s in series:
        by_text.setdefault(_norm(s.subject), s)
        by_text.setdefault(_norm(s.title), s)
    marked, own = parts(lines)
    quoted: list[Series] = []
    last: Series | None = None
    for is_quoted, text in marked:
        if is_quoted:
            norm = _norm(text)
            if norm.startswith("new: "):
                norm = norm[5:].strip()
            found = by_text.get(norm)
            if found is not None:
                last = found
                quoted.append(found)
        elif last is not None:
            return last  # an inline answer, right below the series it is about
    if len(set(quoted)) == 1:
        return quoted[0]
    return _by_words(series, " ".join(own))


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.casefold()) if len(w) > 2 and w not in _COMMON}


def _by_words(series: list[Series], text: str) -> Series | None:
    """The series whose title shares the most distinctive words with `text`."""
    asked = _words(text)
    if not asked or not series:
        return None
    titles = [_words(s.title) for s in series]
    spread: dict[str, int] = {}
    for words in titles:
        for w in words:
            spread[w] = spread.get(w, 0) + 1
    scores = [
        sum(1 / spread[w] for w in words & asked if spread[w] < len(series) or len(series) == 1)
        for words in titles
    ]
    best = max(scores)
    if best <= 0 or scores.count(best) > 1:
        return None
    return series[scores.index(best)]


def answer(
    conn: sqlite3.Connection,
    me: Identity,
    subject: str,
    ids: list[str],
    lines: list[str],
) -> tuple[str, str] | None:
    """(subject, text) of the answer to a reply to a digest; None if it is not one."""
    digest = answered_digest(conn, me, subject, ids)
    if digest is None:
        return None
    chosen = pick(series_in(conn, digest.range), lines) if digest.range else None
    where = me.list_address or "the list"
    text = [
        "Replies to a digest reach only this bot, not the list, so nobody else",
        "will read yours. To ask the authors or reviewers, write to",
        f"{where} in reply to the series itself.",
        "",
    ]
    if chosen is not None:
        url = link(me.archive_url, chosen.message_id)
        text += ["The series you asked about:", "", f"    {chosen.subject}"]
        text += [f"    {url}", "", "Its archive page has the headers to reply with."] if url else []
    elif digest.range is not None:
        start, end = digest.range.start_id[:9], digest.range.end_id[:9]
        text.append(f"The digest you answered covered the archive from {start} to {end}.")
        window = _window(conn, digest.range)
        if me.archive_url and window:
            text += ["Its messages on the archive:", "", f"    {me.archive_url}/?q=d:{window}"]
    elif me.archive_url:
        text.append(f"The list archive: {me.archive_url}")
    text += [
        "",
        f"Commands go to {me.address}, one per line; 'help' lists them.",
    ]
    return f"Re: {digest.subject}", "\n".join(text) + "\n"


def _window(conn: sqlite3.Connection, rng: ranges.Range) -> str:
    """lore's date search for a range: `YYYYMMDD..YYYYMMDD` (the end day included)."""
    first, last = conn.execute(
        "SELECT MIN(COALESCE(received, date)), MAX(COALESCE(received, date)) FROM messages"
        " WHERE seq > ? AND seq <= ?",
        (rng.start_seq, rng.end_seq),
    ).fetchone()
    if first is None:
        return ""
    start = datetime.fromtimestamp(first, UTC).date()
    end = datetime.fromtimestamp(last, UTC).date() + timedelta(days=1)
    return f"{start:%Y%m%d}..{end:%Y%m%d}"
