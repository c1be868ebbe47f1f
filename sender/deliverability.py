"""What one daemon runs for deliverability: the public listener, the SES events consumer and the
account guard, started and stopped together (the daemon's only hook into this feature)."""

from __future__ import annotations

from typing import Any

import asyncpg
from prometheus_client import CollectorRegistry

from sender.config import Settings
from sender.event_metrics import EventMetrics
from sender.events_sqs import SqsConsumer
from sender.guard import AccountGuard
from sender.logs import get_logger
from sender.metrics import CampaignSeries
from sender.public_http import PublicServer
from sender.sns import SnsEndpoint
from sender.supervisor import Supervisor

log = get_logger("sender.deliverability")


class Deliverability:
    def __init__(self, settings: Settings, pool: asyncpg.Pool, registry: CollectorRegistry | None = None,
                 campaign_series: CampaignSeries | None = None) -> None:
        self.settings = settings
        self.pool = pool
        self.metrics = EventMetrics(registry or CollectorRegistry(), campaign_series)
        self.public: PublicServer | None = None
        self.sns: SnsEndpoint | None = None
        self.consumer: SqsConsumer | None = None
        self.guard = AccountGuard(settings, pool, self.metrics)

    async def start(self, supervisor: Supervisor) -> None:
        """Open the public listener (when configured) and run the guard, the events consumer and the
        suppression sync as supervised tasks of the daemon."""
        s = self.settings
        if s.public_http_port is not None:
            self.sns = events = SnsEndpoint(s, self.pool, self.metrics) if s.sns_topic_arns else None
            self.public = PublicServer(s, self.pool, events=events.handle if events else None,
                                       on_unsubscribe=self.metrics.unsubscribed)
            port = await self.public.start()
            log.info("public_listener_started", address=f"{s.public_http_host}:{port}",
                     unsubscribe=bool(s.unsubscribe_secret), sns=bool(events))
        supervisor.start("guard", self.guard.run)
        if s.ses_suppression_sync:
            from sender.ses_suppression import sync_loop

            supervisor.start("ses-suppression-sync", lambda: sync_loop(s, self.pool))
        if s.events_queue_url:
            consumer = self.consumer = SqsConsumer(s, self.pool, self.metrics)
            supervisor.start("ses-events", consumer.run)

    def readiness(self) -> dict[str, Any]:
        """Details for /readyz: campaigns the bounce/complaint guard paused (readiness unaffected)."""
        return {"guard_paused": self.guard.paused} if self.guard.paused else {}

    async def stop(self) -> None:
        """Close the public listener (the supervised tasks stop with the daemon's supervisor)."""
        if self.public is not None:
            await self.public.stop()
        if self.sns is not None:
            await self.sns.close()
