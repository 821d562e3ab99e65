"""The operator's commands on the service's state: subscribers, send-now, outbox, backup."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bot.cli.common import Subparsers, add_command, reader, state
from bot.config import Config
from bot.errors import DigestError


def cmd_subscribers(args: argparse.Namespace, config: Config) -> int:
    from bot.delivery import subscribers

    index = state(config, create=args.action != "list")
    try:
        with index.conn:
            if args.action == "list":
                for sub in subscribers.listing(index.conn):
                    print(
                        f"{sub.address}\t{sub.schedule}\t{sub.status}\t"
                        f"{sub.hard_failures} hard failures"
                        + (f"\ttopic {sub.topic}" if sub.topic else "")
                        + (f"\tfor you {sub.personal}" if sub.personal else "")
                    )
            elif args.action == "add":
                from bot.delivery.address import problem
                from bot.digest.query import normal

                for address in args.addresses:
                    why = problem(address)
                    if why:
                        raise DigestError(
                            f"{address!r} is not a mail address ({why}); nobody was added"
                        )
                topic = normal(args.topic) if args.topic else ""
                for address in args.addresses:
                    subscribers.subscribe(index.conn, address, args.schedule, topic)
                    if args.personal:
                        subscribers.set_personal(index.conn, address, args.personal == "on")
                    print(f"added {subscribers.canonical(address)} ({args.schedule})")
            else:
                for address in args.addresses:
                    if not subscribers.unsubscribe(index.conn, address):
                        raise DigestError(f"{address} is not subscribed")
                    print(f"removed {subscribers.canonical(address)}")
    finally:
        index.close()
    return 0


def cmd_send_now(args: argparse.Namespace, config: Config) -> int:
    """Run a schedule's digest now; a running daemon sends the queued mail."""
    from bot.daemon import Daemon
    from bot.delivery import periodic
    from bot.delivery.outbox import Outbox

    config.schedule.check()
    index = reader(config)
    try:
        daemon = Daemon(config)
        outbox = Outbox(index.conn, daemon.me)
        result = periodic.run(index.conn, config, outbox, daemon.env, args.schedule)
    finally:
        index.close()
    print(
        f"{args.schedule} digest: {result.messages} messages, "
        f"queued for {result.recipients} subscribers"
    )
    return 0


def cmd_outbox(args: argparse.Namespace, config: Config) -> int:
    from bot.delivery import outbox_admin

    if args.ids and args.action == "list":
        raise DigestError("mail ids go with `outbox retry` or `outbox purge`, not a listing")
    index = state(config)
    try:
        if args.action == "retry":
            n = outbox_admin.retry(index.conn, args.ids)
            print(
                f"queued {n} failed mails again; a running daemon sends them within "
                "seconds (it polls the outbox)"
            )
            return 0
        if args.action == "purge":
            n = outbox_admin.purge(index.conn, args.ids)
            print(f"deleted {n} failed mails")
            return 0
        rows = outbox_admin.listing(index.conn, args.failed)
        # Command mail over a limit waits to be answered (issue 11): show it too.
        deferred = index.conn.execute(
            "SELECT id, limit_key, deferred_until FROM inbound"
            " WHERE NOT done AND deferred_until IS NOT NULL ORDER BY deferred_until, id"
        ).fetchall()
    finally:
        index.close()
    for row in rows:
        print(row.line())
    if args.failed:
        deferred = []  # waiting for a limit is not failing
    if not rows:
        if args.failed:
            print("no failed mail")
        elif deferred:
            print("no outgoing mail is queued; command mail waiting to be answered:")
        else:
            print("the outbox is empty")
    for row_id, key, until in deferred:
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(until))
        print(f"command mail {row_id} from {key}\tdeferred until {when} (over a limit)")
    return 0


def cmd_backup(args: argparse.Namespace, config: Config) -> int:
    """Copy the index (the bot's state) with SQLite's online backup API."""
    from bot.store.backup import backup

    size = backup(config.index_path, args.file)
    print(
        f"backed up {config.index_path} to {args.file} ({size} bytes, integrity ok); "
        'keep the config and the secrets too (see the README, "Backups")'
    )
    return 0


COMMANDS = ("subscribers", "send-now", "outbox", "backup")
"""The commands register() adds (the CLI registers only the group a command line names)."""


def register(sub: Subparsers) -> None:
    p = add_command(
        sub,
        "subscribers",
        "list, add or remove digest subscribers",
        "Adding here skips the confirmation mail: the operator vouches for the address.",
    )
    p.add_argument("action", choices=["list", "add", "remove"])
    p.add_argument("addresses", nargs="*", metavar="ADDRESS")
    p.add_argument("--schedule", choices=["daily", "weekly"], default="daily")
    p.add_argument("--topic", metavar="QUERY", help="only series matching it (see --query)")
    p.add_argument(
        "--personal",
        choices=["on", "off"],
        help="'For you' atop their digests, or not (default [digest] personal)",
    )
    p.set_defaults(func=cmd_subscribers)

    p = add_command(
        sub,
        "send-now",
        "queue a schedule's next digest now",
        "The digest covers the archive since that schedule's last one; a running "
        "daemon sends the queued mail.",
    )
    p.add_argument("--schedule", choices=["daily", "weekly"], default="daily")
    p.set_defaults(func=cmd_send_now)

    p = add_command(
        sub,
        "outbox",
        "show queued and failed outgoing mail; retry or purge failed mail",
        "`outbox` lists mail with when it was queued and its next try; `outbox retry "
        "[ID...]` queues failed mail again and `outbox purge [ID...]` deletes it "
        "(all failed mail when no id is given).",
    )
    p.add_argument("action", nargs="?", choices=["list", "retry", "purge"], default="list")
    p.add_argument("ids", nargs="*", type=int, metavar="ID", help="outbox ids, as listed")
    p.add_argument("--failed", action="store_true", help="list only failed mail")
    p.set_defaults(func=cmd_outbox)

    p = add_command(
        sub,
        "backup",
        "copy the index, the bot's state, to FILE (safe while the daemon runs)",
        "Subscribers, tokens, schedules, the outbox and the VERP key live in the index; "
        "this copies it as one consistent snapshot with SQLite's online backup API "
        "(a plain cp can miss its write-ahead log) and replaces FILE only when the copy "
        "is complete and checked.",
    )
    p.add_argument("file", type=Path, metavar="FILE")
    p.set_defaults(func=cmd_backup)
