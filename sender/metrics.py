"""Prometheus metrics, one registry per daemon: the one place outcomes and events are counted.

Labels carry campaign ids, never addresses. Per-campaign series exist for at most
CAMPAIGN_SERIES_LIMIT campaigns at once, the most recently active (CampaignSeries): a campaign
that ends here, or falls out of that set, loses all of its series. Aggregates without a campaign
label are always there and count everything, set-based statements included.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase

if TYPE_CHECKING:
    from sender.ses import AccountInfo

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
OUTCOMES = ("sent", "failed", "skipped")
# Campaigns with per-campaign series at once (a SENDER_* setting once config.py has one for it).
CAMPAIGN_SERIES_LIMIT = 50

Family = TypeVar("Family", bound=MetricWrapperBase)


class Families:
    """Declares metric families on one registry: a name, a help text, label names."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def counter(self, name: str, doc: str, *labels: str) -> Counter:
        return Counter(name, doc, labels, registry=self.registry)

    def gauge(self, name: str, doc: str, *labels: str) -> Gauge:
        return Gauge(name, doc, labels, registry=self.registry)

    def histogram(self, name: str, doc: str, buckets: Iterable[float]) -> Histogram:
        return Histogram(name, doc, buckets=tuple(buckets), registry=self.registry)


class CampaignSeries:
    """Which campaigns have per-campaign series: at most `limit`, the most recently active.

    Families register with the values of their other label (outcome, event); the campaign label
    comes first. Activity (an outcome, an event) admits a campaign and evicts the least recently
    active one when full; a passive report (a backlog gauge) only shows campaigns already in, or
    while there is room. Evicted and ended campaigns lose every series (a counter that comes back
    restarts from 0, which Prometheus' rate() reads as a reset).
    """

    def __init__(self, limit: int = CAMPAIGN_SERIES_LIMIT) -> None:
        self.limit = max(0, limit)
        self._in: OrderedDict[int, None] = OrderedDict()
        self._families: list[tuple[MetricWrapperBase, tuple[str, ...]]] = []
        self._on_forget: list[Callable[[int], None]] = []
        self.evicted = 0

    def register(self, family: Family, others: Iterable[str] = ()) -> Family:
        self._families.append((family, tuple(others)))
        return family

    def on_forget(self, callback: Callable[[int], None]) -> None:
        """Also call this when a campaign loses its series (to drop cached children)."""
        self._on_forget.append(callback)

    def ids(self) -> list[int]:
        return list(self._in)

    def __contains__(self, campaign_id: object) -> bool:
        return campaign_id in self._in

    def __len__(self) -> int:
        return len(self._in)

    def admit(self, campaign_id: int, *, active: bool = True) -> bool:
        """True when this campaign may have series now."""
        if campaign_id in self._in:
            if active:
                self._in.move_to_end(campaign_id)
            return True
        if len(self._in) >= self.limit:
            if not active or not self._in:
                return False
            oldest = next(iter(self._in))
            self.forget(oldest)
            self.evicted += 1
        self._in[campaign_id] = None
        return True

    def forget(self, campaign_id: int) -> None:
        """Remove every series of this campaign (it ended here, or another took its place)."""
        self._in.pop(campaign_id, None)
        label = str(campaign_id)
        for family, others in self._families:
            if others:
                for other in others:
                    family.remove(label, other)
            else:
                family.remove(label)
        for callback in self._on_forget:
            callback(campaign_id)


class Metrics:
    def __init__(self, *, campaign_series_limit: int = CAMPAIGN_SERIES_LIMIT) -> None:
        self.registry = CollectorRegistry()
        self.campaign_series = series = CampaignSeries(campaign_series_limit)
        self._children: dict[tuple[int, str], Any] = {}
        series.on_forget(self._drop_children)
        f = Families(self.registry)
        self.messages = series.register(
            f.counter("sender_messages", "Recipients finished, by campaign and outcome (the most recently active "
                      "campaigns only: sender_outcomes_total counts them all)", "campaign_id", "outcome"), OUTCOMES)
        self.outcomes = f.counter("sender_outcomes", "Recipients finished on this instance, by outcome", "outcome")
        self.throttled = f.counter("sender_throttled", "Throttling responses from SES (retried, never failed)")
        self.retries = f.counter("sender_retries", "Transient failures scheduled for another attempt")
        self.released = f.counter("sender_released", "Claimed rows handed back to pending unsent")
        self.lost_ownership = f.counter("sender_lost_ownership",
                                        "Results not written because another instance had taken the row over")
        self.send_latency = f.histogram("sender_send_latency_seconds", "SES SendEmail latency", LATENCY_BUCKETS)
        self.write_back_latency = f.histogram("sender_write_back_latency_seconds", "Batched write-back latency",
                                              LATENCY_BUCKETS)
        self.write_back_rows = f.counter("sender_write_back_rows", "Outcomes written back")
        self.rate_limit = f.gauge("sender_rate_limit_per_second", "This instance's current account rate limit")
        self.in_flight = f.gauge("sender_in_flight", "SES calls in flight on this instance")
        self.backlog = series.register(
            f.gauge("sender_pending_backlog", "Recipients not yet finished, by sending campaign (the most recently "
                    "active campaigns only)", "campaign_id"))
        self.backlog_all = f.gauge("sender_backlog_recipients",
                                   "Recipients not yet finished, all sending campaigns together")
        self.sending_campaigns = f.gauge("sender_sending_campaigns", "Campaigns in status sending")
        self.sending_stopped = f.gauge("sender_sending_stopped", "1 while an account-wide error stops sending")
        self.instances = f.gauge("sender_live_instances", "Live daemon instances sharing the account rate")
        self.heartbeat_age = f.gauge("sender_heartbeat_age_seconds",
                                     "Seconds since this instance's last successful heartbeat")
        self.task_restarts = f.counter("sender_task_restarts", "Supervised background tasks restarted after a crash",
                                       "task")
        for outcome in OUTCOMES:
            self.outcomes.labels(outcome=outcome)
        self._operator_gauges(f)

    def outcome(self, campaign_id: int, outcome: str, count: int = 1) -> None:
        self.outcomes.labels(outcome=outcome).inc(count)
        if not self.campaign_series.admit(campaign_id):
            return
        key = (campaign_id, outcome)
        child = self._children.get(key)
        if child is None:  # labels() costs a lock and a tuple build per call: cache the child
            child = self._children[key] = self.messages.labels(campaign_id=str(campaign_id), outcome=outcome)
        child.inc(count)

    def outcomes_in_bulk(self, outcome: str, count: int) -> None:
        """Outcomes a set-based statement wrote (cancelled campaigns, orphaned rows): aggregate only,
        so a campaign that no longer sends here does not grow its series back."""
        self.outcomes.labels(outcome=outcome).inc(count)

    def forget_campaign(self, campaign_id: int) -> None:
        """Drop a campaign's series once it no longer sends here (bounded cardinality)."""
        self.campaign_series.forget(campaign_id)

    def _drop_children(self, campaign_id: int) -> None:
        for outcome in OUTCOMES:
            self._children.pop((campaign_id, outcome), None)

    def report_backlog(self, backlogs: Mapping[int, int]) -> None:
        """The sending campaigns' backlogs (from the tick): aggregates always, per campaign for the
        campaigns that have series; series of campaigns no longer sending go."""
        self.backlog_all.set(sum(backlogs.values()))
        self.sending_campaigns.set(len(backlogs))
        for campaign_id, pending in backlogs.items():
            if self.campaign_series.admit(campaign_id, active=False):
                self.backlog.labels(campaign_id=str(campaign_id)).set(pending)
        for campaign_id in self.campaign_series.ids():
            if campaign_id not in backlogs:
                self.backlog.remove(str(campaign_id))

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

    def _operator_gauges(self, f: Families) -> None:
        self.account_cap = f.gauge("sender_account_rate_cap_per_second",
                                   "Account-wide send cap shared by all instances (SENDER_MAX_RATE or SES MaxSendRate)")
        self.campaign_rate_limit = self.campaign_series.register(
            f.gauge("sender_campaign_rate_limit_per_second", "Each sending campaign's rate limit: its rate_per_sec "
                    "or the account cap (the most recently active campaigns only)", "campaign_id"))
        self.campaign_rates_all = f.gauge("sender_campaign_rate_limits_per_second",
                                          "The rate limits of every campaign sending here, added up")
        self.results_buffered = f.gauge("sender_results_buffered", "Outcomes held in memory, not yet written back")
        self.tick_age = f.gauge("sender_tick_age_seconds",
                                "Seconds since this instance's database loop (its heartbeat) last ran")
        self.database_up = f.gauge("sender_database_up", "1 while the last database tick succeeded")
        self.quota_max = f.gauge("sender_ses_max_24h_send",
                                 "SES Max24HourSend at the last GetAccount (-1: unlimited or unknown)")
        self.quota_sent = f.gauge("sender_ses_sent_last_24h", "SES SentLast24Hours at the last GetAccount")

    def refresh_operator_gauges(self, *, cap: float, campaign_rates: Mapping[int, float], buffered: int,
                                last_tick: float, db_ok: bool, account: AccountInfo | None) -> None:
        """Set on every scrape from the daemon's state; cheap, no I/O."""
        self.account_cap.set(cap)
        self.campaign_rates_all.set(sum(campaign_rates.values()))
        self.campaign_rate_limit.clear()
        series = self.campaign_series
        for campaign_id, rate in campaign_rates.items():
            if series.admit(campaign_id, active=False):
                self.campaign_rate_limit.labels(campaign_id=str(campaign_id)).set(rate)
        self.results_buffered.set(buffered)
        self.tick_age.set(time.monotonic() - last_tick if last_tick else 0.0)
        self.database_up.set(1 if db_ok else 0)
        max_24h = account.max_24h if account is not None else None
        self.quota_max.set(-1 if max_24h is None else max_24h)
        self.quota_sent.set(account.sent_24h if account is not None else 0)
