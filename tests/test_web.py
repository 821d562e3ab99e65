"""The web endpoint: one-click unsubscribe (RFC 8058) and the Atom feed.

Served for real on a loopback port (bot/web/server.py's own task), asked by
a real HTTP client (aiohttp's) and, for the page, by a real headless
Chromium that clicks its button. The feed is read with feedparser and
checked against RFC 4287's required elements. The last test runs it all
through `kvm-digest run`.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import urllib.request
from datetime import datetime
from xml.etree import ElementTree as ET

import aiohttp
import feedparser
import pytest

from bot.cli import main
from bot.delivery import periodic, subscribers
from bot.digest.build import environment
from bot.web import server
from tests import rfcmail
from tests.browser import Browser
from tests.dovecot import free_port
from tests.mailfactory import DATA, mail
from tests.test_commands import Bot
from tests.test_daemon import DaemonProcess

WEB = "https://digest.example.org"
ATOM = "{http://www.w3.org/2005/Atom}"


class Served:
    """The bot of tests/test_commands.py with its web endpoint listening."""

    def __init__(self, bot: Bot) -> None:
        self.bot = bot
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.stop = asyncio.Event()
        self.task: asyncio.Task | None = None

    async def start(self) -> Served:
        b = self.bot

        def make():
            return server.application(b.store.index.conn, b.config, b.me, b.outbox)

        self.task = asyncio.create_task(server.serve(make, f"127.0.0.1:{self.port}", self.stop))
        deadline = asyncio.get_running_loop().time() + 10
        while True:  # listening once a connection is accepted
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return self
            except OSError:
                assert asyncio.get_running_loop().time() < deadline, "the endpoint never listened"
                await asyncio.sleep(0.02)

    def local(self, url: str) -> str:
        """A public URL from a mail, as the TLS proxy hands it to the endpoint."""
        assert url.startswith(WEB + "/")
        return self.base + url[len(WEB) :]

    async def close(self) -> None:
        self.stop.set()
        if self.task:
            await self.task


@pytest.fixture
async def served(tmp_path, sink):
    bot = await Bot(tmp_path / "var", sink, web={"url": WEB}).start()
    web = await Served(bot).start()
    yield web
    await web.close()
    await bot.close()


def status(bot: Bot, address: str = "una@example.org") -> str:
    return subscribers.get(bot.store.index.conn, address).status


async def digest_link(served: Served, sink) -> str:
    """Subscribe una, mail her a digest, and return the https link it names."""
    bot = served.bot
    conn = bot.store.index.conn
    with conn:
        periodic.ensure(conn, "daily")
    bot.subscribe()
    bot.store.add(mail("[PATCH] KVM: one change", "one@x"))
    periodic.run(conn, bot.config, bot.outbox, environment(), "daily")
    await bot.sender.flush()
    (digest,) = sink.wait_for(1)
    rfcmail.check(digest.data)
    page, mailto = rfcmail.urls(digest.data, "List-Unsubscribe")
    assert mailto.startswith("mailto:kvm-digest+unsubscribe-")
    assert f"Unsubscribe: {page}\n" in rfcmail.body_text(digest.data)
    return page


async def test_get_shows_a_button_and_never_unsubscribes_post_does(served, sink):
    page = served.local(await digest_link(served, sink))
    async with aiohttp.ClientSession() as http:
        for _ in range(3):  # link scanners, previews, a person looking twice
            async with http.get(page) as response:
                assert response.status == 200
                html = await response.text()
                assert response.headers["Cache-Control"] == "no-store"
                assert "Set-Cookie" not in response.headers
        async with http.head(page) as response:
            assert response.status == 200
        assert status(served.bot) == "active"
        assert html.count("<button") == 1 and '<form method="post"' in html
        assert "una@example.org" in html
        # RFC 8058: what a mail client's one-click button sends.
        async with http.post(
            page,
            data="List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ) as response:
            assert response.status == 200
            assert "will not receive the KVM digest any more" in await response.text()
        assert status(served.bot) == "unsubscribed"
        async with http.post(page, data="List-Unsubscribe=One-Click") as response:
            assert response.status == 200
            assert "does not receive" in await response.text()
        # An unknown or malformed secret changes nothing.
        for wrong in ("/u/0123456789abcdef01234567", "/u/..%2Fetc", "/u/<script>"):
            async with http.post(served.base + wrong, data="List-Unsubscribe=One-Click") as r:
                assert r.status == 404
    # One goodbye, so a reader whose forwarded digest was clicked hears of it.
    await served.bot.sender.flush()
    goodbye = sink.wait_for(2)[1]
    rfcmail.check(goodbye.data)
    assert goodbye.recipients == ["una@example.org"]
    assert "the\nunsubscribe link of its digests was used" in rfcmail.body_text(goodbye.data)


async def test_the_unsubscribe_page_in_a_real_browser(served, sink, tmp_path):
    page = served.local(await digest_link(served, sink))
    browser = await asyncio.to_thread(Browser, tmp_path / "profile")
    try:
        await asyncio.to_thread(browser.get, page)
        assert await asyncio.to_thread(lambda: browser.title) == "Unsubscribe from the KVM digest"
        # Loading the page (a browser may preload or scan it) did nothing.
        assert status(served.bot) == "active"
        button = await asyncio.to_thread(browser.find, "button")
        assert await asyncio.to_thread(browser.text, button) == "Unsubscribe"
        await asyncio.to_thread(browser.screenshot, tmp_path / "page.png")
        await asyncio.to_thread(browser.click, button)
        await asyncio.to_thread(browser.wait_title, "Unsubscribed")
        said = await asyncio.to_thread(browser.text, await asyncio.to_thread(browser.find, "body"))
        assert "una@example.org will not receive the KVM digest any more." in said
    finally:
        await asyncio.to_thread(browser.close)
    assert (tmp_path / "page.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert status(served.bot) == "unsubscribed"


async def test_the_feed_is_valid_atom_with_each_periodic_digest(served, sink):
    bot = served.bot
    conn = bot.store.index.conn
    with conn:
        periodic.ensure(conn, "daily")
        subscribers.subscribe(conn, "topic@example.org", "daily", "s:nothing-matches-this")
    bodies = {}
    for n in range(2):  # nobody reads the whole list by mail: rendered for the feed
        bot.store.add(mail(f"[PATCH] KVM: change {n} & <more>", f"c{n}@x", minutes=n))
        result = periodic.run(conn, bot.config, bot.outbox, environment(), "daily")
        assert result.recipients == 0
        (digest_id,) = result.digests
        bodies[digest_id] = conn.execute(
            "SELECT subject, body FROM digests WHERE id = ?", (digest_id,)
        ).fetchone()
    async with aiohttp.ClientSession() as http:
        async with http.get(served.base + "/feed.atom") as response:
            assert response.status == 200
            assert response.content_type == "application/atom+xml"
            document = await response.read()
        parsed = feedparser.parse(document)
        assert not parsed.bozo, parsed.get("bozo_exception")
        assert parsed.version == "atom10"
        assert [e.title for e in parsed.entries] == [bodies[i][0] for i in sorted(bodies)[::-1]]
        for entry, digest_id in zip(parsed.entries, sorted(bodies)[::-1], strict=True):
            # (feedparser strips the text's trailing blank line)
            assert entry.content[0].value == bodies[digest_id][1].rstrip("\n")
            (text,) = [link.href for link in entry.links if link.rel == "alternate"]
            async with http.get(served.local(text)) as response:
                assert response.content_type == "text/plain"
                assert await response.text() == bodies[digest_id][1]
        async with http.get(served.base + "/feed.atom?schedule=monthly") as response:
            assert response.status == 404
    # RFC 4287's required elements, read without feedparser's leniency.
    feed = ET.fromstring(document)
    assert feed.tag == ATOM + "feed"
    for name in ("id", "title", "updated", "author"):
        assert feed.find(ATOM + name) is not None, name
    assert feed.find(ATOM + "link[@rel='self']").get("href").startswith(WEB + "/feed.atom")
    entries = feed.findall(ATOM + "entry")
    assert len(entries) == 2
    for entry in entries:
        for name in ("id", "title", "updated", "content"):
            assert entry.find(ATOM + name) is not None, name
        assert re.fullmatch(
            r"tag:digest\.example\.org,\d{4}-\d\d-\d\d:digest/\d+", entry.find(ATOM + "id").text
        )
        datetime.strptime(entry.find(ATOM + "updated").text, "%Y-%m-%dT%H:%M:%SZ")
    assert len({e.find(ATOM + "id").text for e in entries}) == 2


async def test_web_url_must_be_https(tmp_path):
    from bot.config import from_table
    from bot.errors import ConfigError

    for url in ("http://digest.example.org", "digest.example.org", "https://"):
        with pytest.raises(ConfigError, match=r"\[web\] url must be the https:// address"):
            from_table({"web": {"url": url}})
    with pytest.raises(ConfigError, match=r"\[web\] listen must be host:port"):
        from_table({"web": {"url": WEB, "listen": "8026"}})


def test_through_the_daemon_digest_link_post_and_feed(tmp_path, sink):
    """`kvm-digest run` with [web]: a digest's one-click link works over HTTP."""
    upstream = tmp_path / "up"
    slice_ = DATA / "kvmarm-slice.mbox"
    assert main(["--data-dir", str(upstream), "import", str(slice_)]) in (0, 1)
    web_port = free_port()
    config = tmp_path / "kvm-digest.toml"
    config.write_text(
        f"""
[data]
dir = "{tmp_path / "var"}"
[archive]
path = "{upstream / "archive.git"}"
fetch_interval = 1
[commands]
address = "kvm-digest@example.org"
listen = "127.0.0.1:{free_port()}"
owner = "kvm-digest-owner@example.org"
[web]
url = "{WEB}"
listen = "127.0.0.1:{web_port}"
[smtp]
host = "127.0.0.1"
port = {sink.port}
security = "none"
poll_interval = 1
[schedule]
daily = "*/2 * * * * *"
weekly = ""
seconds = true
"""
    )
    assert main(["--config", str(config), "subscribers", "add", "reader@example.org"]) == 0
    daemon = DaemonProcess(config)
    try:
        daemon.wait_log(f"web endpoint on http://127.0.0.1:{web_port}")
        daemon.wait_log("kvm-digest is running")
        daemon.wait_log("the daily digest starts after")  # mail from now on is in it
        later = DATA / "reference" / "000.mbox"
        subprocess.run(
            [sys.executable, "-m", "bot.cli", "--data-dir", str(upstream), "import", str(later)],
            check=True,
            capture_output=True,
        )
        (digest,) = daemon.expect(sink.wait_for, 1, timeout=30)
        rfcmail.check(digest.data)
        page, _ = rfcmail.urls(digest.data, "List-Unsubscribe")
        assert rfcmail.field(digest.data, "List-Unsubscribe-Post").value == (
            "List-Unsubscribe=One-Click"
        )
        local = f"http://127.0.0.1:{web_port}" + page[len(WEB) :]
        with urllib.request.urlopen(local, timeout=10) as response:
            assert b"<button" in response.read()
        request = urllib.request.Request(local, data=b"List-Unsubscribe=One-Click", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert b"will not receive the KVM digest any more" in response.read()
        goodbye = daemon.expect(sink.wait_for, 2, timeout=30)[1]
        assert goodbye.recipients == ["reader@example.org"]
        feed_url = f"http://127.0.0.1:{web_port}/feed.atom"
        with urllib.request.urlopen(feed_url, timeout=10) as response:
            parsed = feedparser.parse(response.read())
        assert not parsed.bozo
        assert digest.message["Subject"] in [e.title for e in parsed.entries]
        assert daemon.stop() == 0
    finally:
        daemon.proc.kill()
    assert "task web failed" not in daemon.log
