"""`kvm-digest health`: one line per check, and the Nagios exit status."""

from __future__ import annotations

import argparse
import json

from bot.cli.common import Subparsers, add_command
from bot.config import Config


def cmd_health(args: argparse.Namespace, config: Config) -> int:
    """Exit 0 healthy, 1 degraded, 2 failing: what Nagios, Icinga and Zabbix expect."""
    from bot import healthcheck

    checks = healthcheck.run(config)
    status = healthcheck.worst(checks)
    word = healthcheck.WORDS[status]
    if args.json:
        said = {"status": word, "code": status, "checks": [c.as_json() for c in checks]}
        print(json.dumps(said, indent=2))
        return status
    # The first line is the summary a monitoring system shows; the rest, one per check.
    worst = [c.name for c in checks if c.status == status and status]
    print(f"kvm-digest {word.upper()}: " + (", ".join(worst) or f"{len(checks)} checks ok"))
    for check in checks:
        print(check.line())
    return status


COMMANDS = ("health",)
"""The commands register() adds (the CLI registers only the group a command line names)."""


def register(sub: Subparsers) -> None:
    p = add_command(
        sub,
        "health",
        "is the service doing its job? (exit 0 ok, 1 degraded, 2 failing)",
        "One line per check: the daemon, the last successful intake, each schedule's "
        "last digest, the outbox, failures in the last day, the relay, disk space. "
        "Reads only; the exit status follows the Nagios convention.",
    )
    p.add_argument("--json", action="store_true", help="print the checks as JSON")
    p.set_defaults(func=cmd_health)
