"""The CLI tells the truth: --version, --help that explains, read-only
commands that do not invent a data dir, no stray lock file, an outbox an
operator can act on, a man page that matches the parser."""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from bot.cli import build_parser, main
from bot.store.archive import WriterLock
from tests.test_delivery import Setup

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "kvm-sample.mbox"


def test_version_is_git_s(capsys: pytest.CaptureFixture) -> None:
    """--version names the commit that runs (setuptools-scm's reading of git)."""
    from setuptools_scm import get_version

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    said = capsys.readouterr().out
    expected = get_version(root=str(ROOT))
    assert said == f"kvm-digest {expected}\n"
    head = git("rev-parse", "HEAD")
    tagged = git("tag", "--points-at", "HEAD")
    node = re.search(r"\+g([0-9a-f]{7,})", expected)
    assert (node is not None and head.startswith(node.group(1))) or tagged, expected


def test_the_bots_mail_names_its_version() -> None:
    """X-Mailer on replies and on digests, read from the raw bytes."""
    from bot.delivery.mail import Identity, address, compose, prepare_digest
    from bot.version import version

    me = Identity("kvm-digest@example.org")
    reply = compose(me, "a@example.org", "Re: help", "the commands\n", "<r@example.org>")
    digest = address(prepare_digest(me, "KVM mailing list update", "x\n"), me, "a@x.org", "<d@x>")
    for raw in (reply, digest):
        head = raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
        assert head.count(b"X-Mailer: kvm-digest " + version().encode()) == 1, head


def git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_a_copy_without_git_metadata_says_0_0(tmp_path: Path) -> None:
    """The package's files alone (no .git, not installed, nothing built) say 0.0,
    the version a wheel built from such a copy gets."""
    copy = tmp_path / "copy"
    shutil.copytree(ROOT / "bot", copy / "bot", ignore=shutil.ignore_patterns("_version.py"))
    (copy / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    # -S: no site-packages, so neither this checkout's install nor setuptools-scm.
    out = subprocess.run(
        [sys.executable, "-S", "-c", "from bot.version import version; print(version())"],
        env={"PYTHONPATH": str(copy)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out == "0.0\n"


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_command_explains_itself_in_its_help() -> None:
    commands = subcommands()
    assert {"import", "digest", "fetch", "outbox", "fsck", "run"} <= set(commands)
    for name, parser in commands.items():
        help_text = parser.format_help()
        # More than the one-line summary: a sentence on what it does.
        assert parser.description and parser.description.count(". ") >= 1, name
        assert parser.description.split(". ")[0] in " ".join(help_text.split()), name


@pytest.mark.parametrize(
    "args",
    [
        ["outbox"],
        ["outbox", "--failed"],
        ["subscribers", "list"],
        ["digest", "--all"],
        ["fsck"],
        ["reindex"],
    ],
)
def test_read_only_commands_on_a_missing_data_dir_say_so(cli, data_dir: Path, args) -> None:
    result = cli(*args)
    assert result.code == 1
    assert result.err.count("\n") == 1 and result.err.startswith("kvm-digest: error: ")
    assert str(data_dir) in result.err
    assert not data_dir.exists()  # nothing was created


def test_no_lock_file_is_left_behind(cli, data_dir: Path) -> None:
    assert cli("import", SAMPLE).code == 0
    assert cli("reindex").out == "indexed 63 messages\n"
    assert sorted(p.name for p in data_dir.iterdir() if p.name == "lock") == []
    # While a writer holds it, the lock still keeps a second writer out.
    with WriterLock(data_dir):
        held = cli("reindex")
        assert held.code == 1 and "another kvm-digest process" in held.err
    assert not (data_dir / "lock").exists()
    assert cli("reindex").code == 0


async def test_outbox_shows_times_and_retries_or_purges_failed_mail(
    cli,
    data_dir: Path,
    sink,
) -> None:
    setup = Setup(data_dir, sink)
    sink.handler.refuse = {
        "gone@example.org": "550 5.1.1 no such user",
        "away@example.org": "550 5.1.1 no such user",
    }
    setup.subscribe("ok@example.org", "gone@example.org", "away@example.org")
    setup.post(2)
    setup.run()
    await setup.sender.flush()
    listing = cli("outbox", "--failed").out.splitlines()
    rows = {line.split("\t")[2]: line.split("\t") for line in listing}
    assert sorted(rows) == ["away@example.org", "gone@example.org"]
    fields = rows["gone@example.org"]
    assert fields[3] == "failed"
    assert re.fullmatch(r"queued \d{4}-\d\d-\d\d \d\d:\d\d UTC, failed", fields[4])
    assert fields[6] == "550 5.1.1 no such user"
    gone_id, away_id = int(fields[0]), int(rows["away@example.org"][0])

    # The address is fixed: send that one again; drop the other for good.
    sink.handler.refuse = {}
    assert cli("outbox", "retry", gone_id).out.startswith("queued 1 failed mails again")
    queued = cli("outbox").out.splitlines()
    states = {line.split("\t")[2]: line.split("\t") for line in queued}
    assert [states[a][3] for a in ("gone@example.org", "away@example.org")] == ["queued", "failed"]
    assert ", next try " in states["gone@example.org"][4]
    await setup.sender.flush()
    assert [r.recipients for r in sink.received][-1] == ["gone@example.org"]
    assert cli("outbox", "purge").out == "deleted 1 failed mails\n"
    assert cli("outbox").out == "the outbox is empty\n"
    conn = sqlite3.connect(data_dir / "index.sqlite3")
    statuses = dict(conn.execute("SELECT id, status FROM outbox").fetchall())
    conn.close()
    assert away_id not in statuses and statuses[gone_id] == "sent"
    assert sorted(statuses.values()) == ["sent", "sent"]
    assert "mail ids go with" in cli("outbox", "list", 3).err


def test_the_man_page_is_generated_from_the_parser() -> None:
    from scripts.manpage import render

    shipped = (ROOT / "man" / "kvm-digest.1").read_text()
    assert shipped == render(), "the parser changed: run .venv/bin/python scripts/manpage.py"
    for name in subcommands():  # roff escapes every "-"
        escaped = name.replace("-", "\\-")
        assert f"kvm\\-digest\\fR \\fI\\,{escaped}" in shipped, name


def shipped_config() -> str:
    """config/kvm-digest.toml as committed (the file itself outside a git checkout)."""
    committed = subprocess.run(
        ["git", "-C", str(ROOT), "show", "HEAD:config/kvm-digest.toml"],
        capture_output=True,
        text=True,
        check=False,
    )
    if committed.returncode == 0:
        return committed.stdout
    return (ROOT / "config" / "kvm-digest.toml").read_text()


def test_the_readme_first_job_runs_on_a_fresh_clone(
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's first command block: no ../shared, and its main job works."""
    text = (ROOT / "README.md").read_text()
    block = text.split("```sh\n", 1)[1].split("```", 1)[0]
    assert "../shared" not in block
    commands = [
        shlex.split(part)[1:]
        for part in block.splitlines()[0].split("&&")
        if part.strip().startswith(".venv/bin/kvm-digest")
    ]
    assert [c[0] for c in commands] == ["import", "digest"]
    # A clone as shipped, in a directory of its own: the committed config
    # (not the checkout's, which its user may have edited) and the samples.
    clone = tmp_path / "clone"
    (clone / "config").mkdir(parents=True)
    (clone / "config" / "kvm-digest.toml").write_text(shipped_config())
    (clone / "samples").symlink_to(ROOT / "samples")
    monkeypatch.chdir(clone)
    imported = cli(*commands[0])
    assert imported.out == "samples/kvm-sample.mbox: 63 imported, 0 duplicates, 0 rejected\n"
    digest = cli(*commands[1])
    assert digest.code == 0 and digest.out.startswith("From 000000000 to ")
    assert "[PATCH v2 1/1] virtio: add driver_override support" in digest.out.splitlines()
    # The second line runs the tests, setting up first if needed (scripts/test).
    test_command = shlex.split(block.splitlines()[1])[0]
    assert test_command == "scripts/test"
    script = (ROOT / test_command).read_text()
    assert "scripts/setup" in script and "-m pytest" in script
