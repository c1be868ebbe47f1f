"""The hot path of one instance: claim -> render and send -> write back in batches.

Each sending campaign gets a CampaignRunner: a claimer keeps a small local queue filled from the
database, a dispatcher paces sends (campaign limit, then account limit) and spawns deliveries,
and every outcome goes through one ResultBuffer that writes batches back, guarded so that only
rows this instance still holds change. No database lock is held while SES is called.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg

from sender.addresses import AddressError, normalise_address
from sender.campaigns import CampaignPlan
from sender.config import Settings
from sender.db import QUERIES
from sender.logs import get_logger
from sender.metrics import Metrics
from sender.ratelimit import AdaptiveShare, SlidingWindow, WindowRateLimiter
from sender.render import Contact, TemplateProblem
from sender.ses import ErrorKind, OutgoingEmail, RetryPolicy, SendFailure, SesClient, classify

log = get_logger("sender.pipeline")

DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, asyncio.TimeoutError)


@dataclass(slots=True)
class Claimed:
    """A recipient row this instance holds (status `sending`, leased to it)."""

    id: int
    email: str
    attempts: int
    contact: Contact
    contact_status: str | None
    suppressed: bool = False

    @classmethod
    def from_record(cls, r: asyncpg.Record) -> Claimed:
        return cls(
            id=r["id"], email=r["email"], attempts=r["attempts"],
            contact=Contact(email=r["email"], first_name=r["first_name"], last_name=r["last_name"],
                            country=r["country"], attributes=r["attributes"]),
            contact_status=r["contact_status"], suppressed=r["suppressed"],
        )


@dataclass(slots=True)
class Outcome:
    """What happened to one claimed row; `pending` outcomes hand the row back (retry_in seconds)."""

    id: int
    status: str
    attempts: int
    message_id: str | None = None
    error_code: str | None = None
    error: str | None = None
    retry_in: float | None = None
    sent_at: datetime | None = None


@dataclass
class Stats:
    sent: int = 0
    failed: int = 0
    skipped: int = 0
    released: int = 0
    retried: int = 0
    throttled: int = 0
    lost_ownership: int = 0


class ResultBuffer:
    """Collects outcomes and writes them in batches on size or time, one path for all writes."""

    def __init__(self, pool: asyncpg.Pool, instance_id: str, *, size: int, interval: float,
                 stats: Stats, on_flush: Callable[[int, float], None] | None = None) -> None:
        self._pool = pool
        self._me = instance_id
        self._size = size
        self._interval = interval
        self._items: list[Outcome] = []
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._stats = stats
        self._on_flush = on_flush
        self.flushes = 0

    def __len__(self) -> int:
        return len(self._items)

    def add(self, outcome: Outcome) -> None:
        self._items.append(outcome)
        if len(self._items) >= self._size:
            self._wake.set()

    async def run(self) -> None:
        """Flush every `interval`, or as soon as a batch is full; retries keep results in memory."""
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self._interval)
            except TimeoutError:
                pass
            self._wake.clear()
            await self.flush(drain=False)

    async def flush(self, *, give_up_after: float | None = None, drain: bool = True) -> bool:
        """Write what is buffered; True when nothing that was buffered is left.

        `drain=False` writes only what was there when the flush began: rows that arrive during the
        write wait for the next size-or-time trigger instead of going out in a trickle of tiny batches.
        """
        deadline = None if give_up_after is None else time.monotonic() + give_up_after
        backoff = 0.1
        async with self._lock:
            owed = len(self._items)
            while self._items and (drain or owed > 0):
                batch = self._items[: self._size * 4 if drain else min(owed, self._size * 4)]
                started = time.monotonic()
                try:
                    written = await self._write(batch)
                except DB_ERRORS as exc:
                    log.warning("write_back_failed", rows=len(batch), error=type(exc).__name__,
                                retry_in=round(backoff, 2))
                    if deadline is not None and time.monotonic() + backoff > deadline:
                        return False
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                del self._items[: len(batch)]
                owed -= len(batch)
                self.flushes += 1
                if self._on_flush:
                    self._on_flush(len(batch), time.monotonic() - started)
                if written < len(batch):
                    # another instance recovered these rows after our lease lapsed; it owns them now
                    self._stats.lost_ownership += len(batch) - written
                    log.warning("write_back_rows_not_held", rows=len(batch) - written)
        return True

    async def _write(self, batch: list[Outcome]) -> int:
        columns: tuple[list[Any], ...] = ([], [], [], [], [], [], [], [])
        for o in batch:
            for column, value in zip(columns, (o.id, o.status, o.message_id, o.error_code, o.error,
                                               o.attempts, o.retry_in, o.sent_at), strict=True):
                column.append(value)
        async with self._pool.acquire() as conn:
            written = await conn.fetchval(QUERIES["write_back"], self._me, *columns, timeout=30)
        return int(written)


class AccountGate:
    """Open while the account may send; an account-wide error closes it for every campaign."""

    def __init__(self) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self.reason: str | None = None
        self.code: str | None = None
        self.kind: ErrorKind | None = None
        self.since: float | None = None
        self.remote = False

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    async def wait_open(self) -> None:
        await self._open.wait()

    def close(self, code: str, reason: str, kind: ErrorKind = ErrorKind.ACCOUNT, *, remote: bool = False) -> bool:
        if not self.is_open:
            return False
        self.code, self.reason, self.kind, self.remote = code, reason, kind, remote
        self.since = time.time()
        self._open.clear()
        return True

    def open(self) -> None:
        self.code = self.reason = self.kind = self.since = None
        self.remote = False
        self._open.set()


@dataclass
class SendContext:
    """What every runner of one instance shares."""

    settings: Settings
    pool: asyncpg.Pool
    ses: SesClient
    buffer: ResultBuffer
    gate: AccountGate
    share: AdaptiveShare
    account_limiter: WindowRateLimiter  # pacing at dispatch
    account_window: SlidingWindow  # the hard per-second cap, at the wire
    inflight: asyncio.Semaphore
    retry: RetryPolicy
    stats: Stats
    on_account_error: Callable[[SendFailure], None]
    on_campaign_error: Callable[[int, SendFailure], None]
    metrics: Metrics = field(default_factory=Metrics)

    def finish(self, campaign_id: int, outcome: Outcome) -> None:
        """The one place an outcome is counted and queued for write-back."""
        self._count(campaign_id, outcome)
        self.buffer.add(outcome)

    def _count(self, campaign_id: int, outcome: Outcome) -> None:
        if outcome.status == "pending":
            if outcome.error_code:
                self.stats.retried += 1
                self.metrics.retries.inc()
            else:
                self.stats.released += 1
                self.metrics.released.inc()
            return
        setattr(self.stats, outcome.status, getattr(self.stats, outcome.status) + 1)
        self.metrics.outcome(campaign_id, outcome.status)
        if outcome.status == "failed":
            log.debug("recipient_failed", campaign_id=campaign_id, recipient_id=outcome.id,
                      error_code=outcome.error_code)

    def apply_share(self) -> None:
        """Pace and cap this instance at its current share of the account rate."""
        rate = self.share.rate
        self.account_limiter.set_rate(rate)
        self.account_window.set_rate(rate)
        self.metrics.rate_limit.set(rate)

    def throttled(self) -> None:
        self.stats.throttled += 1
        self.metrics.throttled.inc()
        if self.share.on_throttle():
            self.apply_share()
            log.info("throttled_rate_cut", rate=round(self.share.rate, 2))


SKIP_REASONS = {
    "unsubscribed": ("ContactUnsubscribed", "contact unsubscribed before send time"),
    "bounced": ("ContactBounced", "contact address bounced before"),
    "complained": ("ContactComplained", "contact complained before"),
}


class CampaignRunner:
    """Sends one campaign from this instance until it is stopped."""

    def __init__(self, plan: CampaignPlan, ctx: SendContext, rate: float) -> None:
        self.plan = plan
        self.ctx = ctx
        self.limiter = WindowRateLimiter(rate, headroom=ctx.settings.rate_headroom)
        self.queue: deque[Claimed] = deque()
        self.inflight: set[asyncio.Task[None]] = set()
        self.cursor = 0
        self.stopping: str | None = None
        self.fresh_exhausted = False
        self._has_rows = asyncio.Event()
        self._wants_rows = asyncio.Event()
        self._wants_rows.set()
        self._check_due = True  # claim rows that came back, when the tick says some are due
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def batch_size(self) -> int:
        return max(10, min(self.ctx.settings.claim_batch, math.ceil(self.limiter.rate * 2)))

    def set_rate(self, rate: float) -> None:
        self.limiter.set_rate(rate)

    def retries_due(self) -> None:
        """The tick saw rows of this campaign due for another attempt."""
        self._check_due = True
        self._wants_rows.set()

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._claimer(), name=f"claim-{self.plan.id}"),
            asyncio.create_task(self._dispatcher(), name=f"dispatch-{self.plan.id}"),
        ]

    async def stop(self, mode: str) -> None:
        """Stop claiming and dispatching; hand back queued rows (pending, or skipped on cancel)."""
        if self.stopping:
            return
        self.stopping = mode
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.release_queued(cancelled=mode == "cancel")

    def release_queued(self, *, cancelled: bool = False) -> int:
        count = 0
        while self.queue:
            row = self.queue.popleft()
            if cancelled:
                self.ctx.finish(self.plan.id, Outcome(row.id, "skipped", row.attempts,
                                                      error_code="CampaignCancelled", error="campaign cancelled"))
            else:
                self.ctx.finish(self.plan.id, Outcome(row.id, "pending", row.attempts, retry_in=0.0))
            count += 1
        self._wants_rows.set()
        return count

    # -- claiming ----------------------------------------------------------------------------

    async def _claimer(self) -> None:
        backoff = 0.2
        while True:
            await self.ctx.gate.wait_open()
            if len(self.queue) >= self.batch_size // 2 + 1:
                self._wants_rows.clear()
                await self._wants_rows.wait()
                continue
            try:
                rows = await self._claim(self.batch_size - len(self.queue))
            except DB_ERRORS as exc:
                log.warning("claim_failed", campaign_id=self.plan.id, error=type(exc).__name__)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.2
            if not self.ctx.gate.is_open:
                # the account stopped while we claimed: hand the rows straight back
                self.queue.extend(rows)
                self.release_queued()
                continue
            if rows:
                self.queue.extend(rows)
                self._has_rows.set()
            else:
                self._wants_rows.clear()
                try:
                    await asyncio.wait_for(self._wants_rows.wait(), self.ctx.settings.poll_interval)
                except TimeoutError:
                    pass

    async def _claim(self, n: int) -> list[Claimed]:
        s = self.ctx.settings
        me, lease = s.instance_id, s.lease_seconds
        rows: list[asyncpg.Record] = []
        async with self.ctx.pool.acquire() as conn:
            if self._check_due:
                rows = await conn.fetch(QUERIES["claim_due"], self.plan.id, n, me, lease, timeout=30)
                self._check_due = len(rows) == n  # a full batch: there may be more
            if len(rows) < n:
                fresh = await conn.fetch(QUERIES["claim_fresh"], self.plan.id, self.cursor,
                                         n - len(rows), me, lease, timeout=30)
                if not fresh and self.cursor > 0:
                    # rows another instance skipped past may sit behind our bound: one pass from 0
                    self.cursor = 0
                    fresh = await conn.fetch(QUERIES["claim_fresh"], self.plan.id, 0,
                                             n - len(rows), me, lease, timeout=30)
                if fresh:
                    self.cursor = fresh[-1]["id"]
                    self.fresh_exhausted = False
                else:
                    self.fresh_exhausted = True
                    self._check_due = True  # nothing fresh left: look for due rows every time
                rows.extend(fresh)
        return [Claimed.from_record(r) for r in rows]

    # -- dispatching ---------------------------------------------------------------------------

    async def _dispatcher(self) -> None:
        ctx = self.ctx
        while True:
            await ctx.gate.wait_open()
            if not self.queue:
                self._has_rows.clear()
                self._wants_rows.set()
                await self._has_rows.wait()
                continue
            row: Claimed | None = None
            acquired = False
            try:
                await ctx.inflight.acquire()
                acquired = True
                row = self.queue.popleft()
                if len(self.queue) <= self.batch_size // 2:
                    self._wants_rows.set()
                await self.limiter.acquire()
                await ctx.account_limiter.acquire()
                if not ctx.gate.is_open:
                    # the account stopped while we waited: this row goes back like the queued ones
                    self.queue.appendleft(row)
                    row = None
                    self.release_queued()
                    ctx.inflight.release()
                    acquired = False
                    continue
                task = asyncio.create_task(self._deliver(row))
                row = None
                acquired = False
                self.inflight.add(task)
                task.add_done_callback(self.inflight.discard)
            except asyncio.CancelledError:
                if row is not None:
                    self.queue.appendleft(row)
                if acquired:
                    ctx.inflight.release()
                raise

    # -- delivering -------------------------------------------------------------------------------

    def _build_email(self, row: Claimed) -> OutgoingEmail | Outcome:
        try:
            to = normalise_address(row.email)
        except AddressError as exc:
            return Outcome(row.id, "failed", row.attempts, error_code="InvalidAddress", error=str(exc))
        try:
            return self.plan.compose(self.ctx.settings, row.contact, to=to, recipient_id=row.id)
        except TemplateProblem as exc:
            return Outcome(row.id, "failed", row.attempts, error_code="TemplateError", error=str(exc)[:500])

    async def _deliver(self, row: Claimed) -> None:
        ctx = self.ctx
        try:
            ctx.finish(self.plan.id, await self._attempt(row))
        except asyncio.CancelledError:
            # cut off mid-send at shutdown: the outcome is unknown
            if ctx.settings.crash_policy == "fail":
                ctx.finish(self.plan.id, Outcome(row.id, "failed", row.attempts + 1, error_code="OutcomeUnknown",
                                                 error="send interrupted by shutdown; SES may have accepted it"))
            else:
                ctx.finish(self.plan.id, Outcome(row.id, "pending", row.attempts, retry_in=0.0))
            raise
        finally:
            ctx.inflight.release()

    async def _attempt(self, row: Claimed) -> Outcome:
        ctx = self.ctx
        if row.contact_status and row.contact_status != "subscribed":
            code, text = SKIP_REASONS.get(row.contact_status, ("ContactInactive", "contact not subscribed"))
            return Outcome(row.id, "skipped", row.attempts, error_code=code, error=text)
        if row.suppressed:
            return Outcome(row.id, "skipped", row.attempts, error_code="Suppressed", error="address is suppressed")
        email = self._build_email(row)
        if isinstance(email, Outcome):
            return email
        while True:
            started = time.monotonic()
            try:
                message_id = await ctx.ses.send(email)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # every failure is classified; none escapes the row
                failure = classify(exc, from_email=email.from_email, default_from=ctx.settings.from_email)
            else:
                elapsed = time.monotonic() - started
                ctx.metrics.send_latency.observe(elapsed)
                return Outcome(row.id, "sent", row.attempts + 1, message_id=message_id,
                               sent_at=datetime.now(UTC))
            if failure.kind is ErrorKind.THROTTLED:
                ctx.throttled()
                if self.stopping or not ctx.gate.is_open:
                    return Outcome(row.id, "pending", row.attempts, retry_in=0.0)
                await self.limiter.acquire()
                await ctx.account_limiter.acquire()
                continue
            return self._after_failure(row, failure)

    def _after_failure(self, row: Claimed, failure: SendFailure) -> Outcome:
        ctx = self.ctx
        if failure.kind in (ErrorKind.ACCOUNT, ErrorKind.DAILY_QUOTA):
            ctx.on_account_error(failure)
            return Outcome(row.id, "pending", row.attempts, retry_in=0.0)
        if failure.kind is ErrorKind.CAMPAIGN:
            ctx.on_campaign_error(self.plan.id, failure)
            return Outcome(row.id, "pending", row.attempts, retry_in=0.0)
        attempts = row.attempts + 1
        if failure.kind is ErrorKind.TRANSIENT and ctx.retry.should_retry(attempts):
            return Outcome(row.id, "pending", attempts, error_code=failure.code,
                           error=failure.message or failure.code, retry_in=ctx.retry.delay(attempts))
        reason = failure.message or failure.code
        if failure.kind is ErrorKind.TRANSIENT:
            reason = f"gave up after {attempts} attempts: {reason}"
        return Outcome(row.id, "failed", attempts, error_code=failure.code, error=reason[:1000])
