"""The web endpoint as an aiohttp application, and the daemon task that serves it.

Routes: `/u/<secret>` (GET: the unsubscribe page; POST: unsubscribe,
RFC 8058), `/feed.atom` (the Atom feed of the periodic digests; `?schedule=
weekly` for the other schedule), `/digest/<id>.txt` (one digest's text, the
feed entries' links) and `/` (what the endpoint is). The handlers run on
the daemon's event loop and use its index connection, as the other tasks
do. No access log: the paths carry subscribers' secrets.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable

from aiohttp import web

from bot.config import Config
from bot.delivery.mail import Identity
from bot.delivery.outbox import Outbox
from bot.health import Problems
from bot.web import feed, unsubscribe

log = logging.getLogger(__name__)

MAX_BODY = 4096
"""The largest request body: a one-click POST is 26 bytes."""
HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Robots-Tag": "noindex",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
}
SCHEDULES = ("daily", "weekly")


def application(
    conn: sqlite3.Connection, config: Config, me: Identity, outbox: Outbox
) -> web.Application:
    """The endpoint's routes over the daemon's index connection and outbox."""

    def page(result: unsubscribe.Page) -> web.Response:
        return web.Response(
            status=result.status,
            text=unsubscribe.page_html(me, result),
            content_type="text/html",
            charset="utf-8",
            headers=HEADERS,
        )

    async def ask(request: web.Request) -> web.Response:
        return page(unsubscribe.ask(conn, me, request.match_info["secret"]))

    async def one_click(request: web.Request) -> web.Response:
        # RFC 8058: the POST alone unsubscribes; its body says One-Click, and
        # the page's own form sends the same. Nothing else is needed or read.
        return page(unsubscribe.unsubscribe(conn, me, outbox, request.match_info["secret"]))

    default = next((s for s in SCHEDULES if getattr(config.schedule, s)), "daily")

    async def atom(request: web.Request) -> web.Response:
        schedule = request.query.get("schedule", default)
        if schedule not in SCHEDULES:
            raise web.HTTPNotFound(text="no such schedule; use daily or weekly\n")
        digests = feed.sent(conn, schedule, config.digest.style)
        return web.Response(
            body=feed.atom(me, schedule, digests, time.time()),
            content_type="application/atom+xml",
            charset="utf-8",
            headers={"Cache-Control": "max-age=300", "X-Content-Type-Options": "nosniff"},
        )

    async def text(request: web.Request) -> web.Response:
        number = request.match_info["id"]
        found = feed.one(conn, int(number)) if number.isdigit() and len(number) < 12 else None
        if found is None:
            raise web.HTTPNotFound(text="no such digest\n")
        return web.Response(
            text=found.body,
            content_type="text/plain",
            charset="utf-8",
            headers={"X-Content-Type-Options": "nosniff"},
        )

    async def index(request: web.Request) -> web.Response:
        about = unsubscribe.Page(
            200,
            f"{me.list_title} digest",
            f"The {me.list_title} digest bot mails digests of the list. Its Atom feed: "
            f"{me.web_url}/feed.atom. To subscribe, send 'subscribe' to {me.address}.",
        )
        return page(about)

    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_get("/u/{secret}", ask)
    app.router.add_post("/u/{secret}", one_click)
    app.router.add_get("/feed.atom", atom)
    app.router.add_get("/digest/{id}.txt", text)
    app.router.add_get("/", index)
    return app


async def serve(
    make: Callable[[], web.Application],
    listen: str,
    stop: asyncio.Event,
    problems: Problems | None = None,
) -> None:
    """Serve a fresh application on `listen` (host:port) until `stop`.

    A bind that fails (the port is taken) raises OSError: the daemon says so
    once (problem "web") and tries again with backoff.
    """
    host, _, port = listen.rpartition(":")
    runner = web.AppRunner(make(), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host.strip("[]"), int(port))
        await site.start()
        log.info("web endpoint on http://%s", listen)
        if problems is not None:
            problems.working("web")
        await stop.wait()
    finally:
        await runner.cleanup()
