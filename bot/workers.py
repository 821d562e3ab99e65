"""Worker processes: spawned fresh, signals left to the parent, dying with it.

Parsing (bot/parse/pool.py) and a periodic digest's rendering
(bot/delivery/periodic.py) run in processes of their own so that the one
writer and the event loop go on. Spawned, not forked: the parent has
threads, SQLite connections and git pipes that a fork would copy. Each
worker exits when its parent does, however it ended (SIGKILL included):
a worker left behind would hold its memory and, for a renderer, a read
transaction on the index.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from concurrent.futures import ProcessPoolExecutor

NICENESS = 5
"""Added to a worker's nice value: workers yield the CPU to their parent.

The parent is the part that cannot spread: the one writer of the archive
and index (and the git it waits on), the daemon's event loop. When both
cores are busy, a parser that takes the writer's turn only makes the
writer's backlog longer, and the run ends when the writer does. Mirror
indexing of the kvmarm epoch: 9.1 s against 9.9 s at the parent's nice
value (the means of 8 alternating runs on 2 cores); an import, whose
writer waits on git fast-import instead, took the same time either way.
"""


def spawned_pool(workers: int, *preload: object) -> ProcessPoolExecutor:
    """A pool of `workers` spawned processes that die with this one.

    Each worker unpickles `preload` as it starts (a parser function, say),
    which imports the modules they come from: a task then finds them loaded.
    """
    return ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=started,
        initargs=preload,
    )


def started(*preload: object) -> None:
    """In a new worker: yield to the parent, leave it SIGINT and SIGTERM, and die with it.

    systemd stops a service by sending SIGTERM to every process in it: a
    renderer or parser killed then would read as a failed digest or a lost
    chunk. The parent decides; a worker ends when its work or its parent does.
    `preload` is not used here: it was unpickled, its modules imported, to
    call this (spawned_pool).
    """
    os.nice(NICENESS)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()


def _exit_with(parent: multiprocessing.process.BaseProcess) -> None:
    parent.join()  # returns once the parent's end of its pipe is closed: it has exited
    os._exit(1)
