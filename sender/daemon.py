"""One daemon instance: wires the parts together, supervises its tasks, and shuts down cleanly.

Long-lived tasks (heartbeat, tick, materialiser, write-back, account probe, systemd watchdog) run
under a Supervisor: one that dies is logged and restarted, /healthz says 503 meanwhile, and one
that keeps dying stops the daemon with a non-zero exit. Shutdown stops claiming, drains every
delivery of every campaign (paused ones included), writes every result, and only then hands
back what it still holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import asyncpg

from sender.account import Account, AccountGate
from sender.backoff import Backoff
from sender.campaigns import CampaignPlan
from sender.claims import Claims
from sender.config import ConfigError, Settings
from sender.db import DB_ERRORS
from sender.db.health import DatabaseHealth
from sender.db.migrate import check_schema
from sender.db.pool import connection_budget, open_pool
from sender.db.wakeups import Wakeups
from sender.deliverability import Deliverability
from sender.delivery import SendContext
from sender.heartbeat import Heartbeat, InstanceReport
from sender.http import OpsServer
from sender.logs import get_logger
from sender.metrics import Metrics
from sender.rate_metrics import ClusterMetrics
from sender.ratelimit import AccountRate
from sender.runner import CampaignRunner
from sender.ses import RetryPolicy, SendFailure, SesClient, open_ses
from sender.shared_rate import ACCOUNT, BudgetCounters, GrantLine, SharedRate, wire_gate
from sender.shutdown import drain_deliveries, hand_back
from sender.supervisor import Supervisor
from sender.systemd import SystemdNotifier
from sender.tick import Materialiser, Tick
from sender.tuning import GarbageCollector, default_concurrency, tune_gc_for_throughput
from sender.writeback import ResultBuffer

log = get_logger("sender.daemon")


class Daemon:
    def __init__(self, settings: Settings, *, ses: SesClient | None = None, tune_gc: bool = False) -> None:
        self.settings = settings
        self._tune_gc = tune_gc
        self.garbage = GarbageCollector(enabled=tune_gc)  # the tick collects now and then (sender.tuning)
        self._ses = ses
        self.metrics = Metrics()
        self.cluster_metrics = ClusterMetrics(self.metrics.registry, self._budget_counters)
        self.notifier = SystemdNotifier()
        self.ops = OpsServer(self)
        self.rate = AccountRate(settings.max_rate or 1.0)
        self.account = Account(settings, self.rate, on_stop=self._release_all_queued, on_change=self.wake_tick)
        self.heartbeat = Heartbeat(settings, self.metrics, on_live=self._set_instances, report=self._report)
        self.instances: list[InstanceReport] = []
        self._reported = (time.monotonic(), 0)  # when the heartbeat last reported, and the sends by then
        self.runners: dict[int, CampaignRunner] = {}
        self.failed_campaigns: dict[int, SendFailure] = {}
        self.ready = asyncio.Event()
        self.last_tick = 0.0
        self.tick = Tick(self)
        self.materialiser = Materialiser(self)
        self._wake = asyncio.Event()
        self._pool: asyncpg.Pool | None = None
        self._ctx: SendContext | None = None
        self._stop = asyncio.Event()
        self.supervisor = Supervisor(self.metrics, self._stop)
        self.db_health = DatabaseHealth(settings.db_unhealthy_seconds, settings.database_url,
                                        settings.listen_database_url)
        self.wakeups = Wakeups(settings, self._wake)
        self.busy = True  # anything queued, sending or cancelling: poll fast when LISTEN is unavailable
        self.exit_code = 0
        self._stopping: set[asyncio.Task[None]] = set()
        self.deliverability: Deliverability | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, force: asyncio.Event | None = None) -> int:
        """Run until `stop` is set; 0 after a clean shutdown, 1 when results could not be written
        or a task kept crashing."""
        s = self.settings
        s.require_for_run()
        stopper = asyncio.create_task(self._forward_stop(stop))
        await self._start_ops()  # before the database, so /readyz can say why it is not there
        try:
            self._pool = await self._connect_pool()
            if self._pool is None:
                return self.exit_code
            if self._ses is not None:
                await self._serve(self._ses, force)
            else:
                async with open_ses(s, pool_size=s.concurrency or 256) as ses:
                    await self._serve(ses, force)
        finally:
            stopper.cancel()
            await self._close_db()
            await self.ops.stop()
        return self.exit_code

    async def _start_ops(self) -> None:
        s = self.settings
        try:
            await self.ops.start()
        except OSError as exc:
            raise ConfigError(f"SENDER_HTTP_PORT: cannot listen on {s.http_host}:{s.http_port} "
                              f"({exc.strerror or exc})") from None

    async def _forward_stop(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._stop.set()

    async def _connect_pool(self) -> asyncpg.Pool | None:
        backoff = Backoff(initial=0.2, cap=self.settings.db_retry_max_seconds)
        log.info("database_budget", **connection_budget(self.settings, heartbeat=1))
        while not self._stop.is_set():
            try:
                pool = await open_pool(self.settings)
                self.db_health.succeeded()
                return pool
            except DB_ERRORS as exc:
                problem = self.db_health.failed(exc)
                delay = backoff.next()
                log.warning("database_unreachable", error=problem.code, reason=problem.reason, retry_in=delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
        return None

    async def _serve(self, ses: SesClient, force: asyncio.Event | None) -> None:
        s = self.settings
        await check_schema(self.pool)
        await self.account.refresh(ses, first=True)
        self._ctx = self._context(ses)
        ses.gate_wire(wire_gate(self._ctx.account_budget))
        port = self.ops.port
        with contextlib.suppress(*DB_ERRORS):
            await self.heartbeat.beat()  # live count and a fresh heartbeat before the first claim
        if self._tune_gc:  # after start-up, so the SES model and pool are frozen too
            tune_gc_for_throughput()
        log.info("daemon_started", instance=s.instance_id, account_cap=self.rate.cap,
                 concurrency=self._ctx.concurrency, http=f"{s.http_host}:{port}", sandbox=self.rate.sandbox)
        self._start_tasks(ses)
        self.deliverability = Deliverability(s, self.pool, self.metrics.registry, self.metrics.campaign_series)
        await self.deliverability.start(self.supervisor)  # public listener, SES events, bounce guard
        try:
            await self._stop.wait()
        finally:
            log.info("shutdown_started", in_flight=self._ctx.in_flight())
            self.notifier.notify("STOPPING=1", "STATUS=draining in-flight sends")
            await self._shutdown(force)
            await self.deliverability.stop()

    def _context(self, ses: SesClient) -> SendContext:
        s = self.settings
        assert self._pool is not None
        concurrency = s.concurrency or default_concurrency(self.rate.cap)
        return SendContext(
            settings=s, pool=self._pool, ses=ses,
            buffer=ResultBuffer(self._pool, s.instance_id, size=s.flush_size, interval=s.flush_interval,
                                metrics=self.metrics),
            account=self.account, rate=self.rate,
            account_budget=SharedRate(GrantLine(self._pool), ACCOUNT, self.rate.cap, demand=self._ready_rows,
                                      margin=s.rate_headroom),
            concurrency=concurrency,
            inflight=asyncio.Semaphore(concurrency),
            retry=RetryPolicy(max_attempts=s.max_attempts, base_seconds=s.retry_base_seconds,
                              cap_seconds=s.retry_max_seconds),
            metrics=self.metrics, heartbeat=self.heartbeat, on_campaign_error=self._campaign_error,
            claims=Claims(self._pool, s, self.held_ids),
        )

    def _start_tasks(self, ses: SesClient) -> None:
        sup, stop, ctx, pool = self.supervisor, self._stop, self.ctx, self.pool
        sup.start("heartbeat", lambda: self.heartbeat.run(stop))
        sup.start("write-back", ctx.buffer.run)
        sup.start("claims", ctx.claims.run)
        sup.start("tick", lambda: self.tick.loop(self._stop, self._wake))
        sup.start("materialiser", lambda: self.materialiser.run(stop))
        sup.start("probe", lambda: self.account.probe_loop(ses, pool, stop))
        sup.start("systemd", lambda: self.notifier.watch(self.ready, lambda: self.health()[0], self._stop,
                                                          f"sending; cap {self.rate.cap:g}/s"))

    async def _shutdown(self, force: asyncio.Event | None) -> None:
        """Stop claiming, let every in-flight send finish within the grace period, flush, hand back."""
        ctx, pool = self.ctx, self.pool
        for cid in list(self.runners):
            await self.stop_runner(cid, "shutdown")
        await ctx.claims.idle(within=35)  # a claim still running delivers to stopped runners: rows go back
        await drain_deliveries(ctx.deliveries, grace=self.settings.grace_seconds, force=force)
        flushed = await ctx.buffer.flush(give_up_after=max(10.0, self.settings.grace_seconds))
        if not flushed:
            self.exit_code = 1
            log.error("shutdown_results_unwritten", rows=len(ctx.buffer),
                      note="the database did not answer within the stop timeout; these rows stay claimed and are "
                           "recovered after the instance timeout (sent ones may be sent again)")
        else:
            await hand_back(pool, self.settings.instance_id)
        await self.supervisor.close()
        await self.heartbeat.close()
        if self.supervisor.fatal:
            self.exit_code = 1
        budget = ctx.account_budget.counters
        log.info("shutdown_complete", flushed=flushed, sent=self.metrics.total("sent"),
                 failed=self.metrics.total("failed"), exit_code=self.exit_code, grants=budget.grants,
                 tokens_granted=budget.granted, tokens_expired=budget.expired, refused=budget.refused)

    async def _close_db(self) -> None:
        await self.wakeups.close()
        await self.heartbeat.close()
        if self._pool is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pool.close(), 5)

    # -- state the tick, the runners and the ops endpoints share ----------------------------------

    @property
    def db_ok(self) -> bool:
        """The database loop's last attempt succeeded (one state, kept by db_health)."""
        return self.db_health.ok

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:  # the ops listener is up before the database: answer 503, not 500
            raise ConnectionError("not connected to the database yet")
        return self._pool

    @property
    def ctx(self) -> SendContext:
        assert self._ctx is not None
        return self._ctx

    def wake_tick(self) -> None:
        self._wake.set()

    def in_flight(self) -> int:
        return self._ctx.in_flight() if self._ctx is not None else 0

    def current_rate(self) -> float:
        """The account rate in force for every instance (the cap, less the margin and any throttling cut)."""
        return self._ctx.account_budget.effective if self._ctx is not None else self.rate.cap

    @property
    def gate(self) -> AccountGate:
        return self.account.gate

    def live_instances(self) -> int:
        return self.rate.instances

    def stale_tick_limit(self) -> float:
        """How old the last good tick may be before the instance is unhealthy."""
        return max(15.0, self.settings.poll_interval * 10)

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Alive: the tick loop answered recently, every supervised task is running, and the database
        loop has not failed continuously for SENDER_DB_UNHEALTHY_SECONDS (counted from start-up until
        it connects), so the watchdog restarts an instance that holds a slot and does nothing."""
        age = time.monotonic() - self.last_tick if self.last_tick else None
        failing = self.db_health.unhealthy()
        ticking = (not failing) if age is None else age < self.stale_tick_limit()
        alive = ticking and not failing and self.supervisor.healthy
        status = "ok" if alive else ("database_failing" if failing else "stalled")
        body: dict[str, Any] = {"status": status, "last_tick_seconds_ago": None if age is None else round(age, 2),
                                "tasks_down": sorted(self.supervisor.down), "fatal": self.supervisor.fatal}
        if not self.db_health.ok:
            body["database_failing_seconds"] = round(self.db_health.failing_for(), 1)
        return alive, body

    def refresh_gauges(self) -> None:
        m = self.metrics
        m.in_flight.set(self.in_flight())
        m.rate_limit.set(self.current_rate())
        self.cluster_metrics.shared_rate.set(self.current_rate())
        m.sending_stopped.set(0 if self.account.gate.is_open else 1)
        m.instances.set(self.rate.instances)
        m.heartbeat_age.set(max(0.0, min(self.heartbeat.age(), 1e9)))
        m.refresh_operator_gauges(cap=self.rate.cap,
                                  campaign_rates={c: r.limit for c, r in self.runners.items()},
                                  buffered=len(self._ctx.buffer) if self._ctx else 0, last_tick=self.last_tick,
                                  db_ok=self.db_ok, account=self.account.info)

    def held_ids(self) -> set[int]:
        """Every row this instance holds in memory: queued, in flight, or with its result unwritten."""
        held = {row_id for runner in self.runners.values() for row_id in runner.held()}
        held.update(self.ctx.deliveries.values())
        held.update(self.ctx.buffer.ids())
        return held

    def start_runner(self, plan: CampaignPlan, rate: float | None) -> CampaignRunner | None:
        """A runner for the campaign; none once the daemon is stopping (a tick that read the overview
        before the stop may resume after shutdown stopped every runner: a runner started then would
        claim and send past the drain, and nothing would stop it)."""
        if self._stop.is_set():
            return None
        runner = CampaignRunner(plan, self.ctx, rate)
        self.runners[plan.id] = runner
        self.ctx.campaigns_sending = len(self.runners)
        runner.start()
        log.info("campaign_runner_started", campaign_id=plan.id, rate=round(runner.limit, 3))
        return runner

    async def stop_runner(self, campaign_id: int, mode: str) -> None:
        """Stop the runner and drop the campaign's metric series; it leaves `runners` only then (what
        it settled while stopping is counted first), and its share of the campaign's rate, if any, is given up last."""
        runner = self.runners.get(campaign_id)
        if runner is not None:
            await runner.stop(mode)
        self.metrics.forget_campaign(campaign_id)
        if runner is not None and self.runners.get(campaign_id) is runner:
            del self.runners[campaign_id]
            self.ctx.campaigns_sending = len(self.runners)
            self.garbage.ended += 1
            await runner.release_share()

    def _budget_counters(self) -> dict[str, BudgetCounters]:
        if self._ctx is None:
            return {}
        return {"account": self._ctx.account_budget.counters}

    def _ready_rows(self) -> int:
        """Account slots this instance can use soon: what it asks the account budget for."""
        return sum(runner.slots_wanted() for runner in self.runners.values())

    def _report(self) -> tuple[float, list[int]]:
        """This instance's send rate since the last heartbeat, and the campaigns it is sending."""
        now, sent = time.monotonic(), self._ctx.sent_count if self._ctx is not None else 0
        then, before = self._reported
        self._reported = (now, sent)
        return (sent - before) / max(now - then, 1e-3), sorted(self.runners)

    def _set_instances(self, live: list[InstanceReport]) -> None:
        self.instances = live
        self.rate.instances = len(live)
        self.cluster_metrics.instances(live)

    def _release_all_queued(self) -> None:
        for runner in self.runners.values():
            runner.release_queued()

    def _campaign_error(self, campaign_id: int, failure: SendFailure) -> None:
        """This campaign cannot send (its own From is not verified): stop its runner now, fail it next tick."""
        if campaign_id in self.failed_campaigns:
            return
        log.error("campaign_cannot_send", campaign_id=campaign_id, code=failure.code, reason=failure.message)
        self.failed_campaigns[campaign_id] = failure
        stopping = asyncio.create_task(self.stop_runner(campaign_id, "pause"))
        self._stopping.add(stopping)
        stopping.add_done_callback(self._stopping.discard)
        self.wake_tick()

    # -- loops ------------------------------------------------------------------------------------
