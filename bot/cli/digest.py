"""`kvm-digest digest`: print the digest of a range, a time window or everything."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING

from bot import config as configmod
from bot.cli.common import Subparsers, add_command, reader
from bot.config import Config
from bot.digest import ranges
from bot.errors import DigestError
from bot.store.index import Index

if TYPE_CHECKING:
    import jinja2

    from bot.digest.build import Digest


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
    from bot.cli.startup import no_collection

    with no_collection():
        from bot.digest import build as digestmod

    if args.until and not args.since:
        raise DigestError("--until needs --since; give both dates")
    env = digestmod.environment(config.digest.templates or None, cached=True)
    found = for_reader(args.for_) if args.for_ else None
    index = reader(config)
    try:
        rng = select_range(args, index)
        query, style = args.query, args.style or config.digest.style
        if found:
            query, style = reader_choices(args, config, index, found[0])
        d = digestmod.build(
            index.conn,
            rng,
            config.list.title,
            config.digest.top,
            config.digest.abbrev,
            query=query,
            style=style,
            archive_url=config.list.archive_url,
            review_wait_days=config.digest.review_wait_days,
        )
        text = digestmod.render(d, env)
        if found:
            text = with_for_you(found, config, index, rng, d, env, text)
    finally:
        index.close()
    sys.stdout.write(text)
    return 0


# -- --for ADDRESS: the digest as that reader gets it ------------------------


def for_reader(address: str) -> tuple[str, str]:
    """(address, canonical key) of the --for reader; an error if it is none."""
    from bot.digest import personal

    found = personal.reader(address)
    if found is None:
        raise DigestError(f"--for needs an address, e.g. --for jane@example.org, not {address!r}")
    return found


def reader_choices(
    args: argparse.Namespace, config: Config, index: Index, address: str
) -> tuple[str | None, str]:
    """The topic and style of the --for reader: theirs when subscribed, unless
    --query or --style say otherwise."""
    from bot.delivery import subscribers

    sub = subscribers.get(index.conn, address)
    active = sub is not None and sub.status == "active"
    query = args.query or (sub.topic if active and sub.topic else None)
    style = args.style or (sub.style if active and sub.style else "") or config.digest.style
    return query, style


def with_for_you(
    found: tuple[str, str],
    config: Config,
    index: Index,
    rng: ranges.Range,
    d: Digest,
    env: jinja2.Environment,
    text: str,
) -> str:
    """`text` with the "For you" section of the reader `found` in its place."""
    from bot.digest import layout, personal

    shown, key = found
    # The range's unfiltered full digest already holds the lines "For you" picks from.
    full = d if not d.query and d.style == "full" else None
    pool = personal.pool(index.conn, rng, config.list.archive_url, full)
    section = personal.render(pool.groups(key), shown, env)
    return layout.insert(text, section) if section else text


COMMANDS = ("digest",)
"""The commands register() adds (the CLI registers only the group a command line names)."""


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
    p.add_argument(
        "--for",
        dest="for_",
        metavar="ADDRESS",
        help="the digest as ADDRESS gets it: its 'For you' section at the top (subscribed "
        "or not), and its topic and style when subscribed unless --query or --style",
    )
    p.set_defaults(func=cmd_digest)
