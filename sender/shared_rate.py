"""Send budgets shared by every instance through PostgreSQL: the account cap and campaign rates.

A budget is one GCRA row (migration 0005). An instance asks for a grant of consecutive slots,
about GRANT_SECONDS of sending or what it has ready if less, and spends each token within LATE
seconds of its slot, at the wire, or drops it. The slots of all instances together are 1/rate
apart, so no one-second window can see more than rate * (1 + LATE) sends; the margin
(SENDER_RATE_HEADROOM) keeps that under the cap. Idle instances ask for nothing; the instance
holding a campaign's tail takes the whole cap; a stalled instance's tokens expire instead of
bunching; a dead instance's are never reused.

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
from dataclasses import dataclass, field

import asyncpg

from sender.backoff import Backoff
from sender.db import DB_ERRORS, QUERIES, db_error_text
from sender.logs import get_logger

log = get_logger("sender.shared_rate")

LATE = 0.012  # a token is spent at most 12 ms after its slot (event-loop lateness), or dropped
GRANT_SECONDS = 0.1  # a grant covers ~100 ms of sending
HORIZON = 0.5  # no slot is granted more than 0.5 s ahead (many instances queue behind each other)
PREFETCH = 0.03  # ask for the next grant while the last slot is still this far ahead
RECOVERY_PER_SECOND = 0.1  # of the rate, regained per second once throttling is quiet
QUIET_SECONDS = 1.0

ACCOUNT = "account"


def campaign_key(campaign_id: int) -> str:
    return f"campaign:{campaign_id}"


@dataclass(frozen=True)
class Token:
    """The right to one send at `slot` (monotonic seconds), until `slot + LATE`."""

    budget: SharedRate
    slot: float

    def usable(self, now: float) -> bool:
        return self.slot <= now <= self.slot + LATE


class BudgetCounters:
    """What a budget reports to metrics (kept apart so tests can read it without Prometheus)."""

    def __init__(self) -> None:
        self.grants = 0
        self.granted = 0
        self.expired = 0
        self.refused = 0


class SharedRate:
    """One shared budget as this instance sees it: a local queue of granted slots, taken in FIFO order."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        key: str,
        rate: float,
        *,
        demand: Callable[[], int],
        margin: float,
        counters: BudgetCounters | None = None,
    ) -> None:
        self.pool = pool
        self.key = key
        self.rate = rate
        self.margin = margin
        self._last_throttle = -math.inf
        self.effective = rate  # after the shared throttling factor, as of the last grant
        self.counters = counters or BudgetCounters()  # campaign budgets share one set
        self._demand = demand
        self._slots: deque[float] = deque()
        self._turn = asyncio.Lock()  # FIFO: campaigns waiting on the account take turns
        self._fetch: asyncio.Task[None] | None = None
        self._not_before = 0.0  # monotonic: the database said no slot before this
        self._backoff = Backoff(initial=0.05, cap=1.0)

    def set_rate(self, rate: float) -> None:
        self.rate = rate

    def holding(self) -> int:
        return len(self._slots)

    async def take(self) -> Token:
        """The next token, once its slot has come (waits for a grant when none is held)."""
        async with self._turn:
            while True:
                now = time.monotonic()
                self._drop_expired(now)
                self._maybe_fetch(now)
                if self._slots:
                    wait = self._slots[0] - now
                    if wait <= 0:
                        return Token(self, self._slots.popleft())
                    await asyncio.sleep(wait)
                elif self._fetch is not None:
                    await asyncio.shield(self._fetch)
                else:
                    await asyncio.sleep(max(0.001, self._not_before - now))

    def give_back(self, token: Token) -> None:
        """A token taken but not spent (another budget made the send wait): next in line may use it."""
        if token.slot + LATE >= time.monotonic():
            self._slots.appendleft(token.slot)

    async def throttled(self) -> None:
        """SES answered 429: cut the shared rate for every instance (at most once a second)."""
        now = time.monotonic()
        if now - self._last_throttle < QUIET_SECONDS:
            return  # the database cuts at most once a second anyway: spare the round trips
        self._last_throttle = now
        with contextlib.suppress(*DB_ERRORS):
            factor = await self.pool.fetchval(
                QUERIES["rate_throttle"], self.key, RECOVERY_PER_SECOND, QUIET_SECONDS, timeout=5
            )
            self.effective = self.rate * (1 - self.margin) * float(factor)

    def _drop_expired(self, now: float) -> None:
        while self._slots and self._slots[0] + LATE < now:
            self._slots.popleft()
            self.counters.expired += 1

    def _maybe_fetch(self, now: float) -> None:
        if self._fetch is not None or now < self._not_before:
            return
        if self._slots and self._slots[-1] - now > PREFETCH:
            return
        if self._slots and self._demand() <= len(self._slots):
            return  # what we hold covers what we have ready
        self._fetch = asyncio.create_task(self._grant(), name=f"grant-{self.key}")

    async def _grant(self) -> None:
        try:
            wanted = max(1, min(math.ceil(self.rate * GRANT_SECONDS), self._demand() - len(self._slots)))
            sent = time.monotonic()
            row = await self.pool.fetchrow(
                QUERIES["rate_grant"],
                self.key,
                self.rate * (1 - self.margin),
                wanted,
                max(HORIZON, 2.0 / max(self.rate, 1e-3)),
                RECOVERY_PER_SECOND,
                QUIET_SECONDS,
                timeout=5,
            )
            here = (sent + time.monotonic()) / 2  # the database's clock read, on ours
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
    """The tokens one delivery needs at the wire: its campaign's budget (if any), then the account's.

    Taken at dispatch (so dispatch is paced), checked again right before the request goes on the
    wire (SesClient's before-send hook), and re-taken for a retry after a 429.
    """

    budgets: tuple[SharedRate, ...]
    tokens: dict[str, Token] = field(default_factory=dict)

    async def ready(self) -> None:
        """Hold a usable token of every budget at the same moment."""
        while True:
            for budget in self.budgets:  # campaign first: the account's short-lived token comes last
                token = self.tokens.get(budget.key)
                if token is None or not token.usable(time.monotonic()):
                    if token is not None:
                        budget.counters.expired += 1
                    self.tokens[budget.key] = await budget.take()
            now = time.monotonic()
            if all(token.usable(now) for token in self.tokens.values()):
                return

    async def spend(self) -> None:
        """Right before the request is sent: usable tokens, used up."""
        await self.ready()
        self.tokens.clear()


WIRE_PASS: ContextVar[WirePass | None] = ContextVar("wire_pass", default=None)


def wire_gate(account: SharedRate) -> Callable[[], Awaitable[None]]:
    """The before-send hook: spend the delivery's pass, or an account token for any other send (a probe)."""

    async def gate() -> None:
        wire = WIRE_PASS.get()
        await (wire if wire is not None else WirePass((account,))).spend()

    return gate
