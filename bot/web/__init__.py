"""The bot's small web endpoint, run by the daemon when `[web] url` is set.

It sits behind the site's TLS proxy (it listens on loopback by default) and
serves what mail cannot: one-click unsubscribe pages (RFC 8058) for the
links in each reader's List-Unsubscribe header and footer
(bot/web/unsubscribe.py), and an Atom feed of the periodic digests
(bot/web/feed.py), so a reader can follow the digest without subscribing.
bot/web/server.py puts them together (aiohttp) and runs them as a task.
"""
