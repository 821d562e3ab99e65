"""Start-up: the command line loads only what a command needs.

Importing the daemon's machinery (IMAP, SMTP, the scheduler, libgit2) costs
several times a whole one-day digest, so `kvm-digest digest` must not pay for
it. Checked in a fresh interpreter, where sys.modules shows what was loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.mailfactory import Store, mail

HEAVY = ("aioimaplib", "aiosmtpd", "aiosmtplib", "apscheduler", "asyncio")

PROBE = """
import json, sys
sys.argv = ["kvm-digest", *json.loads(sys.argv[1])]
from bot import cli
code = cli.main(sys.argv[1:]) if len(sys.argv) > 1 else 0
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def loaded(*args: str) -> tuple[int, set[str]]:
    """Run the CLI with `args` in a fresh interpreter; its exit code and modules."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(list(args))],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result = json.loads(out.splitlines()[-1])
    return result["code"], {m.split(".")[0] for m in result["modules"]}


def test_importing_the_cli_loads_no_daemon_machinery():
    _, modules = loaded()
    assert modules.isdisjoint(HEAVY), modules & set(HEAVY)
    assert "pygit2" not in modules and "jinja2" not in modules


def test_a_digest_of_a_caught_up_index_loads_neither_libgit2_nor_the_daemon(tmp_path):
    store = Store(tmp_path)
    store.importer.run([("1", mail("[PATCH] start-up", "s1@x"))], "test")
    store.index.close()
    code, modules = loaded("--data-dir", str(tmp_path), "digest", "--all")
    assert code == 0
    assert modules.isdisjoint(HEAVY), modules & set(HEAVY)
    assert "pygit2" not in modules
    assert "jinja2" in modules  # it renders


def test_a_digest_still_catches_up_an_index_behind_the_archive(tmp_path, capsys):
    """The ref shortcut must never hide new mail: behind means libgit2 and catch-up."""
    store = Store(tmp_path)
    store.importer.run([("1", mail("[PATCH] first", "f1@x"))], "test")
    store.index.clear()
    store.index.close()
    code, modules = loaded("--data-dir", str(tmp_path), "digest", "--all")
    assert code == 0
    assert "pygit2" in modules
    from bot.store.index import Index

    index = Index(tmp_path / "index.sqlite3")
    assert index.count() == 1
    index.close()


def test_quick_head_agrees_with_libgit2_loose_and_packed(tmp_path):
    """The ref read as a file is the head libgit2 reports, before and after git gc."""
    from bot.store.refs import quick_head

    store = Store(tmp_path)
    store.importer.run(
        [("1", mail("[PATCH] one", "q1@x")), ("2", mail("[PATCH] two", "q2@x"))], "t"
    )
    archive = tmp_path / "archive.git"
    assert quick_head(archive) == store.archive.head()
    subprocess.run(["git", "-C", str(archive), "pack-refs", "--all"], check=True)
    assert not (archive / "refs" / "heads" / "master").exists()
    assert quick_head(archive) == store.archive.head()


def test_quick_head_is_unsure_rather_than_wrong(tmp_path):
    from bot.store.refs import quick_head

    assert quick_head(tmp_path / "missing.git") is None
    (tmp_path / "refs" / "heads").mkdir(parents=True)
    (tmp_path / "refs" / "heads" / "master").write_text("ref: refs/heads/other\n")
    assert quick_head(tmp_path) is None  # a symbolic ref: libgit2 decides
    (tmp_path / "refs" / "heads" / "master").write_text("not a commit id\n")
    assert quick_head(tmp_path) is None


def kvm_digest(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_bad_cron_is_a_config_error_wherever_the_schedule_is_used(tmp_path):
    """The full check (APScheduler) runs where a schedule is used; the shape check always."""
    store = Store(tmp_path / "var")
    store.importer.run([("1", mail("[PATCH] cron", "c1@x"))], "test")
    store.index.close()
    config = tmp_path / "bad.toml"
    config.write_text('[schedule]\ndaily = "0 25 * * *"\n')  # cron-shaped, no hour 25
    base = ("--config", str(config), "--data-dir", str(tmp_path / "var"))
    said = "[schedule] daily = '0 25 * * *' is not a cron expression"
    checked = kvm_digest(*base, "check-config")  # lists every problem, on stdout
    assert checked.returncode == 1 and f"problem: {said}" in checked.stdout
    for command in (["run"], ["send-now"]):
        out = kvm_digest(*base, *command)
        assert out.returncode == 1, (command, out.stderr)
        assert said in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
    assert kvm_digest(*base, "digest", "--all").returncode == 0  # no schedule used
    config.write_text('[schedule]\nweekly = "every monday"\n')
    out = kvm_digest(*base, "digest", "--all")
    assert out.returncode == 1
    assert "[schedule] weekly = 'every monday' is not a cron expression" in out.stderr


def test_each_group_registers_exactly_the_commands_it_names():
    """The CLI registers only the group a command line names: each group's
    COMMANDS must be what its register() adds, or a command would vanish."""
    from bot import cli

    everything = set()
    for group in cli.GROUPS:
        parser = cli.build_parser(group.COMMANDS[0])
        (sub,) = [a for a in parser._actions if a.dest == "command"]
        assert tuple(sub.choices) == group.COMMANDS, group.__name__
        everything |= set(sub.choices)
    (sub,) = [a for a in cli.build_parser()._actions if a.dest == "command"]
    assert set(sub.choices) == everything


def test_the_command_is_found_past_global_options_or_not_at_all():
    from bot.cli import named_command

    assert named_command(["--data-dir", "x", "digest", "--all"]) == "digest"
    assert named_command(["--config=c.toml", "-vv", "--archive", "a", "run"]) == "run"
    assert named_command(["-v", "--verbose", "import", "f"]) == "import"
    # Abbreviated or unknown options, --help: argparse reads them, every command known.
    assert named_command(["--conf", "digest", "import", "f"]) is None
    assert named_command(["--help"]) is None
    assert named_command([]) is None


def test_a_command_line_with_one_group_parses_as_with_all(capsys):
    """What argparse makes of a command line, or says against it, is the
    same with only the named group registered as with every command."""
    from bot.cli import build_parser, named_command

    lines = [
        ["--data-dir", "d", "digest", "--since", "2021-03-01", "--style", "brief"],
        ["digest", "--all", "--bogus"],
        ["digest"],
        ["-v", "outbox", "retry", "3"],
        ["subscribers", "add", "a@example.org"],
    ]
    for argv in lines:
        said = []
        for parser in (build_parser(), build_parser(named_command(argv))):
            try:
                args = vars(parser.parse_args(argv))
            except SystemExit as stop:
                args = {"exit": stop.code}
            args.pop("func", None)
            said.append((args, capsys.readouterr().err))
        assert said[0] == said[1], argv
