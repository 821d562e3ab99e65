"""One message's data never aborts a digest run (issue 19, finding 1).

A `[PATCH]` dated `Fri, 31 Dec 9999 23:59:59 -2359` (valid syntax, the year
10000 in UTC) and a reply to it stopped every periodic digest for good: the
"Discussion on earlier series" line formatted the raw Date, the run rolled
back, its range never advanced. Now every time the index keeps is checked
where it is parsed (the window of arrival times), formatting a date never
raises, and a series, entry or topic that still cannot be shown is left
out and logged while the rest of the digest goes out and the schedule
moves on. Digests go through the real periodic run to a real relay.
"""

from __future__ import annotations

import logging
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot import record
from bot.digest import build, versions
from bot.digest.build import environment
from tests.mailfactory import mail
from tests.test_delivery import Setup

Y10K = "Fri, 31 Dec 9999 23:59:59 -2359"


@pytest.fixture
def setup(tmp_path, sink) -> Setup:
    return Setup(tmp_path / "s", sink)


def dated(subject: str, msgid: str, date: str, **kwargs) -> bytes:
    """A message whose only time is `date`: no Received stamp to fall back on."""
    raw = mail(subject, msgid, **kwargs).decode()
    raw = re.sub(r"(?m)^Received: .*\n", "", raw)
    return re.sub(r"(?m)^Date: .*$", f"Date: {date}", raw, count=1).encode()


def bodies(sink) -> list[str]:
    return [r.message.get_payload(decode=True).decode() for r in sink.received]


def ranges_of(setup: Setup) -> list[tuple[str, str]]:
    return setup.conn.execute("SELECT start_id, end_id FROM digests ORDER BY id").fetchall()


async def test_a_year_10000_post_and_its_replies_never_stop_the_digests(setup, sink):
    setup.subscribe("a@example.org")
    setup.post(1)
    setup.store.add(
        dated("[PATCH v1 0/1] far future", "y10k@x", Y10K),
        dated("[PATCH v1 1/1] far future", "y10k-1@x", Y10K, irt="y10k@x", refs=["y10k@x"]),
    )
    assert setup.run().recipients == 1
    # The next day: a reply to it (the "Discussion on earlier series" line)
    # and its v2 (the "supersedes v1 (date)" line).
    setup.store.add(
        mail("Re: [PATCH v1 0/1] far future", "r@x", irt="y10k@x", refs=["y10k@x"], minutes=60),
        mail("[PATCH v2 0/1] far future", "v2@x", minutes=61),
        mail("[PATCH v2 1/1] far future", "v2-1@x", irt="v2@x", refs=["v2@x"], minutes=61),
    )
    assert setup.run().recipients == 1
    setup.post(1, start=5)
    assert setup.run().recipients == 1
    await setup.sender.flush()
    sink.wait_for(3)
    (first, second, third) = ranges_of(setup)
    assert first[1] == second[0] and second[1] == third[0]  # the schedule moved every time
    text = bodies(sink)[1]
    assert "===== Discussion on earlier series =====" in text
    # Its Date is a broken clock: the arrival time of the message before it stands in.
    assert "posted 2021-03-01, 1 reply" in text
    assert "supersedes v1 (2021-03-01)" in text
    assert "9999" not in text and "10000" not in text


def test_an_impossible_date_is_not_kept(store):
    store.add(dated("[PATCH] old clock", "old@x", "Thu, 01 Jan 1970 00:00:00 +0000"))
    store.add(dated("[PATCH] far clock", "far@x", Y10K))
    assert store.row("old@x")["date"] is None
    assert store.row("far@x")["date"] is None


async def test_an_index_that_holds_an_impossible_date_still_renders(setup, sink):
    """An index written before the dates were checked may hold any time at all."""
    setup.subscribe("a@example.org")
    setup.store.add(mail("[PATCH v1 0/1] thing", "v1@x"), mail("[PATCH v1 1/1] thing", "p@x"))
    setup.run()
    with setup.conn:
        setup.conn.execute("UPDATE messages SET date = 253402387139")  # 10000-01-01
    setup.store.add(
        mail("Re: [PATCH v1 0/1] thing", "r@x", irt="v1@x", refs=["v1@x"], minutes=60),
        mail("[PATCH v2 0/1] thing", "v2@x", minutes=61),
    )
    setup.run()
    await setup.sender.flush()
    text = bodies(sink)[-1]
    assert "posted unknown date, 1 reply" in text
    assert "[PATCH v2 0/1] thing" in text


@given(st.integers(min_value=-(2**70), max_value=2**70))
def test_a_day_is_always_a_date_or_unknown(when):
    assert re.fullmatch(r"\d{4}-\d\d-\d\d|unknown date", versions.day(when))


async def test_a_series_the_template_cannot_render_is_left_out(tmp_path, sink, caplog):
    """A custom template that assumes ASCII meets a subject that is not."""
    shipped = environment().loader.get_source(environment(), build.TEMPLATE)[0]
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / build.TEMPLATE).write_text(
        shipped.replace("{{ s.subject }}", '{{ s.subject.encode("ascii").decode() }}')
    )
    setup = Setup(tmp_path / "s", sink)
    setup.config = record.replace(
        setup.config, digest=record.replace(setup.config.digest, templates=str(templates))
    )
    setup.env = environment(templates)
    setup.subscribe("a@example.org")
    setup.store.add(
        mail("[PATCH] plain", "plain@x"),
        mail("[PATCH] naïve café", "cafe@x", minutes=1),
        mail("[PATCH] also plain", "also@x", minutes=2),
    )
    with caplog.at_level(logging.ERROR):
        assert setup.run().recipients == 1
    await setup.sender.flush()
    (text,) = bodies(sink)
    patch_list = text.split("===== Patch list")[1].split("=====")[1]
    assert "[PATCH] plain" in patch_list and "[PATCH] also plain" in patch_list
    assert "café" not in patch_list
    assert "New:  naïve café" in text  # its entry renders: only the line that broke is out
    assert any("naïve café" in r.getMessage() for r in caplog.records)


async def test_a_series_whose_facts_break_is_left_out_and_the_rest_goes(
    setup, sink, monkeypatch, caplog
):
    """A bug meeting one series' data (here: a date formatter that raises) costs that line."""
    setup.subscribe("a@example.org")
    setup.store.add(mail("[PATCH v1 0/1] bad", "bad@x"), mail("[PATCH v1 0/1] good", "good@x"))
    setup.run()
    setup.store.add(
        mail("Re: [PATCH v1 0/1] bad", "r1@x", irt="bad@x", refs=["bad@x"], minutes=60),
        mail("Re: [PATCH v1 0/1] good", "r2@x", irt="good@x", refs=["good@x"], minutes=60),
    )
    real = versions.day
    bad_day = setup.store.row("bad@x")["received"]

    def fragile(when):
        if when == bad_day:
            raise ValueError("year 10000 is out of range")
        return real(when)

    # Both series were posted in the same second: make them differ.
    with setup.conn:
        setup.conn.execute("UPDATE messages SET date = date + 86400 WHERE message_id = 'good@x'")
    monkeypatch.setattr(versions, "day", fragile)
    with caplog.at_level(logging.ERROR):
        result = setup.run()
    assert result.recipients == 1
    await setup.sender.flush()
    text = bodies(sink)[-1]
    discussion = text.split("===== Discussion on earlier series =====")[1]
    assert "[PATCH v1 0/1] good" in discussion and "bad" not in discussion
    assert any("year 10000" in (r.exc_text or "") for r in caplog.records)


async def test_a_topic_that_cannot_be_built_costs_only_its_readers(
    setup, sink, monkeypatch, caplog
):
    from bot.delivery import subscribers

    with setup.conn:
        subscribers.subscribe(setup.conn, "all@example.org")
        subscribers.subscribe(setup.conn, "boom@example.org", topic="s:boom")
    setup.post(2)
    real = build.build

    def flaky(conn, rng, *args, query=None, **kwargs):
        if query == "s:boom":
            raise RuntimeError("a bug meeting this topic")
        return real(conn, rng, *args, query=query, **kwargs)

    monkeypatch.setattr(build, "build", flaky)
    with caplog.at_level(logging.ERROR):
        result = setup.run()
    assert result.recipients == 1
    (end,) = setup.conn.execute("SELECT end_id FROM schedules WHERE name = 'daily'").fetchone()
    (head,) = setup.conn.execute("SELECT commit_id FROM messages ORDER BY seq DESC").fetchone()
    assert end == head  # the schedule moved on
    await setup.sender.flush()
    assert [r.recipients for r in sink.wait_for(1)] == [["all@example.org"]]
    assert any("topic 's:boom'" in r.getMessage() for r in caplog.records)
