"""`kvm-digest check-config`: every problem in the configuration, in one run."""

from __future__ import annotations

import argparse

from bot.cli.common import Subparsers, add_command
from bot.config import Config


def cmd_check_config(args: argparse.Namespace, config: Config) -> int:
    """Every problem in one run, "valid" only without any (bot/checkconfig.py)."""
    from bot import checkconfig

    return checkconfig.run(config, args.connect, args.credentials)


COMMANDS = ("check-config",)
"""The commands register() adds (the CLI registers only the group a command line names)."""


def register(sub: Subparsers) -> None:
    p = add_command(
        sub,
        "check-config",
        "validate the configuration",
        "Reads the config file and lists every problem it finds, each in one sentence; "
        'prints "valid" only when there is none. --connect also talks to each server.',
    )
    p.add_argument(
        "--connect",
        action="store_true",
        help="also log in to IMAP, say EHLO/STARTTLS/AUTH to the relay, bind the LMTP port",
    )
    p.add_argument(
        "--credentials",
        metavar="DIR",
        help="resolve ${CREDENTIALS_DIRECTORY} in password files to DIR, as systemd would",
    )
    p.set_defaults(func=cmd_check_config)
