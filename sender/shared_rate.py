"""The account's send budget, shared by every instance through PostgreSQL.

A budget is one GCRA row (migration 0005). An instance asks for a grant of consecutive slots,
about GRANT_SECONDS of sending or what it has ready if less, and spends each token at the wire
(the SES client's before-send hook, after the request is built and signed) within LATE seconds
of its slot, or drops it. The slots of all instances together are 1/rate apart, so no one-second
window can see more than rate * (1 + LATE) sends; the margin (SENDER_RATE_HEADROOM) keeps that
under the cap, arrival jitter included. Idle instances ask for nothing; the instance holding a
campaign's tail takes the whole cap; a stalled instance's tokens expire instead of bunching; a
dead instance's are never reused.

Tokens are taken only at the wire, in FIFO order, by the request that will use them: a request
that finds the first slot stale simply takes the next one, so a busy event loop costs slots, not
a pile-up. The dispatcher keeps only a few requests waiting there (`room`), so a pause or a stop
withdraws the rest unsent.

A campaign with rate_per_sec is a budget of its own, of which each instance holds a share
(sender.campaign_share): its request first waits until the campaign's window for this instance's
share would let it through (ratelimit.CampaignWindow), then takes an account slot, and is counted
in the window at that moment; if another request of the campaign took the window's room first, it
hands the slot to the next request and waits again.

Cost: one grant per GRANT_SECONDS of sending at most (fewer when others share the budget), and
the same round trip for 1 or 50 tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass

import asyncpg

from sender.backoff import Backoff
from sender.db import DB_ERRORS, QUERIES, db_error_text
from sender.logs import get_logger
from sender.ratelimit import CampaignWindow, WaitingRoom

log = get_logger("sender.shared_rate")

LATE = 0.01  # an account token is spent at most 10 ms after its slot, or dropped
GRANT_SECONDS = 0.1  # a grant covers ~100 ms of sending
HORIZON = 0.5  # no slot is granted more than 0.5 s ahead (many instances queue behind each other)
PREFETCH = 0.06  # ask for the next grant while the last slot is still this far ahead (0.03 let a slow
# grant reply leave gaps: at cap 300 with 2 instances, 2 of 8 runs fell to 0.956-0.960; 8 of 8 >= 0.974 at 0.06)
RECOVERY_PER_SECOND = 0.1  # of the rate, regained per second once throttling is quiet
QUIET_SECONDS = 1.0

ACCOUNT = "account"


class Withdrawn(Exception):
    """The request was waiting at the wire when its campaign stopped: it was never sent."""


class DatabaseClock:
    """The database's clock on time.monotonic(), from the grant round trip with the least delay.

    Slots are placed on the database's clock; an instance maps them onto its own. A round trip's
    midpoint is only as good as the round trip is short (a reply read late by a busy event loop
    looks long), so the shortest recent one wins; it is renewed every CLOCK_SAMPLE_SECONDS.
    """

    SAMPLE_SECONDS = 30.0

    def __init__(self) -> None:
        self._delay = math.inf
        self._offset = 0.0
        self._at = -math.inf

    def sample(self, sent: float, received: float, db_now: float) -> None:
        delay = received - sent
        if delay <= self._delay or received - self._at > self.SAMPLE_SECONDS:
            self._delay, self._offset, self._at = delay, db_now - (sent + received) / 2, received

    def local(self, db_time: float) -> float:
        return db_time - self._offset


DB_CLOCK = DatabaseClock()  # one per process: every budget, every instance on this host sees one clock


def _ignore_outcome(call: asyncio.Future[object]) -> None:
    if not call.cancelled():
        call.exception()


class GrantLine:
    """Grants and throttling cuts on the instance's pool, never hanging on a stuck connection.

    A reply lost on the way (seen behind a slow proxy: the server idle, the client still waiting,
    asyncpg's own timeout waiting on the cancel) would stall every send of the instance; after 5 s
    the connection is terminated instead, the pool replaces it, and the grant is retried.
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def fetchrow(self, query: str, *args: object) -> asyncpg.Record:
        async with self.pool.acquire(timeout=5) as conn:
            call = asyncio.ensure_future(conn.fetchrow(query, *args))
            try:
                done, _ = await asyncio.wait({call}, timeout=5)
            finally:
                if not call.done():  # timed out or cancelled: never wait on a connection that hangs
                    call.add_done_callback(_ignore_outcome)
                    call.cancel()
                    conn.terminate()
            if not done:
                raise TimeoutError("no answer to a grant within 5 s")
            return call.result()


class BudgetCounters:
    """What a budget reports to metrics (kept apart so tests can read it without Prometheus)."""

    def __init__(self) -> None:
        self.grants = 0
        self.granted = 0
        self.expired = 0
        self.refused = 0


class SharedRate:
    """One shared budget as this instance sees it: a local queue of granted slots."""

    def __init__(self, line: GrantLine, key: str, rate: float, *, demand: Callable[[], int], margin: float) -> None:
        self.line = line
        self.key = key
        self.rate = rate
        self.margin = margin
        self.effective = rate * (1 - margin)  # slots per second, after any throttling cut, as of the last grant
        self.counters = BudgetCounters()
        self.waiting = 0  # requests waiting for a slot at the wire
        self.room = WaitingRoom(lambda: self.effective)  # requests dispatched here, not yet past
        self._demand = demand
        self._slots: deque[float] = deque()
        self._waiters: deque[tuple[asyncio.Future[float], Callable[[], bool]]] = deque()  # FIFO, with "withdrawn?"
        self._pump: asyncio.Task[None] | None = None
        self._fetch: asyncio.Task[None] | None = None
        self._not_before = 0.0  # monotonic: the database said no slot before this
        self._backoff = Backoff(initial=0.05, cap=1.0)
        self._last_throttle = -math.inf
        self._grant_time = 0.0  # how long a grant takes (pool wait included), smoothed
        self._asked_at = -math.inf  # when the last grant was asked for

    def set_rate(self, rate: float) -> None:
        self.rate = rate

    def holding(self) -> int:
        return len(self._slots)

    def _left(self) -> None:
        self.waiting -= 1

    async def take(self, withdrawn: Callable[[], bool] = lambda: False) -> float:
        """Wait (in FIFO order) for the next slot to come and use it; returns the slot. Raises
        Withdrawn when `withdrawn` turns true while it waits (checked whenever the budget wakes)."""
        waiter: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        entry = (waiter, withdrawn)
        self._waiters.append(entry)
        self.waiting += 1
        if self._pump is None or self._pump.done():
            self._pump = asyncio.create_task(self._hand_out(), name=f"slots-{self.key}")
            self._pump.add_done_callback(self._pump_ended)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give_back(waiter.result())
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(entry)
            self._left()

    async def _hand_out(self) -> None:
        """Give every slot that has come to the next waiter, all in one pass: a busy event loop
        wakes this once for many slots instead of passing a lock from waiter to waiter."""
        while self._waiters:
            await self._next_slot(self._sweep)
            now = time.monotonic()
            while self._waiters and self._slots and self._slots[0] <= now:
                waiter, _ = self._waiters.popleft()
                if not waiter.done():
                    waiter.set_result(self._slots.popleft())

    def _pump_ended(self, pump: asyncio.Task[None]) -> None:
        """The hand-out loop died (a bug, say in a `withdrawn` check): its waiters fail with the error
        instead of waiting forever; the next take starts a new loop."""
        if pump.cancelled() or pump.exception() is None:
            return
        error = pump.exception()
        log.error("rate_slots_failed", budget=self.key, error=repr(error))
        for waiter, _ in self._waiters:
            if not waiter.done():
                waiter.set_exception(RuntimeError(f"the {self.key} budget's slot hand-out failed: {error!r}"))

    def _sweep(self) -> None:
        """Fail the waiters whose request was withdrawn (its campaign stopped, the account stopped)."""
        for waiter, withdrawn in list(self._waiters):
            if not waiter.done() and withdrawn():
                waiter.set_exception(Withdrawn("the campaign stopped while the request waited for a rate slot"))

    def give_back(self, slot: float) -> None:
        """A slot taken but not spent: the next request may still use it."""
        if slot + LATE >= time.monotonic():
            self._slots.appendleft(slot)

    async def _next_slot(self, check: Callable[[], None]) -> float:
        """Sleep until the first slot held has come (asking for grants as needed); returns it.
        `check` runs on every wake-up (at least once a second while the database is away)."""
        while True:
            check()
            now = time.monotonic()
            self._drop_expired(now)
            self._maybe_fetch(now)
            if self._slots:
                if self._slots[0] <= now:
                    return self._slots[0]
                await asyncio.sleep(self._slots[0] - now)
            elif self._fetch is not None:
                await asyncio.shield(self._fetch)
            else:
                await asyncio.sleep(max(0.001, self._not_before - now))

    async def throttled(self) -> None:
        """SES answered 429: cut the shared rate for every instance (at most once a second)."""
        now = time.monotonic()
        if now - self._last_throttle < QUIET_SECONDS:
            return  # the database cuts at most once a second anyway: spare the round trips
        self._last_throttle = now
        with contextlib.suppress(*DB_ERRORS):
            row = await self.line.fetchrow(QUERIES["rate_throttle"], self.key, RECOVERY_PER_SECOND, QUIET_SECONDS)
            self.effective = self._slot_rate() * float(row[0])

    def _slot_rate(self) -> float:
        """Slots per second before throttling: the rate less the margin."""
        return self.rate * (1 - self.margin)

    def _drop_expired(self, now: float) -> None:
        while self._slots and self._slots[0] + LATE < now:
            self._slots.popleft()
            self.counters.expired += 1

    def _maybe_fetch(self, now: float) -> None:
        if self._fetch is not None or now < self._not_before:
            return
        if self._slots and self._slots[-1] - now > max(PREFETCH, 2 * self._grant_time):
            return  # the next grant will be back before these run out
        wanted = self._demand() + max(self.room.pending, self.waiting) - len(self._slots)
        if self._slots and wanted <= 0:
            return  # what we hold covers what we have ready
        if wanted < self.rate * GRANT_SECONDS and now < self._asked_at + GRANT_SECONDS:
            self._not_before = self._asked_at + GRANT_SECONDS  # a few slots at a time: at most a grant
            return  # per GRANT_SECONDS (slow campaigns, windows of rated ones), gathering what comes meanwhile
        self._asked_at = now
        self._fetch = asyncio.create_task(self._grant(), name=f"grant-{self.key}")

    async def _grant(self) -> None:
        try:
            wanted = max(1, min(math.ceil(self.rate * GRANT_SECONDS),
                                self._demand() + max(self.room.pending, self.waiting) - len(self._slots)))
            asked = time.monotonic()
            lead = min(0.5, 0.75 * self._grant_time)  # the reply's way back, so no slot arrives stale
            row = await self.line.fetchrow(QUERIES["rate_grant"], self.key, self._slot_rate(), wanted, lead,
                                           max(HORIZON, 2.0 / max(self.rate, 1e-3)), RECOVERY_PER_SECOND,
                                           QUIET_SECONDS)
            DB_CLOCK.sample(asked, time.monotonic(), float(row["db_now"]))
            here = DB_CLOCK.local(float(row["db_now"]))
            self._grant_time = 0.8 * self._grant_time + 0.2 * (time.monotonic() - asked)
            self._backoff.reset()
            self.counters.grants += 1
            spacing = float(row["spacing"])
            self.effective = 1.0 / spacing
            if row["granted"] == 0:
                self.counters.refused += 1
                self._not_before = here + float(row["retry_in"])
                return
            first = here + float(row["start_in"])
            self._slots.extend(first + i * spacing for i in range(int(row["granted"])))
            self.counters.granted += int(row["granted"])
        except DB_ERRORS as exc:  # no grant, no send: the cap holds even while the database is away
            delay = self._backoff.next()
            log.warning("rate_grant_failed", budget=self.key, error=db_error_text(exc), retry_in=delay)
            self._not_before = time.monotonic() + delay
        finally:
            self._fetch = None


@dataclass
class WirePass:
    """What one delivery spends at the wire: an account slot, within its campaign's window if it has one.

    Spent right before each request goes out (a retry after a 429 spends again). `withdrawn` says
    the campaign stopped while the request waited: it raises Withdrawn and the row goes back unsent.
    """

    account: SharedRate
    window: CampaignWindow | None = None
    withdrawn: Callable[[], bool] = lambda: False
    reserved: bool = False  # the dispatcher reserved room for it (the account's, the campaign's)

    async def spend(self) -> None:
        while True:
            self._check()
            if self.window is not None:  # before asking for an account slot it could not use
                await self.window.wait_open(self.withdrawn)
                self._check()
            slot = await self.account.take(self.withdrawn)
            self._check()
            if self.window is None or self.window.try_admit():
                self.release()
                return
            self.account.give_back(slot)  # another request took the window's room first: pass the slot on

    def release(self) -> None:
        """Give back the room the dispatcher reserved (once: after the first spend, or at the end)."""
        if self.reserved:
            self.reserved = False
            self.account.room.release()
            if self.window is not None:
                self.window.room.release()

    def _check(self) -> None:
        if self.withdrawn():
            raise Withdrawn("the campaign stopped while the request waited for a rate slot")


WIRE_PASS: ContextVar[WirePass | None] = ContextVar("wire_pass", default=None)


def wire_gate(account: SharedRate) -> Callable[[], Awaitable[None]]:
    """The before-send hook: spend the delivery's pass, or an account slot for any other send (a probe)."""

    async def gate() -> None:
        wire = WIRE_PASS.get()
        await (wire if wire is not None else WirePass(account)).spend()

    return gate
