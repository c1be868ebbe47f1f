"""Prometheus metrics, one registry per daemon: the one place outcomes and events are counted.

Labels carry campaign ids, never addresses. Per-campaign series exist only while a campaign is
sending on this instance (they are removed when it stops), so their number stays bounded by the
campaigns sending at once; the aggregates are always there.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from sender.ses import AccountInfo

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
OUTCOMES = ("sent", "failed", "skipped")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._children: dict[tuple[int, str], Any] = {}
        r = self.registry
        self.messages = Counter("sender_messages", "Recipients finished, by campaign and outcome",
                                ["campaign_id", "outcome"], registry=r)
        self.outcomes = Counter("sender_outcomes", "Recipients finished on this instance, by outcome",
                                ["outcome"], registry=r)
        self.throttled = Counter("sender_throttled", "Throttling responses from SES (retried, never failed)",
                                 registry=r)
        self.retries = Counter("sender_retries", "Transient failures scheduled for another attempt", registry=r)
        self.released = Counter("sender_released", "Claimed rows handed back to pending unsent", registry=r)
        self.lost_ownership = Counter("sender_lost_ownership",
                                      "Results not written because another instance had taken the row over",
                                      registry=r)
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
        self.heartbeat_age = Gauge("sender_heartbeat_age_seconds",
                                   "Seconds since this instance's last successful heartbeat", registry=r)
        self.task_restarts = Counter("sender_task_restarts", "Supervised background tasks restarted after a crash",
                                     ["task"], registry=r)
        for outcome in OUTCOMES:
            self.outcomes.labels(outcome=outcome)
        self._operator_gauges()

    def outcome(self, campaign_id: int, outcome: str, count: int = 1) -> None:
        key = (campaign_id, outcome)
        child = self._children.get(key)
        if child is None:  # labels() costs a lock and a tuple build per call: cache the child
            child = self._children[key] = self.messages.labels(campaign_id=str(campaign_id), outcome=outcome)
        child.inc(count)
        self.outcomes.labels(outcome=outcome).inc(count)

    def outcomes_in_bulk(self, outcome: str, count: int) -> None:
        """Outcomes a set-based statement wrote (cancelled campaigns, orphaned rows): aggregate only,
        so a campaign that no longer sends here does not grow its series back."""
        self.outcomes.labels(outcome=outcome).inc(count)

    def forget_campaign(self, campaign_id: int) -> None:
        """Drop a campaign's series once it no longer sends here (bounded cardinality)."""
        for outcome in OUTCOMES:
            if self._children.pop((campaign_id, outcome), None) is not None:
                self.messages.remove(str(campaign_id), outcome)

    def total(self, outcome: str) -> int:
        """Recipients finished with `outcome` on this instance since start."""
        value = self.registry.get_sample_value("sender_outcomes_total", {"outcome": outcome})
        return int(value or 0)

    def count(self, name: str) -> int:
        """The value of an unlabelled counter, e.g. count("sender_throttled")."""
        return int(self.registry.get_sample_value(f"{name}_total") or 0)

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))

    # -- operator kit: gauges the alert rules and dashboard need (config/prometheus, config/grafana) --

    def _operator_gauges(self) -> None:
        r = self.registry
        self.account_cap = Gauge("sender_account_rate_cap_per_second",
                                 "Account-wide send cap shared by all instances (SENDER_MAX_RATE or SES MaxSendRate)",
                                 registry=r)
        self.campaign_rate_limit = Gauge("sender_campaign_rate_limit_per_second",
                                         "This instance's share of each sending campaign's rate",
                                         ["campaign_id"], registry=r)
        self.results_buffered = Gauge("sender_results_buffered",
                                      "Outcomes held in memory, not yet written back", registry=r)
        self.tick_age = Gauge("sender_tick_age_seconds",
                              "Seconds since this instance's database loop (its heartbeat) last ran", registry=r)
        self.database_up = Gauge("sender_database_up", "1 while the last database tick succeeded", registry=r)
        self.quota_max = Gauge("sender_ses_max_24h_send",
                               "SES Max24HourSend at the last GetAccount (-1: unlimited or unknown)", registry=r)
        self.quota_sent = Gauge("sender_ses_sent_last_24h", "SES SentLast24Hours at the last GetAccount",
                                registry=r)

    def refresh_operator_gauges(self, *, cap: float, campaign_rates: Mapping[int, float], buffered: int,
                                last_tick: float, db_ok: bool, account: AccountInfo | None) -> None:
        """Set on every scrape from the daemon's state; cheap, no I/O."""
        self.account_cap.set(cap)
        self.campaign_rate_limit.clear()
        for campaign_id, rate in campaign_rates.items():
            self.campaign_rate_limit.labels(campaign_id=str(campaign_id)).set(rate)
        self.results_buffered.set(buffered)
        self.tick_age.set(time.monotonic() - last_tick if last_tick else 0.0)
        self.database_up.set(1 if db_ok else 0)
        max_24h = account.max_24h if account is not None else None
        self.quota_max.set(-1 if max_24h is None else max_24h)
        self.quota_sent.set(account.sent_24h if account is not None else 0)
