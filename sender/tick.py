"""The housekeeping tick: every SENDER_POLL_INTERVAL, or at once on NOTIFY.

It reads one overview, then runs each step on its own: start queued campaigns, fail the ones
that cannot send, start and stop runners as campaigns change status, complete finished ones,
skip cancelled ones and recover rows of dead instances. A step that fails is logged and the
others still run; an error tied to one campaign fails that campaign with its reason. Nothing
here waits on big work: materialisation runs on its own task (Materialiser).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import asyncpg

from sender.backoff import Backoff
from sender.campaigns import STARTS_PER_STATEMENT, CampaignPlan, load_plans, materialise_step, start_queued
from sender.db import DB_ERRORS, QUERIES, db_error_text
from sender.logs import get_logger

if TYPE_CHECKING:
    from sender.daemon import Daemon

log = get_logger("sender.tick")

STARTS_PER_TICK = STARTS_PER_STATEMENT  # one batched start per tick; a full batch wakes the next tick at once
FULL_COMPLETION_CHECK_EVERY = 30  # ticks; catches recipients the main app added after starting
RECOVER_EVERY = 5  # ticks


class Tick:
    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon
        self.count = 0
        self.db_failed = False
        self._last_progress_log = 0.0
        self.again = False  # run the next tick at once (set by a step that started campaigns)
        # compiled by the start checks, with the tick that started them, until a runner takes them
        self._plans: dict[int, tuple[CampaignPlan, int]] = {}

    async def loop(self, stop: asyncio.Event, wake: asyncio.Event) -> None:
        """Tick every poll interval, or at once when `wake` is set; a tick the database failed is retried
        after a backoff capped at 1 s, so sending resumes about a second after the database is back."""
        d = self.d
        backoff = Backoff(initial=0.1, cap=1.0)
        while not stop.is_set():
            try:
                await self.run()
                d.db_health.succeeded()
                d.ready.set()
                backoff.reset()
                wait = d.wakeups.next_wait(d.busy)
            except DB_ERRORS as exc:
                problem = d.db_health.failed(exc)
                wait = backoff.next()
                log.warning("tick_failed", error=problem.code, reason=problem.reason, retry_in=wait)
            d.last_tick = time.monotonic()
            wake.clear()
            if self.again:  # campaigns started: their runners start in the next tick, at once
                self.again = False
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), wait)

    async def run(self) -> None:
        """One tick; raises only when the overview itself cannot be read (the database is down)."""
        d, pool = self.d, self.d.pool
        self.count += 1
        self.db_failed = False
        await d.wakeups.ensure()
        overview = await pool.fetchrow(QUERIES["tick_overview"], timeout=10)
        d.ctx.apply_rate()
        await self._step("account_hold", lambda: d.account.sync_hold(pool, overview))
        room = d.settings.max_sending_campaigns - len(overview["sending"])
        if overview["queued_due"] and room > 0:
            await self._step("start_queued", lambda: self._start_queued(room))
        if overview["materialising"]:
            d.materialiser.wake()
        await self._step("fail_campaigns", self._fail_campaigns)
        sending: list[dict[str, Any]] = overview["sending"]
        d.busy = bool(sending or d.runners or overview["queued_due"] or overview["cancelling"]
                      or overview["materialising"])
        await self._step("sync_runners", lambda: self._sync_runners(sending))
        full = self.count % FULL_COMPLETION_CHECK_EVERY == 0
        if full or any(c["materialised"] and c["sent"] + c["failed"] + c["skipped"] >= c["total"] for c in sending):
            await self._step("complete", lambda: self._complete(full))
        if overview["cancelling"]:
            await self._step("skip_cancelled", self._skip_cancelled)
        if self.count % RECOVER_EVERY == 0:
            await self._step("recover", self._recover_orphans)
        d.garbage.maybe_collect()
        if self.db_failed:
            raise ConnectionError("a tick step could not reach the database")

    async def _step(self, name: str, step: Callable[[], Awaitable[None]]) -> None:
        try:
            await step()
        except DB_ERRORS as exc:
            self.db_failed = True
            log.warning("tick_step_failed", step=name, error=db_error_text(exc))
        except Exception as exc:
            log.error("tick_step_crashed", step=name, error=f"{type(exc).__name__}: {exc}"[:300], exc_info=exc)

    async def _fail(self, campaign_id: int, reason: str) -> None:
        await self.d.pool.execute(QUERIES["campaign_fail"], campaign_id, reason[:1000], timeout=10)
        log.error("campaign_failed", campaign_id=campaign_id, error=reason[:300])

    async def _start_queued(self, room: int = STARTS_PER_TICK) -> None:
        """Every due queued campaign up to STARTS_PER_TICK, and up to `room` under
        SENDER_MAX_SENDING_CAMPAIGNS, in one batched start (a fixed number of statements); the next
        tick follows at once, to start their runners (and the rest, if any). Beyond the bound,
        campaigns stay queued, oldest first, until sending ones finish: the instance's memory, the
        tick's overview and each campaign's share of the cap stay bounded however many are queued."""
        limit = min(STARTS_PER_TICK, room)
        results = await start_queued(self.d.pool, self.d.settings, limit=limit)
        for started in results:
            if started.started:
                log.info("campaign_started", campaign_id=started.campaign_id)
                if started.plan is not None:
                    self._plans[started.campaign_id] = (started.plan, self.count)
            else:
                log.error("campaign_failed", campaign_id=started.campaign_id, error=started.error)
        if any(r.started for r in results):
            self.d.materialiser.wake()
            self.again = True
        if len(results) >= limit and limit < room:
            self.again = True  # the rest of the due campaigns, while there is room

    async def _fail_campaigns(self) -> None:
        failed = self.d.failed_campaigns
        while failed:
            campaign_id, failure = next(iter(failed.items()))
            await self._fail(campaign_id, f"{failure.code}: {failure.message}")
            del failed[campaign_id]

    async def _sync_runners(self, rows: list[dict[str, Any]]) -> None:
        d = self.d
        sending = {r["id"]: r["rate_per_sec"] for r in rows}
        materialised = {r["id"] for r in rows if r["materialised"]}
        self._report_progress(rows)
        await self._stop_gone(set(sending))
        retries_due = {r["id"] for r in rows if r["retries_due"]}
        for cid in [cid for cid, (_, tick) in self._plans.items() if cid not in sending and tick < self.count]:
            del self._plans[cid]  # started earlier but not sending now (paused, cancelled): loaded afresh later
        new: list[int] = []
        for cid, rate in sending.items():
            runner = d.runners.get(cid)
            if runner is not None and (crash := runner.crashed()) is not None:
                log.error("campaign_runner_crashed", campaign_id=cid, error=f"{type(crash).__name__}: {crash}"[:300])
                await d.stop_runner(cid, "pause")
                runner = None
            if runner is not None:
                runner.set_rate(d.rate.campaign_rate(rate))
                runner.set_materialised(cid in materialised)
                if cid in retries_due:
                    runner.retries_due()
            elif cid not in d.failed_campaigns:
                new.append(cid)
        if not new:
            return
        plans = {cid: self._plans.pop(cid)[0] for cid in new if cid in self._plans}
        missing = [cid for cid in new if cid not in plans]
        if missing:  # one round trip and one compile per distinct template for all of them
            for loaded in await load_plans(d.pool, missing, d.settings):
                if loaded.plan is not None:
                    plans[loaded.campaign_id] = loaded.plan
                else:
                    await self._fail(loaded.campaign_id, loaded.error or "cannot load the campaign")
        for cid in new:
            if cid in plans:
                runner = d.start_runner(plans[cid], d.rate.campaign_rate(sending[cid]))
                if runner is None:  # the daemon is stopping
                    continue
                runner.set_materialised(cid in materialised)
                if cid in retries_due:  # rows came back while no runner held the campaign (a pause, a restart)
                    runner.retries_due()

    async def _stop_gone(self, sending: set[int]) -> None:
        gone = [cid for cid in self.d.runners if cid not in sending]
        if not gone:
            return
        statuses = {r["id"]: r["status"] for r in await self.d.pool.fetch(QUERIES["campaign_statuses"], gone,
                                                                          timeout=10)}
        for cid in gone:
            status = statuses.get(cid, "deleted")
            await self.d.stop_runner(cid, "cancel" if status == "cancelled" else "pause")
            log.info("campaign_runner_stopped", campaign_id=cid, status=status)

    def _report_progress(self, rows: list[dict[str, Any]]) -> None:
        """Backlog gauges every tick (per campaign for the bounded set that has series, summed for all);
        every 10 s one `campaigns_progress` line and a `campaign_progress` line for each campaign of
        that set, so a thousand sending campaigns cost a dict walk, not a thousand series or lines."""
        metrics = self.d.metrics
        backlogs = {r["id"]: max(0, r["total"] - r["sent"] - r["failed"] - r["skipped"]) for r in rows}
        metrics.report_backlog(backlogs)
        now = time.monotonic()
        if not rows or now - self._last_progress_log < 10.0:
            return
        self._last_progress_log = now
        log.info("campaigns_progress", sending=len(rows), backlog=sum(backlogs.values()))
        for r in rows:
            if r["id"] in metrics.campaign_series:
                log.info("campaign_progress", campaign_id=r["id"], total=r["total"], sent=r["sent"],
                         failed=r["failed"], skipped=r["skipped"])

    async def _complete(self, full: bool) -> None:
        for row in await self.d.pool.fetch(QUERIES["complete_campaigns"], full, timeout=30):
            log.info("campaign_sent", campaign_id=row["id"], sent=row["sent_count"],
                     failed=row["failed_count"], skipped=row["skipped_count"])

    async def _skip_cancelled(self) -> None:
        for row in await self.d.pool.fetch(QUERIES["skip_cancelled"], timeout=30):
            if row["skipped"]:  # outcomes written by a set-based statement count too
                self.d.metrics.outcomes_in_bulk("skipped", row["skipped"])
            if row["finished"]:
                log.info("campaign_cancel_finished", campaign_id=row["id"])

    async def _recover_orphans(self) -> None:
        s, pool = self.d.settings, self.d.pool
        args = (s.instance_timeout, s.instance_id)
        if s.crash_policy == "fail":
            rows = await pool.fetch(QUERIES["recover_orphans_fail"], *args, timeout=30)
            for row in rows:
                self.d.metrics.outcomes_in_bulk("failed", row["n"])
            recovered = sum(row["n"] for row in rows)
        else:
            recovered = len(await pool.fetch(QUERIES["recover_orphans_retry"], *args, timeout=30))
        if recovered:
            log.warning("recovered_orphaned_rows", rows=recovered, policy=s.crash_policy)



class Materialiser:
    """Materialises started campaigns' recipients in chunks, off the tick (one campaign at a time)."""

    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon
        self._wake = asyncio.Event()
        self._wake.set()
        self.chunk = daemon.settings.materialise_chunk

    def wake(self) -> None:
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        backoff = Backoff(initial=0.2, cap=5.0)
        while not stop.is_set():
            try:
                await asyncio.wait_for(self._wake.wait(), self.d.settings.poll_interval * 5)
            except TimeoutError:
                continue
            self._wake.clear()
            try:
                while not stop.is_set() and (step := await materialise_step(self.d.pool, self.d.settings,
                                                                            chunk=self.chunk)) is not None:
                    if step.done:
                        log.info("campaign_materialised", campaign_id=step.campaign_id)
                        self.d.wake_tick()
                backoff.reset()
            except asyncpg.QueryCanceledError as exc:
                self.chunk = max(100, self.chunk // 2)  # a statement timeout: smaller chunks from now on
                log.warning("materialise_chunk_cancelled", error=db_error_text(exc), next_chunk=self.chunk)
                self._wake.set()
                await backoff.wait(stop)
            except DB_ERRORS as exc:
                log.warning("materialise_failed", error=db_error_text(exc))
                self._wake.set()
                await backoff.wait(stop)
