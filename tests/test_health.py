"""Lasting problems are logged once when they start and once when they end."""

from __future__ import annotations

import logging

from bot.health import Problems, recorded
from bot.store.index import Index


def test_a_problem_is_said_once_counted_and_its_end_said_once(tmp_path, caplog):
    index = Index(tmp_path / "index.sqlite3")
    problems = Problems(index.path)
    caplog.set_level(logging.INFO, logger="kvm-digest.health")
    for n in range(100):
        problems.failing("relay", f"421 try later ({n})")
    assert problems.is_failing("relay")
    (state,) = recorded(index.conn)
    assert (state.check, state.ok, state.count) == ("relay", False, 100)
    problems.working("relay")
    problems.working("relay")
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert len(lines) == 2, lines
    assert lines[0].startswith("relay: 421 try later (0)")
    assert "after 100 failures" in lines[1]
    (state,) = recorded(index.conn)
    assert state.ok and state.count == 0
    problems.close()
    index.close()


def test_a_record_that_cannot_be_written_is_no_new_failure(tmp_path):
    problems = Problems(tmp_path / "missing-dir" / "index.sqlite3")
    assert problems.failing("disk", "database or disk is full")
    assert problems.is_failing("disk")
