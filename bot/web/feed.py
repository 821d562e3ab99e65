"""The Atom feed (RFC 4287) of the periodic digests: each digest an entry.

The feed holds the last FEED_ENTRIES digests of the whole list (no topic)
in the configured style that a schedule sent, newest first, each with its
text as the entry's content and a link to the same text on its own. Entry
ids are tag URIs (RFC 4151) built from the digest's row, so they never
change. Text that XML cannot carry (control characters from hostile mail)
is dropped.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit
from xml.etree import ElementTree as ET

from bot.delivery.mail import Identity

ATOM = "http://www.w3.org/2005/Atom"
FEED_ENTRIES = 30
"""Digests in the feed; older ones are on the list archive anyway."""
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


@dataclass(frozen=True)
class Sent:
    """One periodic digest as the feed shows it."""

    id: int
    schedule: str
    subject: str
    body: str
    created: int


def sent(conn: sqlite3.Connection, schedule: str, style: str, limit: int = FEED_ENTRIES):
    """The newest periodic digests of the whole list in `style`, newest first."""
    return [
        Sent(*row)
        for row in conn.execute(
            "SELECT id, schedule, subject, body, created FROM digests"
            " WHERE schedule = ? AND topic = '' AND style IN (?, '')"
            " ORDER BY id DESC LIMIT ?",
            (schedule, style, limit),
        )
    ]


def one(conn: sqlite3.Connection, digest_id: int) -> Sent | None:
    """A digest of the whole list by its id (the entries' links), or None."""
    row = conn.execute(
        "SELECT id, schedule, subject, body, created FROM digests WHERE id = ? AND topic = ''",
        (digest_id,),
    ).fetchone()
    return Sent(*row) if row else None


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _text(value: str) -> str:
    return _NOT_XML.sub("", value)


def entry_url(me: Identity, digest_id: int) -> str:
    return f"{me.web_url}/digest/{digest_id}.txt"


def atom(me: Identity, schedule: str, digests: list[Sent], now: float) -> bytes:
    """The feed document, UTF-8 XML."""
    host = urlsplit(me.web_url).hostname or me.domain
    feed = ET.Element("feed", xmlns=ATOM)
    ET.SubElement(feed, "id").text = f"{me.web_url}/feed.atom?schedule={schedule}"
    ET.SubElement(feed, "title").text = _text(f"{me.list_title} digest ({schedule})")
    ET.SubElement(feed, "subtitle").text = _text(
        f"The {schedule} digest of the {me.list_title} mailing list: who posted, "
        "which series, their reviews and commit messages."
    )
    ET.SubElement(feed, "updated").text = _when(digests[0].created if digests else now)
    ET.SubElement(
        feed,
        "link",
        rel="self",
        type="application/atom+xml",
        href=f"{me.web_url}/feed.atom?schedule={schedule}",
    )
    if me.archive_url:
        ET.SubElement(feed, "link", rel="alternate", type="text/html", href=me.archive_url)
    author = ET.SubElement(feed, "author")
    ET.SubElement(author, "name").text = _text(me.name)
    ET.SubElement(author, "email").text = me.contact
    ET.SubElement(feed, "generator").text = "kvm-digest"
    for d in digests:
        entry = ET.SubElement(feed, "entry")
        day = datetime.fromtimestamp(d.created, UTC).strftime("%Y-%m-%d")
        ET.SubElement(entry, "id").text = f"tag:{host},{day}:digest/{d.id}"
        ET.SubElement(entry, "title").text = _text(d.subject)
        ET.SubElement(entry, "updated").text = _when(d.created)
        ET.SubElement(entry, "published").text = _when(d.created)
        ET.SubElement(entry, "link", rel="alternate", type="text/plain", href=entry_url(me, d.id))
        ET.SubElement(entry, "content", type="text").text = _text(d.body)
    return ET.tostring(feed, encoding="utf-8", xml_declaration=True)
