"""Prometheus metrics of deliverability: events consumed and failed, queue lag, per-campaign
delivered/bounced/complained/unsubscribed. Labels carry event types and campaign ids only."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge

if TYPE_CHECKING:
    from sender.events import Applied


class EventMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.consumed = Counter("sender_ses_events", "SES events applied, by event type", ["type"], registry=r)
        self.failed = Counter("sender_ses_events_failed",
                              "SES event messages not applied (unparsable, bad signature, database), by reason",
                              ["reason"], registry=r)
        self.queue_lag = Gauge("sender_ses_events_lag_seconds",
                               "Age of the oldest event in the last batch read from the queue", registry=r)
        self.queue_depth = Gauge("sender_ses_events_queue_depth",
                                 "Messages waiting in the events queue (ApproximateNumberOfMessages)", registry=r)
        self.campaign_events = Counter("sender_campaign_events",
                                       "Recipient events by campaign: delivered, hard_bounced, soft_bounced, "
                                       "complained, unsubscribed", ["campaign_id", "event"], registry=r)
        self.guard_paused = Counter("sender_guard_paused", "Campaigns paused by the bounce/complaint guard, by scope",
                                    ["scope"], registry=r)
        for kind in ("delivered", "hard_bounce", "soft_bounce", "complaint"):  # series exist before the first event
            self.consumed.labels(type=kind)
        for scope in ("campaign", "account"):
            self.guard_paused.labels(scope=scope)

    def unsubscribed(self, campaign_id: int) -> None:
        self.campaign_events.labels(campaign_id=str(campaign_id), event="unsubscribed").inc()

    def record(self, applied: Applied) -> None:
        """Count what a batch did: fresh events by type, and per-campaign state changes."""
        for kind, n in applied.by_kind.items():
            self.consumed.labels(type=kind).inc(n)
        if applied.duplicates:
            self.consumed.labels(type="duplicate").inc(applied.duplicates)
        for campaign_id, moved in applied.campaigns.items():
            for event, n in moved.items():
                if n:
                    self.campaign_events.labels(campaign_id=str(campaign_id), event=event).inc(n)
