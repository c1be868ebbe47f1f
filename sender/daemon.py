"""One daemon instance: the housekeeping tick, campaign runners, the account gate and shutdown.

The tick (every SENDER_POLL_INTERVAL, or at once on NOTIFY) heartbeats, takes the instance's
share of the account rate, starts queued campaigns, starts and stops runners as campaigns change
status, completes finished campaigns, skips cancelled ones and recovers rows that dead instances
left leased. Any database error in it is logged and retried on the next tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import time
from typing import Any

import asyncpg

from sender.campaigns import CampaignProblem, load_plan, start_next_queued
from sender.config import ConfigError, Settings
from sender.db import QUERIES, connect, create_pool
from sender.db.migrate import available_migrations
from sender.deliverability import Deliverability
from sender.http import OpsServer
from sender.logs import get_logger
from sender.metrics import Metrics
from sender.pipeline import (
    DB_ERRORS,
    AccountGate,
    CampaignRunner,
    ResultBuffer,
    SendContext,
    Stats,
)
from sender.ratelimit import AdaptiveShare, SlidingWindow, WindowRateLimiter
from sender.ses import AccountInfo, ErrorKind, RetryPolicy, SendFailure, SesClient, classify, open_ses
from sender.systemd import SystemdNotifier

log = get_logger("sender.daemon")


def tune_gc_for_throughput() -> None:
    """Fewer, cheaper collections for an allocation-heavy I/O loop (botocore allocates a lot per call).

    Start-up objects (modules, the SES service model) move to the permanent generation and the
    young-generation threshold rises from 700 to 10,000: measured here, collections cost the
    daemon ~250 µs per message with the defaults (bench/throughput.py, GC on vs off).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)


def default_concurrency(cap: float) -> int:
    """Enough in-flight calls to reach the cap at ~250 ms SES latency, within sane bounds."""
    return max(8, min(256, math.ceil(cap * 0.25) + 8))


class Daemon:
    def __init__(self, settings: Settings, *, ses: SesClient | None = None, tune_gc: bool = False) -> None:
        self.settings = settings
        self._tune_gc = tune_gc
        self._ses = ses
        self.stats = Stats()
        self.metrics = Metrics()
        self.notifier = SystemdNotifier()
        self.ops = OpsServer(self)
        self._tick_task: asyncio.Task[None] | None = None
        self._last_progress_log = 0.0
        self.gate = AccountGate()
        self.runners: dict[int, CampaignRunner] = {}
        self.account: AccountInfo | None = None
        self.cap = settings.max_rate or 1.0
        self.instances = 1
        self.ready = asyncio.Event()
        self.last_tick = 0.0
        self.db_ok = False
        self._wake = asyncio.Event()
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncpg.Connection | None = None
        self._ctx: SendContext | None = None
        self._tick_count = 0
        self._pending_hold: SendFailure | None = None
        self._failed_campaigns: dict[int, SendFailure] = {}

    # -- lifecycle ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, force: asyncio.Event | None = None) -> None:
        s = self.settings
        s.require_for_run()
        assert s.database_url
        self._pool = await self._connect_pool(stop)
        if self._pool is None:
            return
        try:
            if self._ses is not None:
                await self._serve(self._ses, stop, force)
            else:
                async with open_ses(s, pool_size=s.concurrency or 256) as ses:
                    await self._serve(ses, stop, force)
        finally:
            await self._close_db()

    async def _connect_pool(self, stop: asyncio.Event) -> asyncpg.Pool | None:
        backoff = 0.5
        assert self.settings.database_url
        while not stop.is_set():
            try:
                pool = await create_pool(self.settings.database_url, min_size=1, max_size=10)
                self.db_ok = True
                return pool
            except DB_ERRORS as exc:
                log.warning("database_unreachable", error=type(exc).__name__, retry_in=backoff)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, 10.0)
        return None

    async def _serve(self, ses: SesClient, stop: asyncio.Event, force: asyncio.Event | None) -> None:
        s = self.settings
        assert self._pool is not None
        await self._check_schema()
        await self._refresh_account(ses, first=True)
        share = AdaptiveShare(self.cap)
        concurrency = s.concurrency or default_concurrency(self.cap)
        buffer = ResultBuffer(self._pool, s.instance_id, size=s.flush_size, interval=s.flush_interval,
                              stats=self.stats, on_flush=self._flushed)
        self._ctx = SendContext(
            settings=s, pool=self._pool, ses=ses, buffer=buffer, gate=self.gate, share=share,
            account_limiter=WindowRateLimiter(share.rate, headroom=s.rate_headroom, window=False),
            account_window=SlidingWindow(share.rate),
            inflight=asyncio.Semaphore(concurrency),
            retry=RetryPolicy(max_attempts=s.max_attempts, base_seconds=s.retry_base_seconds,
                              cap_seconds=s.retry_max_seconds),
            stats=self.stats, on_account_error=self._account_error,
            on_campaign_error=self._campaign_error, metrics=self.metrics,
        )
        ses.gate_wire(self._ctx.account_window.acquire)
        try:
            port = await self.ops.start()
        except OSError as exc:
            raise ConfigError(f"SENDER_HTTP_PORT: cannot listen on {s.http_host}:{s.http_port} "
                              f"({exc.strerror or exc})") from None
        # -- deliverability (issue 11): public listener, SES events consumer, account guard --
        self.deliverability = Deliverability(s, self._pool, self.metrics.registry)
        await self.deliverability.start()
        # -- end deliverability --
        if self._tune_gc:  # after start-up, so the SES model and pool are frozen too
            tune_gc_for_throughput()
        log.info("daemon_started", instance=s.instance_id, account_cap=self.cap, concurrency=concurrency,
                 http=f"{s.http_host}:{port}",
                 sandbox=bool(self.account and not self.account.production))
        self._tick_task = asyncio.create_task(self._tick_loop(stop), name="tick")
        background = [
            asyncio.create_task(buffer.run(), name="write-back"),
            self._tick_task,
            asyncio.create_task(self._probe_loop(ses, stop), name="probe"),
            asyncio.create_task(self._systemd_loop(stop), name="systemd"),
        ]
        try:
            await stop.wait()
        finally:
            log.info("shutdown_started", in_flight=self.in_flight())
            self.notifier.notify("STOPPING=1", "STATUS=draining in-flight sends")
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await self._shutdown(force)
            await self.deliverability.stop()  # deliverability (issue 11)
            await self.ops.stop()

    async def _shutdown(self, force: asyncio.Event | None) -> None:
        """Stop claiming, let in-flight sends finish within the grace period, flush, hand back."""
        ctx = self._ctx
        assert ctx is not None and self._pool is not None
        await asyncio.gather(*(runner.stop("shutdown") for runner in self.runners.values()))
        tasks = {t for runner in self.runners.values() for t in runner.inflight}
        if tasks:
            waiters: set[asyncio.Future[Any]] = {asyncio.ensure_future(asyncio.wait(tasks))}
            if force is not None:
                waiters.add(asyncio.ensure_future(force.wait()))
            await asyncio.wait(waiters, timeout=self.settings.grace_seconds, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        flushed = await ctx.buffer.flush(give_up_after=10.0)
        if not flushed:
            log.error("shutdown_results_unwritten", rows=len(ctx.buffer),
                      note="rows stay leased; another instance recovers them after the lease")
            return
        try:
            async with self._pool.acquire() as conn:
                released = await conn.fetch(QUERIES["release_held"], self.settings.instance_id, timeout=10)
                await conn.execute(QUERIES["instance_forget"], self.settings.instance_id, timeout=10)
            if released:
                log.info("released_held_rows", rows=len(released))
        except DB_ERRORS as exc:
            log.error("shutdown_release_failed", error=type(exc).__name__,
                      note="rows stay leased and are recovered after the lease expires")
        log.info("shutdown_complete", flushed=flushed, sent=self.stats.sent, failed=self.stats.failed)

    async def _close_db(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close(timeout=2)
        if self._pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pool.close(), 5)

    async def _check_schema(self) -> None:
        """Refuse to run against a database that `sender migrate` has not brought up to date."""
        assert self._pool is not None
        wanted = [version for version, _ in available_migrations()]
        try:
            applied = {r["version"] for r in await self._pool.fetch(QUERIES["migrations_applied"])}
        except asyncpg.UndefinedTableError:
            applied = set()
        missing = [v for v in wanted if v not in applied]
        if missing:
            raise ConfigError(f"DATABASE_URL: the schema is not up to date (missing {', '.join(missing)}): "
                              "run `sender migrate`")

    def in_flight(self) -> int:
        return sum(len(r.inflight) for r in self.runners.values())

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None
        return self._pool

    def tick_running(self) -> bool:
        return self._tick_task is not None and not self._tick_task.done()

    def current_rate(self) -> float:
        return self._ctx.share.rate if self._ctx is not None else 0.0

    def refresh_gauges(self) -> None:
        m = self.metrics
        m.in_flight.set(self.in_flight())
        m.rate_limit.set(self.current_rate())
        m.sending_stopped.set(0 if self.gate.is_open else 1)
        m.instances.set(self.instances)

    def _flushed(self, rows: int, seconds: float) -> None:
        self.metrics.write_back_rows.inc(rows)
        self.metrics.write_back_latency.observe(seconds)

    async def _systemd_loop(self, stop: asyncio.Event) -> None:
        """READY=1 after the first good tick; WATCHDOG=1 only while the tick loop is healthy."""
        if not self.notifier.enabled:
            return
        await self.ready.wait()
        self.notifier.notify("READY=1", f"STATUS=sending; cap {self.cap:g}/s")
        interval = self.notifier.watchdog_interval
        while interval and not stop.is_set():
            if self.tick_running() and time.monotonic() - self.last_tick < max(15.0, self.settings.poll_interval * 10):
                self.notifier.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    # -- account state ----------------------------------------------------------------------------

    async def _refresh_account(self, ses: SesClient, *, first: bool = False) -> bool:
        """Read GetAccount: cap, sandbox and daily quota. False when SES refuses us."""
        try:
            account = await ses.account()
        except Exception as exc:
            failure = classify(exc, from_email=self.settings.from_email or "", default_from=None)
            if failure.code in ("NotFoundException", "UnknownOperationException"):
                # an SES-compatible endpoint without GetAccount (moto, some proxies)
                if self.settings.max_rate is not None:
                    if first:
                        log.warning("get_account_unsupported", using="SENDER_MAX_RATE", cap=self.cap)
                    return True
                failure = SendFailure(ErrorKind.ACCOUNT, "GetAccountUnavailable",
                                      "the SES endpoint does not answer GetAccount: set SENDER_MAX_RATE")
            if first:
                log.warning("get_account_failed", code=failure.code, kind=str(failure.kind))
            if failure.kind is ErrorKind.ACCOUNT:
                self._account_error(failure)
            return False
        self.account = account
        if self.settings.max_rate is None:
            self.cap = account.max_send_rate
            if self._ctx is not None:
                self._ctx.share.cap = self.cap
        remaining = account.remaining_24h
        if not account.sending_enabled:
            self._account_error(SendFailure(ErrorKind.ACCOUNT, "SendingPaused",
                                            f"SES reports sending disabled ({account.enforcement})"))
            return False
        if remaining is not None and remaining <= 0:
            self._account_error(SendFailure(ErrorKind.DAILY_QUOTA, "DailyQuotaExhausted",
                                            "the 24-hour sending quota is used up"))
            return False
        return True

    def _account_error(self, failure: SendFailure) -> None:
        if self.gate.close(failure.code, failure.message, failure.kind):
            log.error("sending_stopped", code=failure.code, reason=failure.message, kind=str(failure.kind))
            self._pending_hold = failure
            for runner in self.runners.values():
                runner.release_queued()
            self._wake.set()

    def _campaign_error(self, campaign_id: int, failure: SendFailure) -> None:
        if campaign_id not in self._failed_campaigns:
            log.error("campaign_cannot_send", campaign_id=campaign_id, code=failure.code, reason=failure.message)
            self._failed_campaigns[campaign_id] = failure
            self._wake.set()

    async def _probe_loop(self, ses: SesClient, stop: asyncio.Event) -> None:
        """While sending is stopped, probe GetAccount; refresh quotas once a minute otherwise."""
        last_refresh = time.monotonic()
        while not stop.is_set():
            interval = self.settings.probe_interval if not self.gate.is_open else 1.0
            await asyncio.sleep(interval)
            if not self.gate.is_open:
                if await self._refresh_account(ses):
                    await self._reopen("probe")
            elif time.monotonic() - last_refresh > 60:
                last_refresh = time.monotonic()
                await self._refresh_account(ses)

    async def _reopen(self, why: str) -> None:
        was = self.gate.code
        self.gate.open()
        self._pending_hold = None
        log.info("sending_resumed", previous=was, by=why)
        assert self._pool is not None
        with contextlib.suppress(*DB_ERRORS):
            await self._pool.execute(QUERIES["account_hold_clear"], timeout=5)
        self._wake.set()

    # -- the tick -----------------------------------------------------------------------------------

    async def _tick_loop(self, stop: asyncio.Event) -> None:
        backoff = 0.5
        while not stop.is_set():
            try:
                await self.tick()
                self.db_ok = True
                self.ready.set()
                backoff = 0.5
                wait = self.settings.poll_interval
            except DB_ERRORS as exc:
                self.db_ok = False
                log.warning("tick_failed", error=type(exc).__name__, retry_in=backoff)
                wait = backoff
                backoff = min(backoff * 2, 10.0)
            self.last_tick = time.monotonic()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def tick(self) -> None:
        s, ctx, pool = self.settings, self._ctx, self._pool
        assert ctx is not None and pool is not None
        self._tick_count += 1
        await self._ensure_listener()
        overview_args = (s.instance_id, s.lease_seconds, max(3.0, s.poll_interval * 5))
        overview = await pool.fetchrow(QUERIES["tick_overview"], *overview_args, timeout=10)
        self.instances = int(overview["live"])
        ctx.share.instances = self.instances
        ctx.share.recover()
        ctx.apply_share()
        await self._sync_account_hold(pool, overview)
        if overview["queued_due"] and await self._start_queued(pool):
            overview = await pool.fetchrow(QUERIES["tick_overview"], *overview_args, timeout=10)
        await self._fail_campaigns(pool)
        sending: list[dict[str, Any]] = overview["sending"]
        await self._sync_runners(pool, sending)
        # counters move in the same statements as recipient rows, so they say when to look;
        # every 30th tick looks anyway (recipients the main app added after materialising)
        if any(c["sent"] + c["failed"] + c["skipped"] >= c["total"] for c in sending) or self._tick_count % 30 == 0:
            for row in await pool.fetch(QUERIES["complete_campaigns"], self._tick_count % 30 == 0, timeout=30):
                log.info("campaign_sent", campaign_id=row["id"], sent=row["sent_count"],
                         failed=row["failed_count"], skipped=row["skipped_count"])
        if overview["cancelling"]:
            for row in await pool.fetch(QUERIES["skip_cancelled"], timeout=30):
                log.info("campaign_cancel_finished", campaign_id=row["id"])
        if self._tick_count % 5 == 0:
            await self._recover_expired(pool)

    async def _start_queued(self, pool: asyncpg.Pool) -> bool:
        """Start up to five due campaigns; True when any was taken (started or failed)."""
        taken = False
        for _ in range(5):
            started = await start_next_queued(pool, self.settings)
            if started is None:
                break
            taken = True
            if started.started:
                log.info("campaign_started", campaign_id=started.campaign_id, recipients=started.total)
            else:
                log.error("campaign_failed", campaign_id=started.campaign_id, error=started.error)
        return taken

    async def _ensure_listener(self) -> None:
        if self._listener is not None and not self._listener.is_closed():
            return
        assert self.settings.database_url
        self._listener = await connect(self.settings.database_url, timeout=10)
        await self._listener.add_listener("sender_campaigns", lambda *_: self._wake.set())

    async def _sync_account_hold(self, pool: asyncpg.Pool, row: asyncpg.Record) -> None:
        """Share account-wide stops between instances through the sender_account_hold row."""
        if self._pending_hold is not None:
            hold = self._pending_hold
            await pool.execute(QUERIES["account_hold_set"], hold.message, hold.code, self.settings.instance_id)
            self._pending_hold = None
            return
        if row["hold_reason"] is not None and self.gate.is_open:
            if self.gate.close(row["hold_code"], row["hold_reason"], remote=True):
                log.error("sending_stopped", code=row["hold_code"], reason=row["hold_reason"], by=row["hold_set_by"])
                for runner in self.runners.values():
                    runner.release_queued()
        elif row["hold_reason"] is None and not self.gate.is_open and self.gate.remote:
            await self._reopen("another instance")

    async def _fail_campaigns(self, pool: asyncpg.Pool) -> None:
        while self._failed_campaigns:
            campaign_id, failure = next(iter(self._failed_campaigns.items()))
            await pool.execute(QUERIES["campaign_fail"], campaign_id, f"{failure.code}: {failure.message}")
            del self._failed_campaigns[campaign_id]

    def campaign_rate(self, rate_per_sec: float | None) -> float:
        sandbox = self.account is not None and not self.account.production
        wanted = rate_per_sec if rate_per_sec else (1.0 if sandbox else self.cap)
        return min(wanted, self.cap) / max(1, self.instances)

    async def _sync_runners(self, pool: asyncpg.Pool, rows: list[dict[str, Any]]) -> None:
        assert self._ctx is not None
        sending = {r["id"]: r["rate_per_sec"] for r in rows}
        self._report_progress(rows)
        gone = [cid for cid in self.runners if cid not in sending]
        if gone:
            statuses = {r["id"]: r["status"] for r in await pool.fetch(QUERIES["campaign_statuses"], gone)}
            for cid in gone:
                status = statuses.get(cid, "deleted")
                runner = self.runners.pop(cid)
                await runner.stop("cancel" if status == "cancelled" else "pause")
                log.info("campaign_runner_stopped", campaign_id=cid, status=status)
        retries_due = {r["id"] for r in rows if r["retries_due"]}
        for cid, rate in sending.items():
            existing = self.runners.get(cid)
            if existing is not None:
                existing.set_rate(self.campaign_rate(rate))
                if cid in retries_due:
                    existing.retries_due()
                continue
            try:
                plan = await load_plan(pool, cid, self.settings)
            except CampaignProblem as exc:
                await pool.execute(QUERIES["campaign_fail"], cid, str(exc))
                log.error("campaign_failed", campaign_id=cid, error=str(exc))
                continue
            runner = CampaignRunner(plan, self._ctx, self.campaign_rate(rate))
            self.runners[cid] = runner
            runner.start()
            log.info("campaign_runner_started", campaign_id=cid, rate=round(runner.limiter.rate, 2))

    def _report_progress(self, rows: list[dict[str, Any]]) -> None:
        """Backlog gauges every tick; a progress log line per sending campaign every 10 s."""
        self.metrics.backlog.clear()
        now = time.monotonic()
        log_now = now - self._last_progress_log >= 10.0
        for r in rows:
            done = r["sent"] + r["failed"] + r["skipped"]
            self.metrics.backlog.labels(campaign_id=str(r["id"])).set(max(0, r["total"] - done))
            if log_now:
                log.info("campaign_progress", campaign_id=r["id"], total=r["total"], sent=r["sent"],
                         failed=r["failed"], skipped=r["skipped"])
        if log_now and rows:
            self._last_progress_log = now

    async def _recover_expired(self, pool: asyncpg.Pool) -> None:
        if self.settings.crash_policy == "fail":
            recovered = int(await pool.fetchval(QUERIES["recover_expired_fail"], timeout=30))
        else:
            recovered = len(await pool.fetch(QUERIES["recover_expired_retry"], timeout=30))
        if recovered:
            log.warning("recovered_expired_leases", rows=recovered, policy=self.settings.crash_policy)
