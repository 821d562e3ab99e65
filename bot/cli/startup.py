"""Start-up without the garbage collector: what every command pays before it runs."""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def no_collection() -> Iterator[None]:
    """Imports without the cyclic garbage collector, which then keeps what they made aside.

    Start-up creates tens of thousands of objects (modules, classes) that
    live until exit: collecting while they are made finds nothing and costs
    a short command a few per cent of its time. When modules were loaded,
    gc.freeze() moves what exists out of every later collection (the
    daemon's too), so turning the collector back on does not scan them all;
    an import already done (a second command in one process) freezes nothing.
    """
    collecting = gc.isenabled()
    loaded = len(sys.modules)
    gc.disable()
    try:
        yield
    finally:
        if len(sys.modules) != loaded:
            gc.freeze()
        if collecting:
            gc.enable()
