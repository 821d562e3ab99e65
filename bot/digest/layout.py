"""Where a reader's own section goes in a digest body that all readers share.

A digest is rendered once per (schedule, topic, style); "For you" is one
reader's own (bot/digest/personal.py) and goes between the body's two header
lines and its statistics (FORMAT.md, "For you"). The CLI inserts it into
the text, the outbox into the encoded mail (bot/delivery/mail.py): both
find the place here, so they cannot disagree. No imports: the outbox needs
this, not the digest builder.
"""

from __future__ import annotations


def split_point(body: str) -> int:
    """The position after the body's header lines and the blank line under them."""
    end = body.find("\n\n")
    return end + 2 if end >= 0 else len(body)


def insert(body: str, section: str) -> str:
    """The digest body with a reader's section in its place."""
    at = split_point(body)
    return body[:at] + section + body[at:]
