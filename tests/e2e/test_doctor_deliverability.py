"""`sender doctor` deliverability rows: configuration set, event destinations, events queue,
public endpoint; against the fake SES, the fake SQS and a real public listener."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from sender.config import Settings
from sender.demo.fakeses import Account, FakeSES
from sender.demo.fakesqs import FakeSQS
from sender.doctor import FAIL, PASS, WARN, Report, doctor
from tests.dnsserver import TinyDNS, start_dns

ALL = [{"Name": "to-sns", "Enabled": True, "MatchingEventTypes": ["BOUNCE", "COMPLAINT", "DELIVERY"],
        "SnsDestination": {"TopicArn": "arn:aws:sns:eu-west-1:123456789012:ses-events"}}]


@pytest.fixture
async def dns_server() -> AsyncIterator[TinyDNS]:
    server = await start_dns({"example.com": ["v=spf1 include:amazonses.com ~all"]})
    yield server
    assert server.transport is not None
    server.transport.close()


@pytest.fixture
async def ses() -> AsyncIterator[FakeSES]:
    fake = FakeSES(account=Account(max_send_rate=14, max_24h=50_000))
    fake.add_identity("example.com")
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def sqs() -> AsyncIterator[FakeSQS]:
    fake = FakeSQS()
    await fake.start()
    yield fake
    await fake.stop()


def rows(report: Report | None) -> dict[str, tuple[str, str]]:
    assert report is not None
    return {c.name: (c.status, c.detail) for c in report.checks}


async def test_rows_pass_when_events_flow(ses: FakeSES, sqs: FakeSQS, dns_server: TinyDNS, db_url: str) -> None:
    from sender.db import create_pool
    from sender.public_http import PublicServer

    ses.configuration_sets["events"] = ALL
    queue = sqs.create_queue("ses-events")
    pool = await create_pool(db_url, min_size=1, max_size=1)
    public = PublicServer(Settings(public_http_port=0), pool)
    port = await public.start()
    try:
        settings = Settings(endpoint_url=ses.url, from_email="news@example.com", region="eu-west-1",
                            configuration_set="events", events_queue_url=queue, sqs_endpoint_url=sqs.url,
                            public_base_url=f"http://127.0.0.1:{port}")
        code, report, _ = await doctor(settings, nameserver=dns_server.address)
    finally:
        await public.stop()
        await pool.close()
    r = rows(report)
    assert r["configuration_set"] == (PASS, "configuration set events exists")
    assert r["event_destinations"] == (PASS, "BOUNCE, COMPLAINT and DELIVERY are published")
    assert r["events_queue"] == (WARN, "events queue reachable, 0 waiting, no dead-letter queue")
    assert r["public_endpoint"][0] == PASS
    assert code == 0


async def test_rows_fail_with_a_fix(ses: FakeSES, sqs: FakeSQS, dns_server: TinyDNS) -> None:
    ses.configuration_sets["events"] = [{**ALL[0], "MatchingEventTypes": ["SEND", "DELIVERY"]}]
    queue = sqs.create_queue("ses-events")
    for _ in range(10_001):
        sqs.queue(queue).send("{}")
    base = Settings(endpoint_url=ses.url, from_email="news@example.com", region="eu-west-1")
    code, report, _ = await doctor(base.with_overrides(configuration_set="events", events_queue_url=queue,
                                                       sqs_endpoint_url=sqs.url,
                                                       public_base_url="http://127.0.0.1:9"),
                                   nameserver=dns_server.address)
    r = rows(report)
    assert code == 1
    assert r["event_destinations"] == (FAIL, "no enabled event destination for BOUNCE, COMPLAINT")
    assert r["events_queue"] == (WARN, "events queue backing up: 10001 messages waiting")
    assert r["public_endpoint"][0] == FAIL
    code, report, _ = await doctor(base.with_overrides(configuration_set="missing", public_base_url=None,
                                                       events_queue_url=f"{sqs.url}/123456789012/nope",
                                                       sqs_endpoint_url=sqs.url),
                                   nameserver=dns_server.address)
    r = rows(report)
    assert r["configuration_set"] == (FAIL, "configuration set missing does not exist")
    assert r["events_queue"][0] == FAIL and "unreachable" in r["events_queue"][1]
    assert r["public_endpoint"][0] == WARN


async def test_no_rows_when_nothing_is_configured(ses: FakeSES, dns_server: TinyDNS) -> None:
    _, report, _ = await doctor(Settings(endpoint_url=ses.url, from_email="news@example.com", region="eu-west-1"),
                                nameserver=dns_server.address)
    assert "configuration_set" not in rows(report)
