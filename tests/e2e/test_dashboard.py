"""The Grafana dashboard and the Prometheus rules match what the daemon exports and the README documents.

Three checks (issue 14): every PromQL expression parses (promtool, and promql-parser for the names);
every metric they use is on /metrics of a daemon that has sent a campaign; every metric the README
lists is on the dashboard. Two more catch drift after merges: every sender_* metric the daemon
exports is in the README table, and every recording rule the dashboard uses is defined.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import promql_parser
import pytest
import yaml

from sender.config import Settings
from sender.daemon import Daemon
from sender.demo.fakeses import FakeSES
from tests.helpers import add_campaign, add_contacts, add_template, running_daemon, wait_for
from tests.promtool import RULES, run_promtool

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "config" / "grafana" / "sender-dashboard.json"
README = ROOT / "README.md"
# Grafana's variables, replaced by values PromQL accepts before parsing
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h", "$job": ".*"}
# series Prometheus itself makes for every target
PROMETHEUS_SERIES = {"up"}


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_expressions() -> list[tuple[str, str]]:
    """(panel title, PromQL with Grafana variables substituted) for every query on the dashboard."""
    out = []
    for panel in panels(dashboard()["panels"]):
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"{panel['title']}: unknown Grafana variable in {expr}"
            out.append((panel["title"], expr))
    return out


def rule_groups() -> list[dict[str, Any]]:
    return list(yaml.safe_load(RULES.read_text())["groups"])


def recorded_names() -> set[str]:
    return {rule["record"] for group in rule_groups() for rule in group["rules"] if "record" in rule}


def rule_expressions() -> list[tuple[str, str]]:
    return [(rule.get("alert") or rule["record"], rule["expr"]) for group in rule_groups()
            for rule in group["rules"]]


def variable_query_metrics() -> set[str]:
    """Metrics named in the dashboard's variable queries (label_values(metric, label))."""
    queries = [json.dumps(v.get("query")) for v in dashboard()["templating"]["list"]]
    return {m for q in queries for m in re.findall(r"label_values\((\w+)", q)}


def metric_names(expr: str) -> set[str]:
    """Every metric an expression selects, from promql-parser's syntax tree."""
    names: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                names.add(node.name)
            for matcher in node.matchers.matchers:
                if matcher.name == "__name__":
                    names.add(matcher.value)
            return
        if isinstance(node, promql_parser.MatrixSelector):
            walk(node.vector_selector)
            return
        for attr in ("expr", "lhs", "rhs", "param"):
            child = getattr(node, attr, None)
            if isinstance(child, promql_parser.Expr):
                walk(child)
        for arg in getattr(node, "args", None) or []:
            walk(arg)

    walk(promql_parser.parse(expr))
    return names


def readme_metrics() -> set[str]:
    """Metric names in the first column of the README's metrics table (Monitoring → Metrics)."""
    text = README.read_text()
    match = re.search(r"^### Metrics\n(.*?)(?=^#)", text, re.M | re.S)
    assert match, "README has no '### Metrics' section"
    return set(re.findall(r"^\| `(sender_\w+)`", match.group(1), re.M))


def exported_names(exposition: str) -> tuple[set[str], set[str]]:
    """(sample names present, metric family names declared) in a Prometheus text exposition."""
    samples = {line.split("{")[0].split(" ")[0] for line in exposition.splitlines() if line and line[0] != "#"}
    families = set(re.findall(r"^# TYPE (\S+) \S+$", exposition, re.M))
    return samples, {name for name in families if not name.endswith("_created")}


def test_every_expression_parses_in_promtool(tmp_path: Path) -> None:
    """promtool parses each dashboard query as a recording rule: the authoritative PromQL parser."""
    exprs = dashboard_expressions()
    assert len(exprs) >= 20
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": expr} for i, (_, expr) in enumerate(exprs)]}]}
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = run_promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr
    for title, expr in [*exprs, *rule_expressions()]:
        assert metric_names(expr), f"{title}: selects no metric: {expr}"


def test_a_broken_expression_is_caught(tmp_path: Path) -> None:
    path = tmp_path / "broken.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [
        {"record": "x:y", "expr": "sum by (instance (rate(sender_in_flight[1m]))"}]}]}))
    assert run_promtool("check", "rules", path).returncode != 0
    with pytest.raises(ValueError):
        promql_parser.parse("sum by (instance (rate(sender_in_flight[1m]))")


def test_dashboard_shape() -> None:
    d = dashboard()
    ids = [p["id"] for p in panels(d["panels"])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert d["uid"] and d["title"]
    for panel in panels(d["panels"]):
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_readme_metrics_are_all_on_the_dashboard() -> None:
    documented = readme_metrics()
    assert len(documented) >= 15
    used = set().union(*(metric_names(expr) for _, expr in dashboard_expressions()))
    missing = {m for m in documented
               if not ({m} | {f"{m}{s}" for s in ("_bucket", "_sum", "_count")}) & used}
    assert not missing, f"README metrics missing from the dashboard: {sorted(missing)}"


def test_dashboard_uses_recording_rules_only_when_defined() -> None:
    used = set().union(*(metric_names(expr) for _, expr in [*dashboard_expressions(), *rule_expressions()]))
    recorded = {name for name in used if ":" in name}
    assert recorded <= recorded_names(), f"undefined recording rules: {sorted(recorded - recorded_names())}"


async def _scrape(port: int) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as response:
        assert response.status == 200
        return await response.text()


async def test_every_metric_used_is_exported_by_a_daemon_that_sent_a_campaign(
        db: asyncpg.Connection, settings: Settings, fake_ses: FakeSES) -> None:
    await add_contacts(db, 30)
    campaign = await add_campaign(db, await add_template(db), rate=10)
    async with running_daemon(settings) as daemon:
        await wait_for(lambda: _sent_at_least(fake_ses, 5), timeout=30)
        during = await _scrape(daemon.ops.port)  # per-campaign gauges exist only while it sends
        await wait_for(lambda: _campaign_sent(db, campaign), timeout=60)
        await wait_for(lambda: _no_runners(daemon), timeout=10)
        after = await _scrape(daemon.ops.port)
    samples, families = exported_names(during)
    samples_after, families_after = exported_names(after)
    samples |= samples_after
    # the scrape-time gauges the rules and dashboard rely on carry the daemon's real state
    assert f'sender_campaign_rate_limit_per_second{{campaign_id="{campaign}"}} 10.0' in during
    values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
              for line in after.splitlines() if line and line[0] != "#"}
    # per-campaign series while it sends, removed when it stops; the aggregate stays
    assert f'sender_messages_total{{campaign_id="{campaign}",outcome="sent"}}' in during
    assert f'sender_messages_total{{campaign_id="{campaign}",outcome="sent"}}' not in after
    assert values['sender_outcomes_total{outcome="sent"}'] == 30
    assert values["sender_account_rate_cap_per_second"] == fake_ses.account.max_send_rate
    assert values["sender_ses_max_24h_send"] == fake_ses.account.max_24h
    assert (values["sender_database_up"], values["sender_results_buffered"]) == (1, 0)
    assert 0 < values["sender_tick_age_seconds"] < 15
    assert f'sender_campaign_rate_limit_per_second{{campaign_id="{campaign}"}}' not in after
    expressions = [*dashboard_expressions(), *rule_expressions()]
    used = set().union(*(metric_names(expr) for _, expr in expressions)) | variable_query_metrics()
    # a labelled family with no child yet (no SES event in this run) is still declared on /metrics
    declared = families | families_after
    declared |= {f"{name}_total" for name in declared}
    unknown = used - samples - declared - recorded_names() - PROMETHEUS_SERIES
    assert not unknown, f"metrics used by the dashboard or rules but not on /metrics: {sorted(unknown)}"
    undocumented = {f for f in families | families_after if f.startswith("sender_")} - readme_metrics()
    assert not undocumented, f"exported metrics missing from the README's metrics table: {sorted(undocumented)}"


async def _sent_at_least(fake: FakeSES, n: int) -> bool:
    return len(fake.messages) >= n


async def _campaign_sent(db: asyncpg.Connection, campaign: int) -> bool:
    return await db.fetchval("SELECT status FROM campaigns WHERE id = $1", campaign) == "sent"


async def _no_runners(daemon: Daemon) -> bool:
    return not daemon.runners
