"""Prometheus metrics of deliverability: events consumed and failed, queue lag, per-campaign
delivered/bounced/complained/unsubscribed. Labels carry event types and campaign ids only; the
per-campaign series share the daemon's bound (CampaignSeries)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from sender.metrics import CampaignSeries, Families

if TYPE_CHECKING:
    from sender.events import Applied

CAMPAIGN_EVENTS = ("delivered", "hard_bounced", "soft_bounced", "complained", "unsubscribed")


class EventMetrics:
    def __init__(self, registry: CollectorRegistry, series: CampaignSeries | None = None) -> None:
        f = Families(registry)
        self.series = series if series is not None else CampaignSeries()
        self.consumed = f.counter("sender_ses_events", "SES events applied, by event type", "type")
        self.failed = f.counter("sender_ses_events_failed",
                                "SES event messages not applied (unparsable, bad signature, database), by reason",
                                "reason")
        self.queue_lag = f.gauge("sender_ses_events_lag_seconds",
                                 "Age of the oldest event in the last batch read from the queue")
        self.queue_depth = f.gauge("sender_ses_events_queue_depth",
                                   "Messages waiting in the events queue (ApproximateNumberOfMessages)")
        self.campaign_events = self.series.register(
            f.counter("sender_campaign_events", "Recipient events by campaign: delivered, hard_bounced, soft_bounced, "
                      "complained, unsubscribed (the most recently active campaigns only)", "campaign_id", "event"),
            CAMPAIGN_EVENTS)
        self.events_all = f.counter("sender_recipient_events", "Recipient events of every campaign together, by event",
                                    "event")
        self.guard_paused = f.counter("sender_guard_paused", "Campaigns paused by the bounce/complaint guard, by scope",
                                      "scope")
        for kind in ("delivered", "hard_bounce", "soft_bounce", "complaint"):  # series exist before the first event
            self.consumed.labels(type=kind)
        for scope in ("campaign", "account"):
            self.guard_paused.labels(scope=scope)
        for event in CAMPAIGN_EVENTS:
            self.events_all.labels(event=event)

    def _count(self, campaign_id: int, event: str, n: int) -> None:
        self.events_all.labels(event=event).inc(n)
        if self.series.admit(campaign_id):
            self.campaign_events.labels(campaign_id=str(campaign_id), event=event).inc(n)

    def unsubscribed(self, campaign_id: int) -> None:
        self._count(campaign_id, "unsubscribed", 1)

    def record(self, applied: Applied) -> None:
        """Count what a batch did: fresh events by type, and per-campaign state changes."""
        for kind, n in applied.by_kind.items():
            self.consumed.labels(type=kind).inc(n)
        if applied.duplicates:
            self.consumed.labels(type="duplicate").inc(applied.duplicates)
        for campaign_id, moved in applied.campaigns.items():
            for event, n in moved.items():
                if n:
                    self._count(campaign_id, event, n)
