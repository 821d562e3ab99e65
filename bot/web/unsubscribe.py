"""One-click unsubscribe (RFC 8058): `<web url>/u/<secret>`.

Each reader's digests name its own page, with the secret only that reader
was sent (the same secret as its `bot+unsubscribe-<secret>@` address). A
POST, from a mail client's unsubscribe button (`List-Unsubscribe=One-Click`)
or from the page's button, unsubscribes at once and mails a short goodbye,
so a reader whose forwarded digest was clicked by someone else hears of it.
A GET only shows the page with its one button and never changes anything:
link scanners and previews fetch every URL in a mail.
"""

from __future__ import annotations

import html
import logging
import re
import sqlite3
from dataclasses import dataclass

from bot.delivery import subscribers
from bot.delivery.footer import signature, with_foot
from bot.delivery.mail import ONE_CLICK, Identity, compose
from bot.delivery.outbox import Outbox
from bot.errors import MailError

log = logging.getLogger(__name__)

SECRET = re.compile(r"^[0-9a-f]{8,64}$")
"""What a secret in a URL looks like (subscribers' secrets are hex)."""


@dataclass(frozen=True)
class Page:
    status: int
    title: str
    text: str
    button: bool = False


def page_html(me: Identity, page: Page) -> str:
    """A small plain page: a heading, a sentence or two, at most one button."""
    paragraphs = "".join(f"<p>{html.escape(p)}</p>\n" for p in page.text.split("\n\n"))
    form = ""
    if page.button:
        # The form posts what a mail client's one-click POST carries, to this URL.
        name, _, value = ONE_CLICK.partition("=")
        form = (
            '<form method="post" action="">\n'
            f'<input type="hidden" name="{name}" value="{value}">\n'
            '<button type="submit">Unsubscribe</button>\n</form>\n'
        )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width">\n'
        '<meta name="robots" content="noindex">\n'
        f"<title>{html.escape(page.title)}</title>\n"
        "<style>body{font-family:sans-serif;max-width:36em;margin:3em auto;padding:0 1em;"
        "line-height:1.4}button{font-size:1.1em;padding:.4em 1.2em}</style>\n"
        f"</head>\n<body>\n<h1>{html.escape(page.title)}</h1>\n{paragraphs}{form}"
        "</body>\n</html>\n"
    )


def _unknown(me: Identity) -> Page:
    return Page(
        404,
        "Unknown unsubscribe link",
        "This unsubscribe link is not known. Links change when an address "
        "subscribes again, so it may be from an older digest: use the link in "
        f"your latest digest, or send 'unsubscribe' to {me.address}.",
    )


def ask(conn: sqlite3.Connection, me: Identity, secret: str) -> Page:
    """The page a GET shows: who would be unsubscribed, and one button."""
    address = subscribers.by_secret(conn, secret) if SECRET.match(secret) else None
    if address is None:
        return _unknown(me)
    current = subscribers.get(conn, address)
    if current is None or current.status == "unsubscribed":
        return Page(
            200,
            "Not subscribed",
            f"{address} does not receive the {me.list_title} digest any more.",
        )
    return Page(
        200,
        f"Unsubscribe from the {me.list_title} digest",
        f"Stop sending the {current.schedule} {me.list_title} digest to {address}?\n\n"
        "Nothing changes until you press the button.",
        button=True,
    )


def unsubscribe(conn: sqlite3.Connection, me: Identity, outbox: Outbox, secret: str) -> Page:
    """What a POST does: unsubscribe at once (RFC 8058), say so, mail a goodbye."""
    address = subscribers.by_secret(conn, secret) if SECRET.match(secret) else None
    if address is None:
        return _unknown(me)
    with conn:
        if not subscribers.unsubscribe(conn, address):
            return Page(
                200,
                "Not subscribed",
                f"{address} does not receive the {me.list_title} digest any more.",
            )
        _goodbye(me, outbox, address)
    log.info("unsubscribed %s by its one-click link", address)
    return Page(
        200,
        "Unsubscribed",
        f"{address} will not receive the {me.list_title} digest any more.\n\n"
        f"To get it again, send 'subscribe' to {me.address}.",
    )


def _goodbye(me: Identity, outbox: Outbox, address: str) -> None:
    """The one mail that says it happened (queued in the caller's transaction)."""
    body = (
        f"{address} will not receive the {me.list_title} digest any more: the\n"
        "unsubscribe link of its digests was used. If that was not you, send\n"
        f"'subscribe' to {me.address} to get the digest again.\n"
    )
    message_id = me.new_message_id()
    try:
        message = compose(
            me,
            address,
            f"You are unsubscribed from the {me.list_title} digest",
            with_foot(body, signature(me)),
            message_id,
        )
    except MailError as err:
        log.info("no goodbye to %s: %s", address, err)
        return
    outbox.enqueue(address, message, message_id, kind="notice")
