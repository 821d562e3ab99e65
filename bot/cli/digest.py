"""`kvm-digest digest`: print the digest of a range, a time window or everything."""

from __future__ import annotations

import argparse
import sys
import time

from bot import config as configmod
from bot.cli.common import Subparsers, add_command, reader
from bot.config import Config
from bot.digest import ranges
from bot.errors import DigestError
from bot.store.index import Index


def select_range(args: argparse.Namespace, index: Index) -> ranges.Range:
    if args.range:
        return ranges.parse_range(index.conn, " ".join(args.range))
    if args.since:
        until = ranges.parse_when(args.until) if args.until else None
        return ranges.by_time(index.conn, ranges.parse_when(args.since), until)
    if args.last:
        return ranges.by_time(index.conn, int(time.time()) - ranges.parse_span(args.last))
    return ranges.everything(index.conn)


def cmd_digest(args: argparse.Namespace, config: Config) -> int:
    from bot.digest import build as digestmod

    if args.until and not args.since:
        raise DigestError("--until needs --since; give both dates")
    index = reader(config)
    try:
        rng = select_range(args, index)
        d = digestmod.build(
            index.conn,
            rng,
            config.list.title,
            config.digest.top,
            config.digest.abbrev,
            query=args.query,
            style=args.style or config.digest.style,
            archive_url=config.list.archive_url,
        )
    finally:
        index.close()
    text = digestmod.render(d, digestmod.environment(config.digest.templates or None))
    sys.stdout.write(text)
    return 0


def register(sub: Subparsers) -> None:
    p = add_command(
        sub,
        "digest",
        "print the digest for a range",
        "Reads the index only; the range is archive commit ids, as digest headers "
        "print them, or a window of arrival times.",
    )
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument(
        "--range",
        nargs="+",
        metavar="A..B",
        help="commit ids as printed in digest headers: A..B or A B",
    )
    group.add_argument("--since", metavar="DATE", help="YYYY-MM-DD[THH:MM], UTC")
    group.add_argument(
        "--last",
        metavar="SPAN",
        help="what arrived in the last SPAN until now: 24h, 7d, 2w",
    )
    group.add_argument("--all", action="store_true", help="the whole archive")
    p.add_argument("--until", metavar="DATE", help="end of the --since window (excluded)")
    p.add_argument(
        "--query",
        metavar="QUERY",
        help="only series matching a lei-style query, e.g. 'dfn:arch/arm64/kvm/ OR s:arm64'",
    )
    p.add_argument(
        "--style",
        choices=configmod.STYLES,
        help="full (links, reviews, versions, applied, earlier series) or classic "
        "(the documented layout only); default [digest] style",
    )
    p.set_defaults(func=cmd_digest)
