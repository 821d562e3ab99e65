"""The command line: bad input gets one clear line, and nothing stored changes."""

from __future__ import annotations

import sqlite3

import pytest

from bot.digest import ranges
from bot.errors import RangeError
from tests.conftest import archive_ids
from tests.mailfactory import DATA, mail

SLICE = DATA / "kvmarm-slice.mbox"


@pytest.fixture
def imported(cli, data_dir):
    assert cli("import", SLICE).code == 0
    return archive_ids(data_dir)


def unchanged(cli, data_dir, ids, before):
    assert archive_ids(data_dir) == ids
    assert cli("digest", "--all").out == before


def one_line_error(result, *words):
    assert result.code == 1
    assert result.out == ""
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("kvm-digest: error: ")
    for word in words:
        assert word in lines[0]


def test_range_digest_matches_git_log_range(cli, data_dir, imported):
    a, b = imported[4], imported[9]
    out = cli("digest", "--range", f"{a[:7]}..{b[:12]}").out
    assert out.startswith(f"From {a[:9]} to {b[:9]}\n")
    # The range is git log A..B: five messages, A excluded.
    out2 = cli("digest", "--range", a[:9], b[:9]).out
    assert out == out2


def test_unknown_id(cli, data_dir, imported):
    before = cli("digest", "--all").out
    one_line_error(
        cli("digest", "--range", f"1234567..{imported[3][:9]}"),
        "no message in the archive has a commit id starting with 1234567",
    )
    unchanged(cli, data_dir, imported, before)


def test_start_after_end(cli, data_dir, imported):
    a, b = imported[9][:9], imported[2][:9]
    one_line_error(cli("digest", "--range", f"{a}..{b}"), "comes after its end", "swap")


@pytest.mark.parametrize("bad", ["xyz..abc", "12345..67890", "onlyone", "a..b..c"])
def test_malformed_ranges(cli, imported, bad):
    one_line_error(cli("digest", "--range", bad))


def test_ambiguous_id():
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE messages (seq INTEGER PRIMARY KEY, commit_id TEXT)")
    conn.executemany(
        "INSERT INTO messages (commit_id) VALUES (?)",
        [("abcdef1" + "0" * 33,), ("abcdef1" + "1" * 33,)],
    )
    with pytest.raises(RangeError, match="ambiguous"):
        ranges.resolve_id(conn, "abcdef1")
    assert ranges.resolve_id(conn, "abcdef11")[0] == 2


def test_empty_time_window(cli, imported):
    one_line_error(
        cli("digest", "--since", "2030-01-01"),
        "no message arrived",
        "the archive holds mail from 2019-",
    )
    one_line_error(cli("digest", "--since", "yesterday"), "not a date")
    one_line_error(
        cli("digest", "--since", "2021-03-02", "--until", "2021-03-01"),
        "must come after",
    )


def test_non_mail_file(cli, tmp_path, data_dir, imported):
    before = cli("digest", "--all").out
    junk = tmp_path / "photo.png"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    one_line_error(cli("import", junk), "is not mail")
    unchanged(cli, data_dir, imported, before)


def test_malformed_message_is_rejected_and_the_rest_imported(
    cli, tmp_path, data_dir, imported, caplog
):
    before_ids = list(imported)
    box = tmp_path / "mixed.mbox"
    good = mail("[PATCH] good one", "good@x", minutes=1000).decode()
    box.write_text(
        "From x Thu Jan  1 00:00:00 1970\nthis is not a header\n\n"
        "From x Thu Jan  1 00:00:00 1970\n" + good + "\n"
    )
    result = cli("import", box)
    assert result.code == 1  # something was rejected
    assert result.out.strip().endswith("1 imported, 0 duplicates, 1 rejected")
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"rejected {box} #1: it does not start with a mail header (Name: value)"
    ]
    assert archive_ids(data_dir)[:-1] == before_ids


def test_digest_before_any_import(cli):
    one_line_error(cli("digest", "--all"), "run `kvm-digest import SOURCE` first")


def test_bad_config(cli, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[digest]\ntopp = 3\n")
    one_line_error(cli("--config", bad, "check-config"), "unknown setting topp")
    bad.write_text("[digest]\ntop = 'fifteen'\n")
    one_line_error(cli("--config", bad, "check-config"), "must be a whole number")
    bad.write_text('[schedule]\ndaily = "every day"\n')
    one_line_error(cli("--config", bad, "check-config"), "is not a cron expression")
    bad.write_text('[imap]\nsecurity = "ssl"\n')
    one_line_error(cli("--config", bad, "check-config"), "[imap] security must be tls")
    bad.write_text("[digest\n")
    one_line_error(cli("--config", bad, "check-config"), "is not valid TOML")
    one_line_error(cli("--config", tmp_path / "missing.toml", "check-config"), "does not exist")


def test_shipped_example_config_is_valid(cli):
    from pathlib import Path

    shipped = Path(__file__).resolve().parents[1] / "config" / "kvm-digest.toml"
    result = cli("--config", shipped, "check-config")
    assert result.code == 0
    assert "is valid" in result.out


def test_admin_commands(cli, data_dir):
    assert cli("subscribers", "add", "A@Example.org", "--schedule", "weekly").out == (
        "added a@example.org (weekly)\n"
    )
    assert cli("subscribers", "list").out == "a@example.org\tweekly\tactive\t0 hard failures\n"
    assert cli("outbox").out == "the outbox is empty\n"
    cli("import", SLICE)
    from bot.store.index import Index

    index = Index(data_dir / "index.sqlite3")
    with index.conn:
        from bot.delivery import periodic

        periodic.ensure(index.conn, "weekly")
        periodic.move(index.conn, "weekly", 20)
    index.close()
    sent = cli("send-now", "--schedule", "weekly")
    assert sent.out == "weekly digest: 7 messages, queued for 1 subscribers\n"
    queued = cli("outbox").out.split("\t")
    assert queued[1:4] == ["digest", "a@example.org", "queued"]
    assert cli("subscribers", "remove", "a@example.org").out == "removed a@example.org\n"
    one_line_error(cli("subscribers", "remove", "a@example.org"), "is not subscribed")


def test_data_dir_from_environment_and_config(tmp_path, monkeypatch, capsys):
    from bot.cli import main

    monkeypatch.chdir(tmp_path)
    config = tmp_path / "c.toml"
    config.write_text(f'[data]\ndir = "{tmp_path / "from-config"}"\n')
    assert main(["--config", str(config), "check-config"]) == 0
    assert f"data directory: {tmp_path / 'from-config'}" in capsys.readouterr().out
    monkeypatch.setenv("KVM_DIGEST_DATA", str(tmp_path / "from-env"))
    assert main(["--config", str(config), "check-config"]) == 0
    assert f"data directory: {tmp_path / 'from-env'}" in capsys.readouterr().out
    assert main(["--config", str(config), "--data-dir", "cli", "check-config"]) == 0
    assert "data directory: cli" in capsys.readouterr().out
