"""Hostile and broken mail through every door: import, IMAP, LMTP.

Every message is either stored and rendered readably or rejected with a
logged reason; whatever comes after it is still processed.
"""

from __future__ import annotations

import asyncio
import logging
import re
import smtplib

import pytest

from bot.intake.imap import Listener, Route
from tests.dovecot import Dovecot
from tests.mailfactory import DATA, KVMARM, delivered, mail

HOSTILE = DATA / "hostile"
REJECTED = {"empty.eml", "not-mail.bin"}
FILES = sorted(p for p in HOSTILE.iterdir() if p.name != "README.md")
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def good(i: int) -> bytes:
    return mail(
        f"[PATCH] good one {i}",
        f"good{i}@example.org",
        minutes=i,
        headers={"List-Id": "<kvmarm.lists.cs.columbia.edu>"},
    )


def test_import_each_hostile_message_followed_by_a_good_one(cli, tmp_path, caplog):
    imported, rejected = 0, 0
    for i, path in enumerate(FILES):
        pair = tmp_path / f"{i}.mbox"
        # An mbox of the hostile message and a good one after it.
        hostile = path.read_bytes()
        pair.write_bytes(
            b"From x Thu Jan  1 00:00:00 1970\n"
            + re.sub(rb"(?m)^(>*From )", rb">\1", hostile)
            + b"\nFrom x Thu Jan  1 00:00:00 1970\n"
            + good(i)
            + b"\n"
        )
        result = cli("import", pair)
        counts = result.out.strip().rpartition(": ")[2]
        if path.name in REJECTED:
            assert counts == "1 imported, 0 duplicates, 1 rejected", path.name
            rejected += 1
        else:
            assert counts == "2 imported, 0 duplicates, 0 rejected", (path.name, result.err)
            imported += 1
    assert rejected == len(REJECTED)
    reasons = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("the message is empty" in r for r in reasons)
    assert any("does not start with a mail header" in r for r in reasons)
    text = cli("digest", "--all").out
    assert not CONTROL.search(text)  # rendered readably: no NUL, no escapes
    for i in range(len(FILES)):
        assert f"New:  good one {i}\n" in text
    # What each hostile message became:
    assert "[PATCH] café über naïve" in text  # latin-1 bytes in the header
    assert "[PATCH] zażółć gęślą jaźń" in text  # UTF-8 bytes in the header
    assert "Café au lait, naïveté." in text  # a charset that lied
    assert "[PATCH] {{ 7 * 7 }} {% raw %} not a template" in text  # never evaluated
    assert "{{ config }}" not in text.split("not a template")[0]
    assert "Cover letter in HTML." in text  # HTML-only, tags stripped
    assert "The fix is attached." in text  # patch as an attachment
    assert "[PATCH] bell escape [31m red del" in text  # control characters removed
    assert "New:  duplicate id, first" in text and "New:  duplicate id, second" in text
    assert "New:  1000 header lines" in text and "New:  60 nested multiparts" in text


def test_a_50_mb_message_is_rejected_and_the_next_one_imported(cli, tmp_path, caplog):
    box = tmp_path / "big.mbox"
    with box.open("wb") as f:
        f.write(b"From x Thu Jan  1 00:00:00 1970\n")
        f.write(mail("[PATCH] 50 MB", "big@example.org", body=""))
        line = b"+" + b"x" * 99 + b"\n"
        f.write(line * (50 * 1024 * 1024 // len(line)))
        f.write(b"\nFrom x Thu Jan  1 00:00:00 1970\n" + good(1) + b"\n")
    result = cli("import", box)
    assert result.out.strip().endswith("1 imported, 0 duplicates, 1 rejected")
    assert any("more than the limit of 10485760" in r.getMessage() for r in caplog.records)


async def test_hostile_mail_through_imap(store, caplog):
    server = Dovecot().start()
    try:
        # Hostile mail as the list would deliver it: the IMAP door archives
        # only mail that proves it came through the list.
        raws = [delivered(p.read_bytes(), KVMARM) for p in FILES if p.name not in REJECTED]
        server.append(*raws, delivered(good(99), KVMARM))
        settings = server.imap_settings(batch=5)
        listener = Listener(settings, store.importer, Route("kvmarm.lists.cs.columbia.edu", "", ""))
        stop = asyncio.Event()
        task = asyncio.create_task(listener.run(stop))
        await asyncio.wait_for(listener.ready.wait(), 30)
        stop.set()
        await task
    finally:
        server.cleanup()
    assert listener.failures == 0
    subjects = {r[0] for r in store.index.conn.execute("SELECT subject FROM messages")}
    assert "[PATCH] good one 99" in subjects
    assert len(subjects) == len(raws) + 1


async def test_hostile_mail_to_the_command_server(tmp_path):
    from tests.smtpsink import Sink
    from tests.test_commands import BOT, Bot

    sink = Sink().start()
    bot = await Bot(tmp_path / "var", sink, max_size=1_000_000).start()
    try:
        refused = []
        for path in FILES:
            raw = path.read_bytes().replace(b"kvmarm@lists.cs.columbia.edu", BOT.encode())
            raw = re.sub(rb"(?m)^List-Id:.*\n", b"", raw).replace(b"\n", b"\r\n")
            try:
                await bot.deliver(raw or b"\r\n")
            except smtplib.SMTPDataError as err:
                refused.append((path.name, err.smtp_code))
        # Lines longer than SMTP allows (RFC 5321: 1,000 octets) are refused
        # by the server with 500; everything else is queued durably...
        too_long = [
            (p.name, 500) for p in FILES if any(len(x) > 998 for x in p.read_bytes().split(b"\n"))
        ]
        assert refused == too_long
        assert bot.desk.process() == len(FILES) - len(too_long)  # ...and handled, no crash
        await bot.sender.flush()
        await bot.deliver(
            b"From: una@example.org\r\nSubject: help\r\n"
            b"Message-ID: <after@example.org>\r\n\r\nhelp\r\n"
        )
        bot.desk.process()
        await bot.sender.flush()
    finally:
        await bot.close()
        sink.stop()
    assert any(r.recipients == ["una@example.org"] for r in sink.received)
    for r in sink.received:
        assert "\n" not in (r.message["Subject"] or "")


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_parse_never_raises_anything_but_mail_error(path):
    from bot.errors import MailError
    from bot.parse.message import parse_message

    try:
        parsed = parse_message(path.read_bytes())
    except MailError:
        assert path.name in REJECTED
        return
    assert not CONTROL.search(parsed.subject.full + parsed.from_name + parsed.commit_message)


def test_logging_stays_quiet_about_hostile_content(caplog):
    caplog.set_level(logging.DEBUG)
    from bot.parse.message import parse_lenient

    for path in FILES:
        parse_lenient(path.read_bytes())
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# Senders git's libraries trim to nothing or to less: libgit2 strips white
# space, quotes, backslashes and ,:;<> from both ends of a name and refuses an
# empty one, while git fast-import writes what it is given.
TRIMMED_SENDERS = ["\\", "'\\' <\\>", '"," <;>', "\\ann\\ <ann@example.org>", "<>"]


@pytest.mark.parametrize("sender", TRIMMED_SENDERS)
def test_a_sender_git_trims_is_written_alike_by_both_writers(tmp_path, sender):
    import subprocess

    from bot.parse.message import parse_message
    from bot.store.archive import FAST_IMPORT_BATCH, Archive

    def author(archive: Archive, rev: str) -> str:
        text = subprocess.run(
            ["git", "-C", str(archive.path), "cat-file", "commit", rev],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return next(line for line in text.splitlines() if line.startswith("author "))

    raws = [mail("odd sender", f"m{i}@example.org", frm=sender) for i in range(FAST_IMPORT_BATCH)]
    alone = Archive.create(tmp_path / "alone.git")
    ids = alone.start_append([(raws[0], parse_message(raws[0]))]).ids
    batched = Archive.create(tmp_path / "batched.git")
    with batched.bulk():
        pending = batched.start_append([(raw, parse_message(raw)) for raw in raws])
        pending.wait()
    # libgit2 wrote the first; fast-import wrote all of them, the first alike.
    assert author(alone, ids[0]) == author(batched, pending.ids[0])
    assert author(batched, "master") == author(batched, pending.ids[0])
    name = author(alone, ids[0]).removeprefix("author ").partition(" <")[0]
    assert name and name[0] not in "\\'\",;<> " and name[-1] not in "\\'\",;<> "
