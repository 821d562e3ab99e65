"""Parsing in worker processes ([import] workers): the same index, faults included.

The workers are real spawned processes (bot/parse/pool.py); the parse
functions below that crash or raise on a marker run inside them, as a bug
in the parser would.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import select
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from bot import config as configmod
from bot.errors import ArchiveError, ConfigError, MailError
from bot.intake.importer import Importer
from bot.parse.message import WIRE, ParsedMessage, packed, parse_message
from bot.parse.pool import RemoteTraceback, WorkerDied, parse_ahead
from bot.store.archive import Archive
from bot.store.index import DERIVED_TABLES, Index
from tests.mailfactory import first_commits, mail

ROOT = Path(__file__).resolve().parents[1]
COUNT = 1200
TABLES = DERIVED_TABLES
CLI = [sys.executable, "-m", "bot.cli"]


@pytest.fixture(scope="module")
def epoch(kvmarm_git: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first COUNT commits of the kvmarm bundle: enough for several chunks."""
    return first_commits(kvmarm_git, tmp_path_factory.mktemp("workers") / "0.git", COUNT)


def contents(db: Path) -> dict[str, list[tuple]]:
    """Every derived row of an index, and its failures without their timestamps."""
    conn = sqlite3.connect(db)
    try:
        out = {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall() for t in TABLES}
        out["failures"] = conn.execute(
            "SELECT source, reason, raw_hash FROM failures ORDER BY source"
        ).fetchall()
        out["meta"] = conn.execute("SELECT * FROM meta ORDER BY key").fetchall()
        return out
    finally:
        conn.close()


def imported(epoch: Path, data: Path, workers: int, extra: list[bytes]) -> dict[str, list[tuple]]:
    archive = Archive.create(data / "archive.git")
    index = Index(data / "index.sqlite3")
    try:
        importer = Importer(archive, index, max_size=1_000_000, workers=workers)
        mails = [(c, raw) for c, raw in Archive.open(epoch).walk() if raw is not None]
        # A message too large, one that is not mail, and copies: judged alike.
        mails[100:100] = [(f"extra{n}", raw) for n, raw in enumerate(extra)]
        counts = importer.run(mails, "test", save_position=lambda p: None)
        assert counts.imported >= COUNT - 10 and counts.rejected == 2 and counts.duplicates == 1
    finally:
        index.close()
    return contents(data / "index.sqlite3")


def test_import_with_two_workers_writes_the_same_index_as_with_one(epoch, tmp_path):
    extra = [b"x" * 1_100_000, b"\x00\x01 no header here\n", mail("[PATCH] twice", "t@x")]
    extra.append(extra[-1])
    one = imported(epoch, tmp_path / "one", 1, extra)
    two = imported(epoch, tmp_path / "two", 2, extra)
    assert len(one["messages"]) > COUNT - 10
    assert len(one["failures"]) == 0  # rejections are logged, not kept
    for table in one:
        assert one[table] == two[table], table
    heads = {refs(tmp_path / name / "archive.git") for name in ("one", "two")}
    assert len(heads) == 1  # the same commits, in the same order


def refs(repo: Path) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "master"], capture_output=True, text=True, check=True
    ).stdout


def test_mirror_indexing_with_two_workers_writes_the_same_index(epoch, tmp_path):
    tables = []
    for workers in (1, 2):
        index = Index(tmp_path / f"index-{workers}.sqlite3")
        try:
            assert index.catch_up(Archive.open(epoch), max_size=None, workers=workers) == COUNT
        finally:
            index.close()
        tables.append(contents(tmp_path / f"index-{workers}.sqlite3"))
    assert tables[0] == tables[1]
    assert len(tables[0]["messages"]) == COUNT


# -- when the workers start ---------------------------------------------------


def counted_source(items: list[tuple[int, bytes]], seen: list[int]):
    """The items, noting how many worker processes run when the first is read."""
    seen.append(len(multiprocessing.active_children()))
    yield from items


def test_early_workers_start_before_the_source_is_read():
    """An import or a rebuild: git's first reads overlap the workers' start-up."""
    items = [(n, mail(f"[PATCH] number {n}", f"m{n}@x", minutes=n)) for n in range(40)]
    seen: list[int] = []
    out = list(
        parse_ahead(counted_source(items, seen), parse_message, workers=2, chunk=4, early=True)
    )
    assert seen == [2]
    assert [result.message_id for _, _, result in out] == [f"m{n}@x" for n in range(40)]
    assert multiprocessing.active_children() == []  # stopped with the source's end


def test_workers_start_only_for_a_long_source_unless_early():
    """A catch-up of a few commits starts no process; a long one starts them once read."""
    items = [(n, mail(f"[PATCH] number {n}", f"m{n}@x", minutes=n)) for n in range(40)]
    seen: list[int] = []
    list(parse_ahead(counted_source(items, seen), parse_message, workers=2, chunk=4))
    assert seen == [0]
    short = [(0, mail("[PATCH] alone", "alone@x"))]
    started: list[int] = []
    spied = list(parse_ahead(counted_source(short, started), parse_message, workers=2, early=True))
    assert [result.message_id for _, _, result in spied] == ["alone@x"]  # parsed here
    assert multiprocessing.active_children() == []


def test_a_worker_has_the_parser_loaded_before_its_first_task():
    """Its first chunk waits for no import: the pool's parser is unpickled at start."""
    from bot.parse.pool import _Pool

    pool = _Pool(1, parse_message)
    try:
        # eval: a builtin, so unpickling this task imports nothing of ours.
        loaded = pool.executor.submit(eval, "'bot.parse.message' in __import__('sys').modules")
        assert loaded.result() is True
    finally:
        pool.close()


# -- how results come back ---------------------------------------------------


def test_every_hostile_message_comes_back_from_a_worker_as_parsed_here():
    """The wire (marshal, builtins only) loses nothing a parse can produce."""
    from tests.mailfactory import DATA

    raws = [p.read_bytes() for p in sorted((DATA / "hostile").iterdir()) if p.suffix != ".md"]
    raws += [
        mail("[PATCH v3 2/7] KVM: x86: a patch", "p@x", irt="c@x", refs=["c@x"]),
        mail("Re: [PATCH v3 2/7] KVM: x86: a patch", "r@x", body="Reviewed-by: R <r@x>\n"),
    ]
    items = list(enumerate(raws))
    pooled = list(parse_ahead(items, parse_message, workers=2, chunk=4, wire=WIRE))
    assert len(pooled) == len(raws)
    for (_, raw, result), expected in zip(pooled, map(parse_here, raws), strict=True):
        if isinstance(expected, Exception):
            assert type(result) is type(expected) and str(result) == str(expected)
        else:
            assert result == expected, raw[:80]
            assert type(result.subject) is type(expected.subject)


def parse_here(raw: bytes) -> object:
    try:
        return parse_message(raw)
    except Exception as err:  # compared with what the worker sent back
        return err


def unmarshallable(message: ParsedMessage) -> object:
    """A `pack` with a bug: a set of objects marshal cannot write."""
    return {object()} if message.kind == "patch" else packed(message)


def test_a_pack_that_marshal_cannot_write_falls_back_to_pickle():
    from bot.parse.pool import _parse_all

    raws = [mail("[PATCH] one", "one@x"), b"not mail"]
    values, errors = _parse_all(parse_message, raws, unmarshallable)
    assert isinstance(values, list) and isinstance(values[0], set)  # pickled, not lost
    assert [(i, type(err)) for i, err, _ in errors] == [(1, MailError)]


# -- faults in the workers ----------------------------------------------------


def faulty_parse(raw: bytes) -> str:
    """Runs in the workers: dies on one marker, raises on another."""
    if b"kill-the-worker" in raw:
        os.kill(os.getpid(), signal.SIGKILL)
    if b"poison" in raw:
        raise IndexError("string index out of range")
    if b"not mail" in raw:
        raise MailError("it is not mail")
    return parse_message(raw).message_id


def test_a_pool_broken_between_two_chunks_blames_neither_of_the_next():
    """A worker dies while the next chunks are sent: they are lost, not guilty.

    (The race a CI run met: the pool broke between two submissions, and
    submit() itself raised.)
    """
    from concurrent.futures.process import BrokenProcessPool

    from bot.parse.pool import _Pool

    pool = _Pool(1, faulty_parse)
    try:
        killer = pool.submit(faulty_parse, [b"Subject: kill-the-worker\n\nbody\n"])
        with pytest.raises(BrokenProcessPool):
            killer.result()
        good = [mail(f"[PATCH] after {n}", f"after{n}@x", minutes=n) for n in range(3)]
        assert pool.submit(faulty_parse, good) is None  # lost with the broken pool
        assert pool.broken
        assert pool.one_by_one(faulty_parse, good) == ["after0@x", "after1@x", "after2@x"]
        assert not pool.broken
    finally:
        pool.close()


def test_a_worker_that_dies_costs_only_its_message(tmp_path):
    items = [(n, mail(f"[PATCH] number {n}", f"m{n}@x", minutes=n)) for n in range(300)]
    items[37] = (37, b"Subject: kill-the-worker\n\nbody\n")
    items[201] = (201, b"Subject: kill-the-worker again\n\nbody\n")
    items[120] = (120, b"Subject: poison\n\nbody\n")
    items[150] = (150, b"not mail")
    items[160] = (160, None)  # a deletion: passed through, not parsed
    out = list(parse_ahead(items, faulty_parse, workers=2, chunk=8))
    assert [key for key, _, _ in out] == list(range(300))
    results = {key: result for key, _, result in out}
    assert isinstance(results.pop(37), WorkerDied)
    assert isinstance(results.pop(201), WorkerDied)
    poison = results.pop(120)
    assert isinstance(poison, IndexError) and isinstance(poison.__cause__, RemoteTraceback)
    assert "faulty_parse" in str(poison.__cause__)  # where in the worker it was raised
    assert isinstance(results.pop(150), MailError)
    assert results.pop(160) is None
    for key, result in results.items():
        assert result == parse_message(items[key][1]).message_id


def failing_source(count: int):
    for n in range(count):
        yield n, mail(f"[PATCH] n{n}", f"s{n}@x", minutes=n)
    raise ArchiveError("git cat-file failed: a damaged pack")


def test_a_source_error_comes_after_every_message_read_before_it():
    seen = []
    with pytest.raises(ArchiveError, match="damaged pack"):
        for key, _, result in parse_ahead(failing_source(250), faulty_parse, workers=2, chunk=8):
            seen.append((key, result))
    assert [key for key, _ in seen] == list(range(250))
    assert all(isinstance(result, str) for _, result in seen)


def descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rpartition(")")[2].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def test_sigkill_of_the_importer_leaves_no_process_behind(epoch, tmp_path):
    config = tmp_path / "kvm-digest.toml"
    config.write_text("[import]\nworkers = 2\n")
    proc = subprocess.Popen(
        [*CLI, "--config", str(config), "--data-dir", str(tmp_path), "-vv", "import", str(epoch)],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    for line in proc.stderr:
        if m := re.search(r"parsing ahead in 2 worker processes \(pids ([\d, ]+)\)", line):
            break
    else:
        pytest.fail(f"the import never said it started workers (exit {proc.wait()})")
    workers = {int(p) for p in m.group(1).split(", ")}
    below = descendants(proc.pid)
    assert workers <= below and len(workers) == 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    for pid in below:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue  # gone already
        try:
            ready, _, _ = select.select([fd], [], [], 30)
            assert ready, f"process {pid} of the killed import is still running"
        finally:
            os.close(fd)


# -- the setting ------------------------------------------------------------


def test_workers_default_to_the_cores_and_are_checked():
    assert configmod.from_table({}).import_.workers == len(os.sched_getaffinity(0))
    assert configmod.from_table({"import": {"workers": 1}}).import_.workers == 1
    with pytest.raises(ConfigError) as err:
        configmod.from_table({"import": {"workers": 0}})
    assert str(err.value).startswith("[import] workers must be a number of processes from 1 to 64")
    assert str(err.value).count(". ") == 0  # one sentence
    with pytest.raises(ConfigError, match="must be a whole number, not str 'all'"):
        configmod.from_table({"import": {"workers": "all"}})
    with pytest.raises(ConfigError, match="from 1 to 64"):
        configmod.from_table({"import": {"workers": 65}})


def test_a_machine_of_many_cores_gets_the_most_workers_not_an_error(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(96)))
    assert configmod.from_table({}).import_.workers == 64


def test_big_mail_is_parsed_a_budget_at_a_time_in_order(monkeypatch):
    """Bytes in flight are bounded too: chunks of big mail wait for room."""
    import bot.parse.pool as pool

    monkeypatch.setattr(pool, "BUDGET", 200_000)
    body = "x" * 100_000 + "\n"
    items = [(n, mail(f"[PATCH] big {n}", f"big{n}@x", minutes=n, body=body)) for n in range(40)]
    out = list(parse_ahead(items, faulty_parse, workers=2, chunk=4))
    assert [key for key, _, _ in out] == list(range(40))
    assert [result for _, _, result in out] == [f"big{n}@x" for n in range(40)]


def test_a_worker_outlives_the_sigterm_systemd_sends_to_the_whole_service():
    from bot.workers import spawned_pool

    workers = spawned_pool(1)
    try:
        pid = workers.submit(os.getpid).result(timeout=60)
        os.kill(pid, signal.SIGTERM)
        assert workers.submit(os.getpid).result(timeout=60) == pid  # the same one, working
    finally:
        workers.shutdown()


def test_a_chunk_of_big_mail_is_cut_short_by_its_bytes():
    """A task holds CHUNK messages, or fewer once they reach CHUNK_BYTES."""
    import bot.parse.pool as pool

    big = b"x" * (pool.CHUNK_BYTES // 3 + 1)
    items = iter([(n, big) for n in range(10)] + [(10, "not bytes")])
    part, ended, error = pool._take(items, pool.CHUNK, pool.CHUNK_BYTES)
    assert [key for key, _ in part] == [0, 1, 2] and not ended and error is None
    part, ended, error = pool._take(items, pool.CHUNK, pool.CHUNK_BYTES)
    assert [key for key, _ in part] == [3, 4, 5]
    rest = pool._take(items, pool.CHUNK, pool.CHUNK_BYTES), pool._take(items, 2, 1 << 30)
    assert [key for key, _ in rest[0][0]] == [6, 7, 8]
    assert [key for key, _ in rest[1][0]] == [9, 10] and not rest[1][1]
    assert pool._take(items, 2, 1 << 30) == ([], True, None)


def test_a_worker_yields_the_cpu_to_its_parent():
    from bot.workers import NICENESS, spawned_pool

    pool = spawned_pool(1)
    try:
        pid = pool.submit(os.getpid).result(timeout=60)
        mine = os.getpriority(os.PRIO_PROCESS, 0)
        assert os.getpriority(os.PRIO_PROCESS, pid) == min(19, mine + NICENESS)
        assert NICENESS > 0
    finally:
        pool.shutdown()
