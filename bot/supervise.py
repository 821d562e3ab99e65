"""Supervision: long-running tasks are restarted, not silently lost.

A task of the daemon (the IMAP listener, the command worker, the outbox
worker, housekeeping) that ends with an exception is logged at ERROR with
its traceback and started again after a capped exponential backoff. A task
that keeps failing (`give_up_after` failures in a row, none of its runs
lasting `healthy_after` seconds) is declared fatal: the daemon's health
turns false, so the watchdog stops pinging systemd (which restarts the
service) and `kvm-digest run` exits non-zero, instead of running half-dead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

TaskFactory = Callable[[], Coroutine[Any, Any, None]]


@dataclass
class Health:
    """What the supervisor knows; the watchdog pings only while `ok`."""

    fatal: str | None = None
    """Why the daemon must stop (a task that cannot be kept running)."""
    restarts: dict[str, int] = field(default_factory=dict)
    failed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def ok(self) -> bool:
        return self.fatal is None


@dataclass
class Policy:
    backoff_first: float = 1.0
    backoff_max: float = 60.0
    give_up_after: int = 8
    healthy_after: float = 300.0


async def supervise(
    name: str,
    factory: TaskFactory,
    stop: asyncio.Event,
    health: Health,
    policy: Policy | None = None,
) -> None:
    """Run `factory()` until `stop`; restart it whenever it ends unexpectedly."""
    policy = policy or Policy()
    failures = 0
    delay = policy.backoff_first
    while not stop.is_set():
        started = time.monotonic()
        try:
            await factory()
        except asyncio.CancelledError:
            raise
        except Exception as err:
            reason = f"{type(err).__name__}: {err}"
            log.error("task %s failed: %s", name, reason, exc_info=err)
        else:
            if stop.is_set():
                return
            reason = "it returned while the daemon was running"
            log.error("task %s ended: %s", name, reason)
        if time.monotonic() - started >= policy.healthy_after:
            failures, delay = 0, policy.backoff_first
        failures += 1
        health.restarts[name] = health.restarts.get(name, 0) + 1
        if failures >= policy.give_up_after:
            health.fatal = f"task {name} failed {failures} times in a row (last: {reason})"
            log.critical(
                "%s; stopping so that the service manager restarts kvm-digest", health.fatal
            )
            health.failed.set()
            return
        wait = min(delay, policy.backoff_max) * random.uniform(0.8, 1.2)
        log.warning("restarting task %s in %.1fs", name, wait)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), wait)
        delay = min(delay * 2, policy.backoff_max)
