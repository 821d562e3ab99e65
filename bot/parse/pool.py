"""Parsing ahead of the writer, in worker processes.

Parsing is most of an import's CPU and each message parses alone, so it can
spread over the cores; what it feeds, the archive append and the index rows,
must stay in one process and in archive order. `parse_ahead` keeps both: it
submits chunks of messages in order to a pool of processes and hands the
results back in the same order, with never more than a few chunks in
flight, so memory stays flat however long the source is.

Workers are started with "spawn": a fresh interpreter, which inherits no
SQLite connection, git pipe or lock of ours. Each one watches its parent and
exits when it dies, so a SIGKILL of the importer leaves no orphan behind,
and ignores SIGINT and SIGTERM, which the parent handles for all of them
(bot/workers.py).

A worker that dies (a crash in a C extension, the OOM killer) breaks the
pool. The chunks that were in flight are then parsed again in a new pool,
one message at a time, so the message that kills its worker again is known:
its result is a WorkerDied error, which callers treat as any other parser
error, and every other message is parsed as usual. Nothing is skipped and
nothing waits forever.
"""

from __future__ import annotations

import collections
import itertools
import logging
import marshal
import multiprocessing
import os
import pickle
import traceback
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool, ProcessPoolExecutor
from typing import Any, TypeVar

from bot.errors import DigestError
from bot.record import Wire
from bot.workers import spawned_pool

K = TypeVar("K")
V = TypeVar("V")
R = TypeVar("R")

log = logging.getLogger(__name__)

CHUNK = 256
"""Messages per task at most. Each task costs the writer's process a few
thread switches (the executor's feeder and result threads want the GIL the
writer holds), so fewer, larger tasks leave it more time: 256 rather than 32
made mirror indexing 12% faster (benchmarks/intake.py), for about 30 MB more
peak RSS in a large import (239 MB at 150,000 messages)."""
CHUNK_BYTES = 2 * 1024 * 1024
"""Bytes of mail per task at most (and one message beyond): about CHUNK
messages of kvmarm's (9.5 KB on average), fewer of a list of bigger mail, so
a worker's memory does not grow with the list's message size."""
AHEAD = 4
"""Chunks in flight per worker: while a worker parses one, the next waits
in its queue, so the writer never waits for a parse; no more than this many
chunks are held in memory. The writer sends no chunk while it writes a
batch of the index, so the queue must hold more than a batch's writing
time of parsing: with 2 a chunk, the cores stood idle 16% of a mirror
indexing (CPU time against twice the wall time), with 4, 11%."""
BUDGET = 64 * 1024 * 1024
"""Bytes of mail in flight at most (and one chunk beyond): a chunk of big
messages (up to [import] max_message_size each) must not multiply the
writer's memory by the number of chunks ahead."""


class WorkerDied(Exception):
    """The worker process parsing this message died, twice, on it alone."""


class RemoteTraceback(Exception):
    """Where a worker's parser raised: set as the error's cause, for the log."""

    def __str__(self) -> str:
        return f"\n{self.args[0]}"


def parse_ahead(
    items: Iterable[tuple[K, V]],
    parse: Callable[[bytes], R],
    workers: int,
    chunk: int = CHUNK,
    *,
    early: bool = False,
    wire: Wire | None = None,
) -> Iterator[tuple[K, V, R | Exception | None]]:
    """(key, value, parse(value)) for each item, in order; None for a non-bytes value.

    An exception `parse` raises is the result, not raised. `parse` must be
    picklable (a module's function, or a functools.partial of one). With
    `workers` <= 1, or a source too short to pay for starting processes,
    everything is parsed here. An error raised by `items` itself comes
    after the results of every item read before it.

    `early`: the caller expects a long source (an import, a rebuilt index),
    so the workers start before its first item is read, and their start-up
    (an interpreter and the parser's modules each) overlaps the source's
    own (git's rev-list, the first reads): 0.1 s of a 4 s mirror indexing
    (benchmarks/intake.py). Not for a catch-up of a few new commits, which
    would start processes only to stop them. `wire`: how results travel back
    (pickled when None).
    """
    source = iter(items)
    head: list[tuple[K, V]] = []
    error: Exception | None = None
    if workers > 1:
        pool = _Pool(workers, parse, wire) if early else None
        # Enough mail to pay for starting the workers: a chunk for each, or
        # the budget's worth of big messages.
        try:
            head, ended, error = _take(source, workers * chunk, BUDGET)
            if not ended:
                pool = pool or _Pool(workers, parse, wire)
                yield from _pooled(pool, head, source, parse, workers, chunk)
                return
        finally:
            if pool is not None:
                pool.close()
    for key, value in head:
        yield key, value, _parse_here(parse, value)
    if error is not None:
        raise error
    for key, value in source:
        yield key, value, _parse_here(parse, value)


def _take(
    source: Iterator[tuple[K, V]], count: int, size: int
) -> tuple[list[tuple[K, V]], bool, Exception | None]:
    """Up to `count` items, fewer once they hold `size` bytes of mail; whether
    the source ended with them, and the error that ended it early, if any."""
    items: list[tuple[K, V]] = []
    held = 0
    try:
        for item in source:
            items.append(item)
            if isinstance(item[1], bytes):
                held += len(item[1])
            if len(items) >= count or held >= size:
                return items, False, None
    except Exception as err:  # raised by parse_ahead once what came before is handed on
        return items, True, err
    return items, True, None


def _parse_here(parse: Callable[[bytes], R], value: object) -> R | Exception | None:
    if not isinstance(value, bytes):
        return None
    try:
        return parse(value)
    except Exception as err:  # the result: callers judge it (rejected, or kept as a failure)
        return err


def _pooled(
    pool: _Pool,
    head: list[tuple[K, V]],
    source: Iterator[tuple[K, V]],
    parse: Callable[[bytes], R],
    workers: int,
    chunk: int,
) -> Iterator[tuple[K, V, R | Exception | None]]:
    inflight: collections.deque[tuple[list[tuple[K, V]], Future | None]] = collections.deque()
    feed = itertools.chain(head, source)
    error: Exception | None = None
    done = said = False
    held = 0  # bytes of mail in flight
    while True:
        # No new chunk while lost ones are parsed one by one: a crash then
        # is theirs alone.
        while (
            not done
            and len(inflight) < workers * AHEAD
            and (not inflight or held < BUDGET)
            and _none_lost(inflight)
        ):
            part, done, error = _take(feed, chunk, CHUNK_BYTES)
            if part:
                raws = _raws(part)
                held += sum(map(len, raws))
                inflight.append((part, pool.submit(parse, raws)))
        if not inflight:
            break
        if not said:
            said = True  # once the pool is full: every worker is started by then
            pids = ", ".join(str(p.pid) for p in multiprocessing.active_children())
            log.debug("parsing ahead in %d worker processes (pids %s)", workers, pids)
        part, future = inflight.popleft()
        held -= sum(map(len, _raws(part)))
        results = None
        if future is not None:
            try:
                results = pool.unpacked(future.result())
            except BrokenProcessPool:
                # Every chunk in flight is lost with the pool: parse them
                # again one message at a time, to find the one that kills.
                pool.restart()
                inflight = collections.deque((p, None) for p, _ in inflight)
        if results is None:
            results = pool.one_by_one(parse, _raws(part))
        values = iter(results)
        for key, value in part:
            yield key, value, next(values) if isinstance(value, bytes) else None
    if error is not None:
        raise error


def _none_lost(inflight: collections.deque[tuple[list, Future | None]]) -> bool:
    """True unless a chunk lost with a broken pool waits to be parsed again."""
    return all(future is not None for _, future in inflight)


def _raws(part: list[tuple[K, V]]) -> list[bytes]:
    return [value for _, value in part if isinstance(value, bytes)]


class _Pool:
    """A ProcessPoolExecutor that can be started again after a worker died."""

    def __init__(
        self, workers: int, parse: Callable[[bytes], object], wire: Wire | None = None
    ) -> None:
        self.workers = workers
        self.parse = parse
        self.wire = wire
        self.executor = self._started()
        self.broken = False
        """A worker died: every task sent since is lost, and the pool needs restarting."""

    def submit(self, parse: Callable[[bytes], R], raws: list[bytes]) -> Future | None:
        """The chunk's task; None when the pool broke before it could be sent.

        A worker may die between two submissions (its chunk was parsed while
        the next ones were sent): the chunk is then lost with the others in
        flight, and parsed again one message at a time.
        """
        try:
            return self.executor.submit(_parse_all, parse, raws, self._pack())
        except BrokenProcessPool:
            self.broken = True
            return None

    def restart(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.executor = self._started()
        self.broken = False

    def _started(self) -> ProcessPoolExecutor:
        """A pool whose workers start now, the parser loaded, while the caller reads on.

        The executor starts a process for each task sent while none is idle.
        """
        executor = spawned_pool(self.workers, self.parse)
        for _ in range(self.workers):
            executor.submit(os.getpid)
        return executor

    def one_by_one(self, parse: Callable[[bytes], R], raws: list[bytes]) -> list:
        """Each message in a task of its own, one at a time; WorkerDied for a killer."""
        if self.broken:  # by a chunk before these: none of them is to blame
            self.restart()
        results = []
        for raw in raws:
            try:
                answer = self.executor.submit(_parse_all, parse, [raw], self._pack()).result()
                results.extend(self.unpacked(answer))
                continue
            except BrokenProcessPool:
                self.restart()
            try:  # was it the message, or can no worker run at all?
                self.executor.submit(os.getpid).result()
            except BrokenProcessPool as err:
                raise DigestError(
                    "the parser's worker processes die as they start; see the log above, "
                    "or set [import] workers = 1 to parse in this process"
                ) from err
            results.append(
                WorkerDied(
                    "the process parsing it died on it twice (a crash in the parser, or "
                    "out of memory; if memory, a reindex or a new import reads it again)"
                )
            )
        return results

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)

    def _pack(self) -> Callable[[Any], object] | None:
        return self.wire.pack if self.wire is not None else None

    def unpacked(self, answer: tuple[object, list[tuple[int, Exception, str]]]) -> list:
        """A task's results, made again; each error with where the worker raised it."""
        payload, errors = answer
        values = marshal.loads(payload) if isinstance(payload, bytes) else payload
        assert isinstance(values, list)
        failed = {i for i, _, _ in errors}
        if self.wire is not None:
            unpack = self.wire.unpack
            values = [v if i in failed else unpack(v) for i, v in enumerate(values)]
        for i, err, where in errors:
            err.__cause__ = RemoteTraceback(where)
            values[i] = err
        return values


def _parse_all(
    parse: Callable[[bytes], R], raws: list[bytes], pack: Callable[[R], object] | None = None
) -> tuple[object, list[tuple[int, Exception, str]]]:
    """In a worker: parse each message; an error is a result, with where it was raised.

    The results (packed and marshalled, with `pack`) and the errors apart:
    (index, error, traceback) each, pickled.
    """
    values: list[object] = []
    errors: list[tuple[int, Exception, str]] = []
    for i, raw in enumerate(raws):
        try:
            result = parse(raw)
            values.append(pack(result) if pack is not None else result)
        except Exception as err:  # sent back as the message's result, judged by the caller
            values.append(None)
            errors.append((i, _portable(err), "".join(traceback.format_exception(err))))
    if pack is not None:
        try:
            return marshal.dumps(values), errors
        except ValueError:  # a value marshal cannot write (a bug in `pack`): pickled instead
            log.exception("parser results could not be marshalled; pickling them")
    return values, errors


def _portable(err: Exception) -> Exception:
    """The error itself when it survives pickling, else one that says the same."""
    try:
        pickle.loads(pickle.dumps(err))
    except Exception:  # an exception class pickle cannot rebuild: keep its words
        return RuntimeError(f"{type(err).__name__}: {err}")
    return err
