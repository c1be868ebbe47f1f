"""One sending campaign on this instance: claim rows -> prepare each message -> wait for a rate slot -> send.

A claimer keeps a small local queue filled from the database; a dispatcher takes rows in order,
settles the ones that must not be sent (skipped, invalid, unrenderable) without using a rate
slot, and spawns a Delivery for each ready one while there is room among the few requests
waiting at the wire for an account slot (sender.shared_rate). Campaigns get those places in
proportion to their rate_per_sec (the cap when null: evenly), never more than their own rate (of
which each instance sending the campaign holds a share, sender.campaign_share), and what one
cannot use goes to the others. No database lock is held while
SES is called.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable

from sender.backoff import Backoff
from sender.campaign_share import HOLD_SECONDS, RENEW_AFTER, CampaignShare
from sender.campaigns import CampaignPlan
from sender.db import DB_ERRORS, db_error_text
from sender.delivery import Delivery, SendContext
from sender.logs import get_logger
from sender.message import Claimed, Outcome, prepare
from sender.ratelimit import CampaignWindow
from sender.shared_rate import GRANT_SECONDS

log = get_logger("sender.runner")

EXHAUSTED_POLLS = 10  # poll intervals an exhausted campaign waits before looking again by itself


class CampaignRunner:
    """Sends one campaign from this instance until it is stopped."""

    def __init__(self, plan: CampaignPlan, ctx: SendContext, rate: float | None) -> None:
        self.plan = plan
        self.ctx = ctx
        self.window: CampaignWindow | None = None  # the campaign's own rate, when it has one
        self.share: CampaignShare | None = None  # ... of which this instance holds a share
        self._share_ok = asyncio.Event()  # set while this instance may send the campaign
        self._rated = asyncio.Event()  # set while the campaign has a rate (and so a share) of its own
        self._renew_now = asyncio.Event()  # what the campaign wants of its share changed
        self.queue: deque[Claimed] = deque()
        self.cursor = 0
        self.stopping: str | None = None
        self._delivery = Delivery(ctx, plan.id, self._withdrawn)
        self._has_rows = asyncio.Event()
        self._wants_rows = asyncio.Event()
        self._wants_rows.set()
        self._check_due = False  # claim rows that came back, when the tick says some are due
        self._sweep = False  # the next fresh claim also looks behind the cursor (see _claim)
        self._exhausted = False  # the last claim found all there was: wait for news from the tick
        self._ran_out = False  # exhausted with every recipient there: our share of its rate can go
        self._probing = False  # looking again after running out: one unit of the rate is enough
        self._news = asyncio.Event()  # the tick's news: rows due again, materialisation finished
        self.materialised = False  # all recipients exist (the tick says so): nothing new will appear
        self._tasks: list[asyncio.Task[None]] = []
        self._started = 0.0  # loop time the runner started
        self._in_hand: Claimed | None = None  # popped by the dispatcher, waiting for a rate slot
        self.set_rate(rate)

    def held(self) -> list[int]:
        """Rows this runner holds that are neither in flight nor settled: queued, or waiting for a slot."""
        ids = [row.id for row in self.queue]
        if self._in_hand is not None:
            ids.append(self._in_hand.id)
        return ids

    def ready(self) -> int:
        """Rows ready to go soon."""
        return len(self.queue) + (self._in_hand is not None)

    def slots_wanted(self) -> int:
        """Account slots this campaign can use in the next grant: its ready rows, no more than its
        own rate lets through meanwhile."""
        ready = self.ready()
        return ready if self.window is None else min(ready, self.window.sendable_within(GRANT_SECONDS))

    @property
    def limit(self) -> float:
        """The campaign's rate limit across every instance: its own rate, or the account cap."""
        return self.window.rate if self.window is not None else self.ctx.rate.cap

    @property
    def rate(self) -> float:
        """What this instance may send of the campaign per second: its share of the campaign's rate."""
        return self.window.share_rate if self.window is not None else self.ctx.rate.cap

    @property
    def equal_share(self) -> float:
        """The cap divided among the campaigns sending here."""
        return self.ctx.rate.cap / max(1, self.ctx.campaigns_sending)

    @property
    def weight(self) -> float:
        """This campaign's claim on the account's places: its own rate, or without one an equal share
        of the cap (so a campaign at 10/s next to a hundred without a rate still gets about 10/s)."""
        return max(self.window.share_rate, 1e-3) if self.window is not None else self.equal_share

    @property
    def batch_size(self) -> int:
        """About two seconds of this campaign's share of sending (its rate, or an equal share of the
        cap): short enough that contact status read at claim time is fresh however many campaigns send."""
        share = min(self.rate, self.equal_share)
        return max(1, min(self.ctx.settings.claim_batch, math.ceil(share * 2)))

    def set_rate(self, rate: float | None) -> None:
        """The campaign's own rate (None: none, it shares the account's cap)."""
        if rate is None:
            self.window = self.share = None
            self._share_ok.set()
            self._rated.clear()
        elif self.window is None:
            self.window = CampaignWindow(rate, margin=self.ctx.settings.rate_headroom)
            self.window.set_units(0)  # until the database says what our share is
            self.share = CampaignShare(self.ctx.pool, self.plan.id, self.ctx.settings.instance_id)
            self._share_ok.clear()
            self._rated.set()
        else:
            self.window.set_rate(rate)
            self._renew_now.set()

    def _withdrawn(self) -> bool:
        """Requests waiting at the wire go back unsent: the campaign stopped, or our share of its rate
        ran out (renewals failing)."""
        return self.stopping is not None or (self.share is not None and self.share.units() < 1)

    def set_materialised(self, done: bool) -> None:
        """The tick's view of the campaign; when materialisation has just finished, look at once."""
        if done and not self.materialised:
            self._news.set()
        self.materialised = done

    def retries_due(self) -> None:
        """The tick saw rows of this campaign due for another attempt."""
        self._check_due = True
        self._news.set()

    def start(self) -> None:
        self._started = asyncio.get_running_loop().time()
        self._tasks = [
            asyncio.create_task(self._claimer(), name=f"claim-{self.plan.id}"),
            asyncio.create_task(self._dispatcher(), name=f"dispatch-{self.plan.id}"),
            asyncio.create_task(self._sharer(), name=f"share-{self.plan.id}"),
        ]

    def crashed(self) -> BaseException | None:
        """The exception that killed the claimer or dispatcher, if one died."""
        for task in self._tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                return task.exception()
        return None

    async def stop(self, mode: str) -> None:
        """Stop claiming and dispatching; hand back queued rows (pending, or skipped on cancel).

        Deliveries already started are not touched: they finish and write their outcome.
        """
        if self.stopping:
            return
        self.stopping = mode
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.release_queued(cancelled=mode == "cancel")

    async def release_share(self) -> None:
        """After stopping: our share of the campaign's rate goes to the others once it has cooled
        (else our hold runs out by itself within HOLD_SECONDS)."""
        if self.share is not None and self.window is not None:
            try:
                await self.share.release(self.window.span, self.window.used())
            except DB_ERRORS:
                pass

    # -- the campaign's rate, shared with the other instances sending it -------------------------

    def _want(self) -> int:
        """The units of the campaign's rate this instance asks for: all of them while it has rows to
        send or more may come (the database splits them evenly); once it has run out of a campaign
        that has all its recipients, none, and one while it looks again (what it holds, if more)."""
        window = self.window
        if window is None or self.stopping is not None or not self.ctx.account.gate.is_open:
            return 0
        if self.ready() or window.room.pending or not (self._ran_out or self._probing):
            return window.total  # rows at hand (or waiting at the wire), or more may come
        if self._ran_out:
            return 0
        return max(1, self.share.units()) if self.share is not None else 1

    async def _sharer(self) -> None:
        """Renew our share every RENEW_AFTER, or at once when what we want changed or we just gave
        units up (saying so at once lets them cool and go to the others sooner); without a share,
        hand back what is queued."""
        while True:
            share, window = self.share, self.window
            if share is None or window is None:  # no rate of its own: nothing to share until it gets one
                await self._rated.wait()
                continue
            before, want, total = min(share.units(), window.units), self._want(), window.total
            try:
                units = window.scaled(await share.renew(total, want, window.span, window.used()), total)
            except DB_ERRORS as exc:  # what we hold while it lasts, no more than we enforce (the rate may have dropped)
                log.warning("campaign_share_failed", campaign_id=self.plan.id, error=db_error_text(exc))
                units = min(share.units(), window.units)
            window.set_units(units)  # as a share of the rate now: it may have dropped while we asked
            if units > 0:
                self._share_ok.set()
            else:
                self._share_ok.clear()
                self.release_queued()
            if units < before:
                continue  # confirm the smaller share straight away
            # sooner while units cool for us, and while the campaign is new here: the other instances
            # start it at about the same time, and the first one to ask holds every unit until told
            young = asyncio.get_running_loop().time() - self._started < HOLD_SECONDS
            await self._until_renewal_due(want, RENEW_AFTER / 4 if share.short or young else RENEW_AFTER)

    async def _until_renewal_due(self, want: int, after: float) -> None:
        """Wait `after` seconds (sooner while units cool for us), or less if what we want changes."""
        deadline = asyncio.get_running_loop().time() + after
        while True:
            self._renew_now.clear()
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0 or self._want() != want:
                return
            try:
                await asyncio.wait_for(self._renew_now.wait(), left)
            except TimeoutError:
                return

    def release_queued(self, *, cancelled: bool = False) -> int:
        count = 0
        while self.queue:
            row = self.queue.popleft()
            if cancelled:
                self.ctx.finish(self.plan.id, Outcome(row.id, "skipped", row.attempts,
                                                      error_code="CampaignCancelled", error="campaign cancelled"))
            else:
                self.ctx.finish(self.plan.id, Outcome.handed_back(row))
            count += 1
        self._wants_rows.set()
        return count

    # -- claiming ----------------------------------------------------------------------------

    async def _claimer(self) -> None:
        """Keep the queue about `batch_size` long; once the campaign has nothing left to claim, wait
        for the tick (retries due, materialisation done) or, now and then, look again by itself."""
        backoff = Backoff(initial=0.1, cap=1.0)
        while True:
            await self.ctx.account.gate.wait_open()
            if self._exhausted:  # before waiting for a share: we gave ours up when we ran out
                try:
                    # chunks are still arriving while it materialises: look every poll interval
                    polls = EXHAUSTED_POLLS if self.materialised else 1
                    await asyncio.wait_for(self._news.wait(), self.ctx.settings.poll_interval * polls)
                except TimeoutError:
                    self._check_due = self._sweep = True  # rows the main app added, or ones behind the cursor
                self._set_exhausted(False)
                continue
            await self._share_ok.wait()
            if len(self.queue) >= self.batch_size:
                self._wants_rows.clear()
                await self._wants_rows.wait()
                continue
            materialised = self.materialised  # before the claim: every recipient was there to find
            try:
                asked, claimed = await self._claim()
            except DB_ERRORS as exc:
                log.debug("claim_failed", campaign_id=self.plan.id, error=db_error_text(exc))  # logged once by Claims
                await backoff.wait()
                continue
            backoff.reset()
            if asked and (claimed == 0 or (claimed < asked and self.materialised)):
                self._set_exhausted(True, ran_out=materialised)  # nothing more to claim until the tick says so
            elif claimed and self._probing:
                self._probing = False  # rows after all: ask for a full share again
                self._renew_now.set()

    def _set_exhausted(self, exhausted: bool, *, ran_out: bool = False) -> None:
        """Nothing to claim for now; when every recipient was there to find, we ran out, and our share
        of the campaign's rate goes once the queue is sent. Looking again after that, we probe with
        one unit of it."""
        self._probing = not exhausted and self._ran_out
        self._exhausted = exhausted
        self._ran_out = exhausted and ran_out
        if self.window is not None:
            self._renew_now.set()

    def _wanted(self) -> int:
        """Rows to top the queue up to a batch, asked when the claim statement is built."""
        if self.stopping is not None or not self.ctx.account.gate.is_open or not self._share_ok.is_set():
            return 0
        return max(0, self.batch_size - len(self.queue))

    async def _claim(self) -> tuple[int, int]:
        """Claim rows into the queue, (asked, claimed). A fresh claim that finds nothing behind a
        moved cursor looks once more from the start when other instances may have skipped rows."""
        due, self._check_due = self._check_due, False
        self._news.clear()  # news from the tick from here on is about rows this claim may miss
        urgent = len(self.queue) <= self.batch_size // 2
        asked, claimed = await self.ctx.claims.claim(self.plan.id, self.cursor, self._wanted, due=due,
                                                     urgent=urgent, deliver=self._take)
        if due and asked > 0 and claimed == asked:
            self._check_due = True  # a full batch: there may be more
        if asked and claimed == 0 and self.cursor > 0 and (self._sweep or self.ctx.rate.instances > 1):
            self.cursor = 0
            asked, claimed = await self.ctx.claims.claim(self.plan.id, 0, self._wanted, due=False, urgent=True,
                                                         deliver=self._take)
        self._sweep = False
        return asked, claimed

    def _take(self, rows: list[Claimed]) -> None:
        """Claimed rows, straight from the claim statement: queued, or handed back once stopping."""
        fresh = [row.id for row in rows if row.fresh]
        if fresh:
            self.cursor = max(self.cursor, max(fresh))
        if self.stopping is not None or not self.ctx.account.gate.is_open:
            for row in rows:  # stopped, or the account stopped, while the claim ran
                self.ctx.finish(self.plan.id, Outcome.handed_back(row))
            return
        self.queue.extend(rows)
        if rows:
            self._has_rows.set()

    # -- dispatching ---------------------------------------------------------------------------

    async def _dispatcher(self) -> None:
        ctx = self.ctx
        while True:
            await ctx.account.gate.wait_open()
            await self._share_ok.wait()
            if not self.queue:
                if self._ran_out and self.window is not None:
                    self._renew_now.set()  # the last row went: give our share up
                self._has_rows.clear()
                self._wants_rows.set()
                ctx.claims.hurry()
                await self._has_rows.wait()
                continue
            row = self.queue.popleft()
            self._wants_rows.set()  # a top-up rides along with the next claim statement ...
            if len(self.queue) <= self.batch_size // 2:
                ctx.claims.hurry()  # ... which this campaign now needs soon
            if not ctx.heartbeat.may_send(row.claimed_at):
                ctx.finish(self.plan.id, Outcome.handed_back(row))  # others may own it: never send it late
                continue
            email = prepare(self.plan, ctx.settings, row)
            if isinstance(email, Outcome):
                ctx.finish(self.plan.id, email)  # skipped or failed: no rate slot used
                continue
            self._in_hand = row
            try:
                await self._wait_for_room()
            except BaseException:  # cancelled (or a bug in a room): the row stays ours, to be handed back
                self.queue.appendleft(row)
                raise
            finally:
                self._in_hand = None
            stopped = not ctx.account.gate.is_open or self._withdrawn()  # the account, or our share
            if stopped or not ctx.heartbeat.may_send(row.claimed_at):
                self._leave_rooms()
                self.queue.appendleft(row)
                if stopped:
                    self.release_queued()  # the account stopped, or we lost our share, while we waited
                continue
            self._delivery.start(row, email, self.window)

    async def _wait_for_room(self) -> None:
        """Room among the few requests waiting at the wire for a rate slot (so a pause withdraws only
        those), then an in-flight slot; on cancel, nothing is held.

        The rooms come first: they choose which campaign goes next (fair shares by rate). Taking the
        in-flight semaphore first let its first-come order decide instead, which shared the cap
        evenly whatever the rates once every campaign's dispatcher waited on it.
        """
        ctx = self.ctx
        window = self.window
        taken: list[Callable[[], None]] = []
        try:
            if window is not None:
                await window.room.acquire()
                taken.append(window.room.release)
                # a place among the account's requests only then (or the account or our share stopped)
                await window.wait_open(lambda: not ctx.account.gate.is_open or self._withdrawn())
            await ctx.account_budget.room.acquire(self.plan.id, self.weight)
            taken.append(ctx.account_budget.room.release)
            await ctx.inflight.acquire()
        except BaseException:
            for release in reversed(taken):
                release()
            raise

    def _leave_rooms(self) -> None:
        """Dispatch called off after _wait_for_room: give back what it took."""
        self.ctx.inflight.release()
        self.ctx.account_budget.room.release()
        if self.window is not None:
            self.window.room.release()
