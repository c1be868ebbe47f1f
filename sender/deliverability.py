"""What one daemon runs for deliverability: the public listener, the SES events consumer and the
account guard, started and stopped together (the daemon's only hook into this feature)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from prometheus_client import CollectorRegistry

from sender.config import Settings
from sender.event_metrics import EventMetrics
from sender.events_sqs import SqsConsumer
from sender.guard import AccountGuard
from sender.logs import get_logger
from sender.public_http import PublicServer
from sender.sns import SnsEndpoint

log = get_logger("sender.deliverability")


class Deliverability:
    def __init__(self, settings: Settings, pool: asyncpg.Pool, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.pool = pool
        self.metrics = EventMetrics(registry or CollectorRegistry())
        self.public: PublicServer | None = None
        self.sns: SnsEndpoint | None = None
        self.consumer: SqsConsumer | None = None
        self.guard = AccountGuard(settings, pool, self.metrics)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        s = self.settings
        if s.public_http_port is not None:
            self.sns = events = SnsEndpoint(s, self.pool, self.metrics) if s.sns_topic_arns else None
            self.public = PublicServer(s, self.pool, events=events.handle if events else None,
                                       on_unsubscribe=self.metrics.unsubscribed)
            port = await self.public.start()
            log.info("public_listener_started", address=f"{s.public_http_host}:{port}",
                     unsubscribe=bool(s.unsubscribe_secret), sns=bool(events))
        self._tasks.append(asyncio.create_task(self._supervise("guard", self.guard.run), name="guard"))
        if s.ses_suppression_sync:
            from sender.ses_suppression import sync_loop

            self._tasks.append(asyncio.create_task(
                self._supervise("ses-suppression-sync", lambda: sync_loop(s, self.pool)), name="ses-suppression"))
        if s.events_queue_url:
            self.consumer = SqsConsumer(s, self.pool, self.metrics)
            self._tasks.append(asyncio.create_task(self._supervise("ses-events", self.consumer.run),
                                                   name="ses-events"))

    def readiness(self) -> dict[str, Any]:
        """Details for /readyz: campaigns the bounce/complaint guard paused (readiness unaffected)."""
        return {"guard_paused": self.guard.paused} if self.guard.paused else {}

    @staticmethod
    async def _supervise(name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Restart a background loop that failed unexpectedly, with backoff; never take the daemon down."""
        backoff = 1.0
        while True:
            try:
                await run()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("background_task_failed", task=name, error=type(exc).__name__, detail=str(exc)[:200],
                          retry_in=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 60.0)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self.public is not None:
            await self.public.stop()
        if self.sns is not None:
            await self.sns.close()
