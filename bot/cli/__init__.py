"""The `kvm-digest` command line: one module per command group.

Each group (`archive`, `digest`, `service`, `admin`, `checks`, `health`)
registers its subcommands with `register(sub)`; a subcommand is a small function taking the
parsed arguments and the config. Errors a user can fix are DigestErrors:
printed as one line, exit 1. Adding a command touches its group's module.
"""

from __future__ import annotations

from bot.cli.startup import no_collection

with no_collection():
    import argparse
    import os
    import sqlite3
    import sys
    from pathlib import Path

    from bot import config as configmod
    from bot import redact
    from bot.cli import admin, archive, checks, digest, health, service
    from bot.errors import DigestError

GROUPS = (archive, digest, service, admin, checks, health)


def setup_logging(verbosity: int) -> None:
    """stderr logging; timestamps unless journald adds its own (bot/logsetup.py)."""
    from bot import logsetup

    logsetup.configure(verbosity)


class VersionAction(argparse.Action):
    """`--version`: the version, found only when asked for."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # type: ignore[override]
        from bot.version import version

        print(f"{parser.prog} {version()}")
        parser.exit()


GLOBAL_WITH_VALUE = ("--config", "--data-dir", "--archive")


def named_command(argv: list[str]) -> str | None:
    """The command a command line names, read past the global options; None
    when they are not spelled out exactly (an abbreviation, --help), so that
    argparse, with every command registered, reads them."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in GLOBAL_WITH_VALUE:
            i += 2
        elif arg.partition("=")[0] in GLOBAL_WITH_VALUE or _verbose(arg):
            i += 1
        else:
            return None if arg.startswith("-") else arg
    return None


def _verbose(arg: str) -> bool:
    return arg == "--verbose" or (arg.startswith("-v") and set(arg[1:]) == {"v"})


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with `command`, only the group that has it (if
    one does): registering every command's options costs a digest a twelfth
    of its start-up, and its parsing and --help are the same."""
    parser = argparse.ArgumentParser(
        prog="kvm-digest",
        description="Archive a mailing list, thread its patch series and mail digests.",
        epilog="Each command has its own --help. The README explains the whole bot.",
    )
    # Looked up only when asked: importlib.metadata costs more than a digest's parse.
    parser.add_argument("--version", action=VersionAction, nargs=0, help="print the version")
    parser.add_argument(
        "--config",
        type=Path,
        help=f"config file (default {configmod.DEFAULT_PATH} if present, "
        f"or ${configmod.ENV_CONFIG})",
    )
    parser.add_argument("--data-dir", help=f"data directory (or ${configmod.ENV_DATA})")
    parser.add_argument(
        "--archive",
        help="index this public-inbox epoch or v2 inbox directory in place "
        "(mirror mode) instead of the data dir's own archive",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in [g for g in GROUPS if command in g.COMMANDS] or GROUPS:
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # The data directory holds subscribers' addresses and raw command mail:
    # whatever the caller's umask, what we create is ours alone. (Restored on
    # return, for callers that run us in-process, such as the tests.)
    umask = os.umask(0o077)
    try:
        return _main(argv)
    finally:
        os.umask(umask)


def _main(argv: list[str] | None) -> int:
    parser = build_parser(named_command(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(argv)
    setup_logging(args.verbose + (1 if args.command in service.LONG_RUNNING else 0))
    config = None
    try:
        config = configmod.load(args.config, args.data_dir, args.archive)
        return args.func(args, config)
    except DigestError as err:
        print(f"kvm-digest: error: {redact.text(str(err))}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0
    except (OSError, sqlite3.Error) as err:
        from bot.store import damage, writable

        if config is not None and damage.is_damage(err):
            # Bytes gone wrong in the file: freeing disk space would not help.
            said = damage.damaged_index(config.index_path, err)
            print(f"kvm-digest: error: {said}", file=sys.stderr)
            return 1
        # A full disk, a read-only file system, another owner: say which, in
        # one line; the transaction in progress was rolled back and the
        # archive head moves last, so running the command again is safe.
        roots = [config.data_dir, config.archive_path] if config else []
        said = writable.explain(err, roots)
        print(f"kvm-digest: error: {said}; then run the command again", file=sys.stderr)
        return 1
