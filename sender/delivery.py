"""One SES call per ready message, and what its result means for the row (SPEC §5).

Every delivery task of the instance is registered in `SendContext.deliveries`, whichever campaign
it belongs to and whether or not that campaign's runner still exists, so shutdown drains all of
them and nothing in flight is ever handed back as if it had not been sent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg

from sender.account import Account
from sender.claims import Claims
from sender.config import Settings
from sender.heartbeat import Heartbeat
from sender.logs import get_logger
from sender.message import Claimed, Outcome
from sender.metrics import Metrics
from sender.ratelimit import AccountRate, CampaignWindow
from sender.ses import ErrorKind, OutgoingEmail, RetryPolicy, SendFailure, SesClient, classify
from sender.shared_rate import WIRE_PASS, SharedRate, WirePass, Withdrawn
from sender.writeback import ResultBuffer

log = get_logger("sender.delivery")


@dataclass
class SendContext:
    """What every campaign runner of one instance shares."""

    settings: Settings
    pool: asyncpg.Pool
    ses: SesClient
    buffer: ResultBuffer
    account: Account
    rate: AccountRate
    account_budget: SharedRate  # the account cap, shared with every instance (spent at the wire)
    concurrency: int
    inflight: asyncio.Semaphore
    retry: RetryPolicy
    metrics: Metrics
    heartbeat: Heartbeat
    claims: Claims
    on_campaign_error: Callable[[int, SendFailure], None]
    deliveries: dict[asyncio.Task[None], int] = field(default_factory=dict)  # task -> recipient id
    campaigns_sending: int = 0  # runners on this instance: each campaign claims about its share
    sent_count: int = 0  # sends accepted by SES on this instance, for the rate the heartbeat reports

    def finish(self, campaign_id: int, outcome: Outcome) -> None:
        """The one place an outcome is counted and queued for write-back."""
        if outcome.status == "sent":
            self.sent_count += 1
        if outcome.status == "pending":
            (self.metrics.retries if outcome.error_code else self.metrics.released).inc()
        else:
            self.metrics.outcome(campaign_id, outcome.status)
            if outcome.status == "failed":
                log.debug("recipient_failed", campaign_id=campaign_id, recipient_id=outcome.id,
                          error_code=outcome.error_code)
        self.buffer.add(outcome)

    def apply_rate(self) -> None:
        """The account budget follows the cap (SENDER_MAX_RATE or GetAccount)."""
        self.account_budget.set_rate(self.rate.cap)

    async def throttled(self) -> None:
        """A 429: counted here, and the shared account budget is cut for every instance."""
        self.metrics.throttled.inc()
        before = self.account_budget.effective
        await self.account_budget.throttled()
        if self.account_budget.effective < before:
            log.info("throttled_rate_cut", rate=round(self.account_budget.effective, 2))

    def in_flight(self) -> int:
        return len(self.deliveries)


class Delivery:
    """Sends one message for one campaign; the outcome always reaches the buffer, even when cancelled."""

    def __init__(self, ctx: SendContext, campaign_id: int, is_stopping: Callable[[], bool]) -> None:
        self.ctx = ctx
        self.campaign_id = campaign_id
        self._is_stopping = is_stopping

    def start(self, row: Claimed, email: OutgoingEmail, window: CampaignWindow | None) -> None:
        """Spawn the delivery task (the caller holds an `inflight` slot, released when it ends). The
        request waits at the wire for an account slot within the campaign's `window` (if any)."""
        ctx = self.ctx
        wire = WirePass(ctx.account_budget, window, withdrawn=lambda: self._withdrawn(row), reserved=True)
        task = asyncio.create_task(self._run(row, email, wire), name=f"deliver-{self.campaign_id}")
        self.ctx.deliveries[task] = row.id
        task.add_done_callback(lambda done: self._done(done, wire))

    def _withdrawn(self, row: Claimed) -> bool:
        ctx = self.ctx
        return self._is_stopping() or not ctx.account.gate.is_open or not ctx.heartbeat.may_send(row.claimed_at)

    def _done(self, task: asyncio.Task[None], wire: WirePass) -> None:
        wire.release()
        self.ctx.deliveries.pop(task, None)
        self.ctx.inflight.release()

    async def _run(self, row: Claimed, email: OutgoingEmail, wire: WirePass) -> None:
        ctx = self.ctx
        WIRE_PASS.set(wire)
        try:
            ctx.finish(self.campaign_id, await self._attempt(row, email))
        except asyncio.CancelledError:
            # cut off mid-send at shutdown: the outcome is unknown
            if ctx.settings.crash_policy == "fail":
                ctx.finish(self.campaign_id, Outcome(row.id, "failed", row.attempts + 1, error_code="OutcomeUnknown",
                                                     error="send interrupted by shutdown; SES may have accepted it"))
            else:
                ctx.finish(self.campaign_id, Outcome.handed_back(row))
            raise

    async def _attempt(self, row: Claimed, email: OutgoingEmail) -> Outcome:
        ctx = self.ctx
        while True:
            started = time.monotonic()
            try:
                message_id = await ctx.ses.send(email)
            except asyncio.CancelledError:
                raise
            except Withdrawn:
                return Outcome.handed_back(row)  # stopped while it waited for a rate slot: never sent
            except Exception as exc:  # every failure is classified; none escapes the row
                failure = classify(exc, from_email=email.from_email, default_from=ctx.settings.from_email)
            else:
                ctx.metrics.send_latency.observe(time.monotonic() - started)
                return Outcome(row.id, "sent", row.attempts + 1, message_id=message_id, sent_at=datetime.now(UTC))
            if failure.kind is not ErrorKind.THROTTLED:
                return self._after_failure(row, failure)
            await ctx.throttled()
            if self._is_stopping() or not ctx.account.gate.is_open or not ctx.heartbeat.may_send(row.claimed_at):
                return Outcome.handed_back(row)
            # the retry takes fresh tokens of the same budgets at the wire

    def _after_failure(self, row: Claimed, failure: SendFailure) -> Outcome:
        ctx = self.ctx
        if failure.kind in (ErrorKind.ACCOUNT, ErrorKind.DAILY_QUOTA):
            ctx.account.stop(failure)
            return Outcome.handed_back(row)
        if failure.kind is ErrorKind.CAMPAIGN:
            ctx.on_campaign_error(self.campaign_id, failure)
            return Outcome.handed_back(row)
        attempts = row.attempts + 1
        if failure.kind is ErrorKind.TRANSIENT and ctx.retry.should_retry(attempts):
            return Outcome(row.id, "pending", attempts, error_code=failure.code,
                           error=failure.message or failure.code, retry_in=ctx.retry.delay(attempts))
        reason = failure.message or failure.code
        if failure.kind is ErrorKind.TRANSIENT:
            reason = f"gave up after {attempts} attempts: {reason}"
        return Outcome(row.id, "failed", attempts, error_code=failure.code, error=reason[:1000])
