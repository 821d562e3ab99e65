"""The outbox worker: sends due mail until told to stop.

What each answer of the relay does (bot/delivery/relay.py reads them):

- 250: the mail is marked sent.
- A refusal at RCPT names the recipient. A 5xx fails the mail and counts
  against a subscriber (`[smtp] hard_failures` of them disable it); a 4xx
  tries that mail again later, on its own backoff, and after
  `max_attempts` fails it without counting. But a relay that refuses
  `RELAY_REFUSES_ALL` different subscribers in a row and accepts none is
  refusing everyone (relaying denied, a quota): so a 5xx at RCPT is only
  counted once the relay has accepted someone after it (or the queue ran
  dry), and such a streak counts nobody, puts the mails back and stops
  the worker as below. A reply's recipient is whoever wrote to the bot
  (perhaps a forged address): its refusal only fails the reply, at INFO.
- Anything else is about the relay, our sender, our content or our
  password, never the recipient: no connection, a 421, a 4xx at MAIL or
  DATA, a 5xx at MAIL FROM, AUTH refused, or a 5xx at DATA (a content
  filter: a digest is what list posters wrote). The worker stops sending
  (there is no point in 10,000 copies meeting the same refusal), says so
  once (`Problems`, check "relay", at ERROR, and once more when it works
  again), and tries again after a capped exponential backoff. The mail
  stays queued (an answer counts as an attempt; no connection does not),
  or fails, uncounted, when sending again cannot help: a 5xx at DATA, and
  when two copies of a digest meet it, every copy of that digest.

Per-mail details of a lasting problem are logged at DEBUG only, so a relay
outage during a 10,000-reader digest is two lines.

The outbox's state is written around every send (outbox.py: the attempt
mark before, the outcome after). When it cannot be written (a full disk, a
read-only file system), nothing more is sent; outcomes already known are
kept in memory and written first when writes work again, which the worker
tries by itself with backoff (check "outbox"). Only a stop of the process
before then loses them: the duplicate bound of outbox.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from bot.config import SmtpSection
from bot.delivery.outbox import Outbox, Queued
from bot.delivery.relay import ERRORS, Refusal, Relay, refusal
from bot.errors import MailError
from bot.health import Problems

log = logging.getLogger(__name__)

RELAY_REFUSES_ALL = 5
"""Different subscribers refused at RCPT in a row, none accepted: the relay refuses us."""
CONTENT_REFUSED = 2
"""Copies of one digest refused at DATA with a 5xx: the relay refuses its content."""
STATE_BACKOFF_MAX = 60.0
"""Seconds, at most, between tries to write the outbox again (a full disk freed)."""
NOT_WRITTEN = object()


class Backoff:
    """Capped exponential backoff with jitter, from `first` seconds."""

    def __init__(self, first: float, most: float) -> None:
        self.first = first
        self.most = most
        self.failures = 0
        self.until = 0.0

    def failed(self) -> float:
        """One more failure: the delay before the next try, in seconds.

        While a delay runs, a failure is the same outage met by another
        mail already in flight (one per connection): it waits for the same
        try rather than doubling the delay once per connection.
        """
        if self.waiting:
            return self.waiting
        delay = min(self.first * 2**self.failures, self.most) * random.uniform(0.8, 1.2)
        self.failures += 1
        self.until = time.monotonic() + delay
        return delay

    def reset(self) -> None:
        self.failures = 0
        self.until = 0.0

    @property
    def waiting(self) -> float:
        """Seconds left before the next try (0: now)."""
        return max(0.0, self.until - time.monotonic())


class Sender:
    """The outbox worker: sends due mail until told to stop."""

    def __init__(
        self, outbox: Outbox, settings: SmtpSection, problems: Problems | None = None
    ) -> None:
        self.outbox = outbox
        self.s = settings
        self.relay = Relay(settings)
        self.problems = problems or Problems()
        self.sent = asyncio.Event()
        """Set after each mail the relay took (for tests and metrics)."""
        self.relay_backoff = Backoff(1.0, float(settings.backoff_max))
        self.state_backoff = Backoff(1.0, STATE_BACKOFF_MAX)
        self.unrecorded: list[functools.partial] = []
        """Outcomes known but not yet written (the outbox could not be), in order."""
        self.doubtful: list[tuple[Queued, Refusal]] = []
        """Refusals at RCPT not yet counted: the relay may be refusing everyone."""
        self.streak: set[str] = set()
        """Subscribers refused at RCPT since the relay last accepted anyone."""
        self.suspects: set[str] = set()
        """Recipients of the last streak: refused again once others get through, counted."""
        self.accepted_since_streak = False
        self.content_refused: dict[int, int] = {}
        """Copies of each digest the relay refused at DATA, while it does."""
        self.content_said: set[int] = set()
        """Digests whose refused content was logged (as failing all their copies)."""

    # -- the loop --------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        self._record(self._resume_interrupted)
        try:
            while not stop.is_set():
                wait = self._blocked()
                if wait:
                    await self._wait(stop, wait)
                    continue
                try:
                    batch = self.outbox.due(self.s.connections * 25)
                except sqlite3.Error as err:
                    self._cannot_write(err)
                    continue
                if not batch:
                    self._judge_doubtful()
                    # Idle connections go stale (relays time them out): close them.
                    await self.relay.close()
                    await self._sleep(stop)
                    continue
                queue: asyncio.Queue[Queued] = asyncio.Queue()
                for item in batch:
                    queue.put_nowait(item)
                workers = min(self.s.connections, len(batch))
                await asyncio.gather(*(self._work(queue, stop) for _ in range(workers)))
        finally:
            await self.relay.close()
            self._judge_doubtful()
            self._settle()
            self._say_unrecorded()

    async def flush(self, limit: int = 100_000) -> int:
        """Try every mail that is due now, once, as the worker would; how many were tried.

        A relay problem stops it as it stops the worker; the backoff of an
        earlier one is not waited for (flush is an explicit "try now").
        """
        self.relay_backoff.reset()
        tried = 0
        for item in self.outbox.due(limit):
            # A relay problem met in this flush stops it, however long the
            # last send took: not only while its backoff still runs.
            if self._blocked() or self.relay_backoff.failures:
                break
            await self._send(item)
            tried += 1
        self._judge_doubtful()
        await self.relay.close()
        return tried

    def _blocked(self) -> float:
        """Seconds to wait before sending again (0: send now)."""
        if self.state_backoff.waiting:
            return self.state_backoff.waiting
        if not self._settle():
            return self.state_backoff.waiting
        return self.relay_backoff.waiting

    def _stopped(self) -> bool:
        """True while this round must not send another mail."""
        return bool(self.unrecorded or self.state_backoff.waiting or self.relay_backoff.waiting)

    async def _wait(self, stop: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)

    async def _sleep(self, stop: asyncio.Event) -> None:
        """Wait for new mail, the next retry, or stop."""
        self.outbox.wakeup.clear()
        next_due = self.outbox.next_due()
        # Other processes (`kvm-digest send-now`) queue mail too, and cannot
        # set our event: look at the table again every poll_interval seconds.
        timeout = float(self.s.poll_interval)
        if next_due:
            timeout = min(timeout, max(0.0, next_due - time.time()) + 0.01)
        waiters = {
            asyncio.ensure_future(self.outbox.wakeup.wait()),
            asyncio.ensure_future(stop.wait()),
        }
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    async def _work(self, queue: asyncio.Queue[Queued], stop: asyncio.Event) -> None:
        # A stop lets the message being sent finish, then leaves the rest queued.
        while not stop.is_set() and not queue.empty() and not self._stopped():
            await self._send(queue.get_nowait())

    # -- one mail --------------------------------------------------------

    async def _send(self, item: Queued) -> None:
        try:
            await self._attempt(item)
        except sqlite3.Error as err:
            # Reading the outbox failed (the digest, the VERP key): nothing was sent.
            self._cannot_write(err)
        except Exception as err:
            # One mail must never stop the worker: whatever went wrong with
            # it (a bug included) fails that mail alone, with the reason kept.
            log.exception("sending mail %d to %s failed unexpectedly", item.id, item.recipient)
            self._record(self.outbox.failed, item, f"internal error: {type(err).__name__}: {err}")

    async def _attempt(self, item: Queued) -> None:
        try:
            message = self.outbox.render(item)
        except MailError as err:
            self._undeliverable(item, str(err))
            return
        sender = self.outbox.envelope_sender(item)
        try:
            client = await self.relay.connection()
        except ERRORS as err:
            self._stop(item, refusal(err), began=False)
            return
        if self._record(self.outbox.begin, item, keep=False) is NOT_WRITTEN:
            self.relay.release(client)  # no mail goes out unless its outcome can be recorded
            return
        try:
            await self.relay.transact(client, sender, item.recipient, message)
        except MailError as err:
            self._undeliverable(item, str(err))
            return
        except ERRORS as err:
            answer = refusal(err, stage="session")
            if answer.of_recipient:
                self._recipient_refused(item, answer)
            else:
                self._stop(item, answer, began=True)
            return
        self._delivered(item)

    def _delivered(self, item: Queued) -> None:
        self._record(self.outbox.sent, item)
        self.sent.set()
        self.streak.clear()
        self.accepted_since_streak = True
        self.relay_backoff.reset()
        if item.digest_id is not None:
            self.content_refused.pop(item.digest_id, None)
            self.content_said.discard(item.digest_id)
        self.problems.working("relay")
        self._judge_doubtful()  # someone got through: those refusals were their own

    def _undeliverable(self, item: Queued, error: str) -> None:
        """An address no mail can go to through this relay: failed, counted against nobody."""
        self._record(self.outbox.failed, item, error)
        level = logging.WARNING if item.kind == "digest" else logging.INFO
        log.log(level, "mail %d to %s cannot be sent: %s", item.id, item.recipient, error)

    def _recipient_refused(self, item: Queued, r: Refusal) -> None:
        if r.permanent:
            self._record(self.outbox.failed, item, r.kept)
        else:
            self._record(self.outbox.retry, item, r.kept, self.s)
        if item.kind != "digest":
            # Replies go to whoever wrote to the bot, perhaps a forged
            # address: its refusal is no concern of the operator's, and a
            # flood of them must not pass for a relay that refuses everyone.
            level = logging.INFO if r.permanent else logging.DEBUG
            log.log(level, "the reply %d to %s was refused %s", item.id, item.recipient, r)
            return
        if item.recipient in self.suspects and self.accepted_since_streak:
            # Refused again after others got through: this one's own refusal.
            self.suspects.discard(item.recipient)
            if r.permanent:
                self._judged(item, r)
            return
        self.streak.add(item.recipient)
        if r.permanent:
            self.doubtful.append((item, r))
        log.debug("mail %d to %s refused %s", item.id, item.recipient, r)
        if len(self.streak) >= RELAY_REFUSES_ALL:
            self._refuses_everyone(r)

    def _refuses_everyone(self, r: Refusal) -> None:
        """A streak of refusals at RCPT and no acceptance: the relay's, not theirs."""
        delay = self.relay_backoff.failed()
        refused = [item for item, _ in self.doubtful]
        if refused:
            self._record(self.outbox.requeue, refused, f"the relay refused everyone: {r}", delay)
        self.doubtful.clear()
        self.suspects = set(self.streak)
        self.streak.clear()
        self.accepted_since_streak = False
        self.problems.failing(
            "relay",
            f"the relay refused {RELAY_REFUSES_ALL} recipients in a row and accepted none "
            f"(last {r}); counting it against nobody and sending again in {delay:.0f} s",
        )

    def _judge_doubtful(self) -> None:
        """Refusals at RCPT with nothing to say the relay refuses everyone: theirs."""
        doubtful, self.doubtful = self.doubtful, []
        for item, r in doubtful:
            self._judged(item, r)

    def _judged(self, item: Queued, r: Refusal) -> None:
        """A subscriber's own refusal: said, and counted against it."""
        log.warning("mail %d to %s was refused %s", item.id, item.recipient, r)
        if self._record(self.outbox.score, item, self.s) is True:
            log.warning(
                "%s is disabled: the relay refused it %d times in a row",
                item.recipient,
                self.s.hard_failures,
            )

    def _stop(self, item: Queued, r: Refusal, began: bool) -> None:
        """The relay cannot or will not take mail from us now: stop, back off, say so once."""
        if r.of_content and item.kind != "digest":
            # A reply may quote one sanitised line of its asker: a content
            # filter refusing it is that reply's fate, not a reason to stop
            # everyone's mail (a flood of such commands would).
            self._record(self.outbox.failed, item, r.kept)
            log.warning("the reply %d to %s was refused %s", item.id, item.recipient, r)
            return
        if r.of_content:
            self._content_refused(item, r)
        elif began:
            self._record(self.outbox.retry, item, r.kept, self.s)
        else:
            self._record(self.outbox.hold, item, r.kept, keep=False)
        delay = self.relay_backoff.failed()
        log.debug("mail %d to %s: %s; sending again in %.0f s", item.id, item.recipient, r, delay)
        if r.of_content:
            detail = (
                f"the relay refuses the content of digest {item.digest_id} ({r}); that copy "
                f"failed, counted against nobody (next try in {delay:.0f} s)"
            )
        else:
            detail = (
                f"the relay takes no mail ({r}); it waits in the outbox, counted against "
                f"nobody (next try in {delay:.0f} s, then with backoff)"
            )
        self.problems.failing("relay", detail)

    def _content_refused(self, item: Queued, r: Refusal) -> None:
        """The relay never takes this digest (a 5xx at DATA, too big): this copy
        failed; refused twice, all its copies."""
        self._record(self.outbox.failed, item, r.kept)
        if item.digest_id is None:
            return
        times = self.content_refused.get(item.digest_id, 0) + 1
        self.content_refused[item.digest_id] = times
        if times < CONTENT_REFUSED:
            return
        error = f"the relay refuses this digest's content {r}"
        copies = self._record(self.outbox.fail_copies, item.digest_id, error)
        # Copies in flight on the other connections meet it after the rest
        # failed: said once, unless `outbox retry` queued copies again.
        if copies is not NOT_WRITTEN and (copies or item.digest_id not in self.content_said):
            self.content_said.add(item.digest_id)
            log.error(
                "the relay refused digest %d at DATA (%s) %d times: its %d other queued "
                "copies failed, counted against nobody; `kvm-digest outbox retry` sends "
                "them again",
                item.digest_id,
                r,
                times,
                copies,
            )

    # -- the outbox's own state --------------------------------------------

    def _record(self, fn: Callable[..., Any], *args: Any, keep: bool = True) -> Any:
        """`fn(*args)`, a write of the outbox; NOT_WRITTEN when it cannot be done now.

        With `keep`, an outcome that cannot be written is kept, in order,
        and written before anything else once writes work again.
        """
        call = functools.partial(fn, *args)
        if self.unrecorded:
            if keep:
                self.unrecorded.append(call)
            return NOT_WRITTEN
        try:
            result = call()
        except sqlite3.Error as err:
            if keep:
                self.unrecorded.append(call)
            self._cannot_write(err)
            return NOT_WRITTEN
        self._wrote()
        return result

    def _settle(self) -> bool:
        """Write the outcomes kept while the outbox could not be written; True when done."""
        wrote = False
        while self.unrecorded:
            try:
                self.unrecorded[0]()
            except sqlite3.Error as err:
                self._cannot_write(err)
                return False
            self.unrecorded.pop(0)
            wrote = True
        if wrote:
            self._wrote()
        return True

    def _cannot_write(self, err: sqlite3.Error) -> None:
        delay = self.state_backoff.failed()
        self.problems.failing(
            "outbox",
            f"cannot write the outbox ({err}); no mail is sent until its outcome can be "
            f"recorded (trying again in {delay:.0f} s, then with backoff)",
        )

    def _wrote(self) -> None:
        self.state_backoff.reset()
        if self.problems.is_failing("outbox"):
            self.problems.working("outbox")

    def _resume_interrupted(self) -> None:
        interrupted = self.outbox.interrupted()
        if interrupted:
            log.warning(
                "%d mails were being sent when kvm-digest last stopped; sending them "
                "again (each may arrive twice, with the same Message-ID)",
                interrupted,
            )

    def _say_unrecorded(self) -> None:
        sent = sum(1 for call in self.unrecorded if call.func == self.outbox.sent)
        if self.unrecorded:
            log.error(
                "stopping with %d outcomes the outbox could not record; %d of those mails "
                "were sent and will be sent again at the next start",
                len(self.unrecorded),
                sent,
            )
