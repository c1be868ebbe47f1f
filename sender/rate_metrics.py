"""Metrics of the shared send budgets and of the cluster's instances (sender.shared_rate, heartbeat).

Budget counters are read at scrape time from the budgets themselves; per-instance send rates come
from the heartbeat, so every instance's /metrics shows the whole cluster (one series per live
instance, a handful at most) and the aggregate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from sender.heartbeat import InstanceReport
from sender.shared_rate import BudgetCounters


class BudgetCollector(Collector):
    """sender_rate_grants_total and friends, by budget kind (account, campaign)."""

    def __init__(self, budgets: Callable[[], dict[str, BudgetCounters]]) -> None:
        self._budgets = budgets

    def collect(self) -> Iterator[CounterMetricFamily]:
        families = {
            "grants": CounterMetricFamily(
                "sender_rate_grants", "Grants taken from a shared send budget", labels=["budget"]
            ),
            "granted": CounterMetricFamily(
                "sender_rate_tokens_granted", "Send tokens granted to this instance", labels=["budget"]
            ),
            "expired": CounterMetricFamily(
                "sender_rate_tokens_expired",
                "Granted tokens dropped unspent (this instance was late or idle)",
                labels=["budget"],
            ),
            "refused": CounterMetricFamily(
                "sender_rate_grants_refused",
                "Grant requests answered with no slot (the budget was booked ahead)",
                labels=["budget"],
            ),
        }
        for kind, counters in self._budgets().items():
            for name, family in families.items():
                family.add_metric([kind], float(getattr(counters, name)))
        yield from families.values()


class ClusterMetrics:
    """Per-instance and aggregate send rates, as the heartbeat reports them."""

    def __init__(self, registry: CollectorRegistry, budgets: Callable[[], dict[str, BudgetCounters]]) -> None:
        self.instance_rate = Gauge(
            "sender_instance_send_rate_per_second",
            "Send rate of each live instance, as its heartbeat reports it",
            ["instance"],
            registry=registry,
        )
        self.cluster_rate = Gauge(
            "sender_cluster_send_rate_per_second", "Send rate of all live instances together", registry=registry
        )
        self.shared_rate = Gauge(
            "sender_shared_rate_per_second",
            "The account budget's rate in force for every instance (after throttling cuts)",
            registry=registry,
        )
        registry.register(BudgetCollector(budgets))

    def instances(self, live: list[InstanceReport]) -> None:
        self.instance_rate.clear()
        for report in live:
            self.instance_rate.labels(instance=report.id).set(round(report.send_rate, 2))
        self.cluster_rate.set(round(sum(report.send_rate for report in live), 2))
