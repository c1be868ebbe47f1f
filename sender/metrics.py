"""Prometheus metrics, one registry per daemon. Labels carry campaign ids, never addresses."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._children: dict[tuple[int, str], Any] = {}
        r = self.registry
        self.messages = Counter("sender_messages", "Recipients finished, by campaign and outcome",
                                ["campaign_id", "outcome"], registry=r)
        self.throttled = Counter("sender_throttled", "Throttling responses from SES (retried, never failed)",
                                 registry=r)
        self.retries = Counter("sender_retries", "Transient failures scheduled for another attempt", registry=r)
        self.released = Counter("sender_released", "Claimed rows handed back to pending unsent", registry=r)
        self.send_latency = Histogram("sender_send_latency_seconds", "SES SendEmail latency",
                                      buckets=LATENCY_BUCKETS, registry=r)
        self.write_back_latency = Histogram("sender_write_back_latency_seconds", "Batched write-back latency",
                                            buckets=LATENCY_BUCKETS, registry=r)
        self.write_back_rows = Counter("sender_write_back_rows", "Outcomes written back", registry=r)
        self.rate_limit = Gauge("sender_rate_limit_per_second", "This instance's current account rate limit",
                                registry=r)
        self.in_flight = Gauge("sender_in_flight", "SES calls in flight on this instance", registry=r)
        self.backlog = Gauge("sender_pending_backlog", "Recipients not yet finished, by sending campaign",
                             ["campaign_id"], registry=r)
        self.sending_stopped = Gauge("sender_sending_stopped", "1 while an account-wide error stops sending",
                                     registry=r)
        self.instances = Gauge("sender_live_instances", "Live daemon instances sharing the account rate",
                               registry=r)

    def outcome(self, campaign_id: int, outcome: str) -> None:
        key = (campaign_id, outcome)
        child = self._children.get(key)
        if child is None:  # labels() costs a lock and a tuple build per call: cache the child
            child = self._children[key] = self.messages.labels(campaign_id=str(campaign_id), outcome=outcome)
        child.inc()

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
