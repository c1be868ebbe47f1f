"""The SQS consumer against moto's server over real HTTP: events applied then deleted, unreadable
messages left for the dead-letter queue and counted, SNS->SQS envelopes, and the daemon wiring."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aioboto3
import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from sender.config import Settings
from sender.db import create_pool
from sender.event_metrics import EventMetrics
from sender.events_sqs import SqsConsumer
from tests import ses_events as ev
from tests.helpers import seed_sent_campaign, wait_for


@pytest.fixture
async def aws(moto_url: str) -> AsyncIterator[tuple[Any, Any]]:
    session = aioboto3.Session()
    async with session.client("sqs", region_name="us-east-1", endpoint_url=moto_url) as sqs, \
            session.client("sns", region_name="us-east-1", endpoint_url=moto_url) as sns:
        yield sqs, sns


async def make_queue(sqs: Any) -> tuple[str, str]:
    """(queue url, dead-letter queue url): a message received twice unapplied goes to the DLQ."""
    name = f"events-{uuid.uuid4().hex[:8]}"
    dlq = (await sqs.create_queue(QueueName=f"{name}-dlq"))["QueueUrl"]
    dlq_arn = (await sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"]))["Attributes"]["QueueArn"]
    url = (await sqs.create_queue(QueueName=name, Attributes={
        "VisibilityTimeout": "1",
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "2"}),
    }))["QueueUrl"]
    return url, dlq


async def count(sqs: Any, url: str) -> int:
    attrs = await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])
    return sum(int(v) for v in attrs["Attributes"].values())


@contextlib.asynccontextmanager
async def consuming(settings: Settings) -> AsyncIterator[tuple[SqsConsumer, EventMetrics]]:
    assert settings.database_url
    pool = await create_pool(settings.database_url, min_size=1, max_size=3)
    metrics = EventMetrics(CollectorRegistry())
    consumer = SqsConsumer(settings, pool, metrics, wait_seconds=1, depth_interval=0.2)
    task = asyncio.create_task(consumer.run())
    try:
        yield consumer, metrics
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await pool.close()


def sample(registry_metric: Any, **labels: str) -> float:
    for metric in registry_metric.collect():
        for s in metric.samples:
            if s.name.endswith("_total") and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


async def test_events_are_applied_then_deleted_and_junk_goes_to_the_dlq(
        db: asyncpg.Connection, db_url: str, moto_url: str, aws: tuple[Any, Any]) -> None:
    sqs, _ = aws
    url, dlq = await make_queue(sqs)
    campaign, _ = await seed_sent_campaign(db, 3)
    bodies = [json.dumps(ev.delivery("m-0", "user0@example.org")), json.dumps(ev.bounce("m-1", "user1@example.org")),
              json.dumps(ev.sns_envelope(ev.complaint("m-2", "user2@example.org"))),
              json.dumps(ev.bounce("m-1", "user1@example.org")),  # duplicate
              "{definitely not json", json.dumps({"eventType": "Teleport", "mail": {"messageId": "x"}})]
    for body in bodies:
        await sqs.send_message(QueueUrl=url, MessageBody=body)
    settings = Settings(database_url=db_url, events_queue_url=url, sqs_endpoint_url=moto_url, events_batch=50)
    async with consuming(settings) as (consumer, metrics):
        await wait_for(lambda: _applied(db), timeout=30)
        await wait_for(lambda: _eq(count(sqs, dlq), 2), timeout=30)  # both unreadable ones, after 2 receives
        await wait_for(lambda: _eq(count(sqs, url), 0), timeout=30)
        assert consumer.applied_messages == 4
        assert sample(metrics.failed, reason="unparsable") >= 1 and sample(metrics.failed, reason="unknown_type") >= 1
        assert sample(metrics.consumed, type="delivered") == 1 and sample(metrics.consumed, type="duplicate") == 1
    assert dict(await db.fetch("SELECT email, status FROM contacts")) == {
        "user0@example.org": "subscribed", "user1@example.org": "bounced", "user2@example.org": "complained"}
    assert await db.fetchval("SELECT hard_bounced_count FROM campaigns WHERE id = $1", campaign) == 1
    dead = await sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10)
    assert sorted(m["Body"][:5] for m in dead["Messages"]) == ['{"eve', "{defi"]


async def _applied(db: asyncpg.Connection) -> bool:
    return await db.fetchval("SELECT count(*) FROM contacts WHERE status <> 'subscribed'") == 2 and \
        await db.fetchval("SELECT count(*) FROM campaign_recipients WHERE delivered_at IS NOT NULL") == 1


async def _eq(awaitable: Any, expected: int) -> bool:
    return await awaitable == expected


async def test_sns_to_sqs_envelopes(db: asyncpg.Connection, db_url: str, moto_url: str,
                                    aws: tuple[Any, Any]) -> None:
    sqs, sns = aws
    url, _ = await make_queue(sqs)
    arn = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"]))["Attributes"]["QueueArn"]
    topic = (await sns.create_topic(Name=f"ses-{uuid.uuid4().hex[:8]}"))["TopicArn"]
    await sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)  # envelope (raw delivery off)
    await seed_sent_campaign(db, 1)
    await sns.publish(TopicArn=topic, Message=json.dumps(ev.bounce("m-0", "user0@example.org")))
    settings = Settings(database_url=db_url, events_queue_url=url, sqs_endpoint_url=moto_url)
    async with consuming(settings):
        await wait_for(lambda: _eq(db.fetchval("SELECT count(*) FROM suppressions"), 1), timeout=30)
        await wait_for(lambda: _eq(count(sqs, url), 0), timeout=30)
    assert await db.fetchval("SELECT status FROM contacts") == "bounced"


async def test_database_outage_keeps_messages_until_applied(db: asyncpg.Connection, db_url: str, moto_url: str,
                                                            aws: tuple[Any, Any]) -> None:
    """Events that cannot be committed are not deleted: they are applied once the database answers."""
    sqs, _ = aws
    url, dlq = await make_queue(sqs)
    await seed_sent_campaign(db, 1)
    await db.execute("ALTER TABLE ses_events RENAME TO ses_events_away")  # every apply fails
    await sqs.send_message(QueueUrl=url, MessageBody=json.dumps(ev.bounce("m-0", "user0@example.org")))
    settings = Settings(database_url=db_url, events_queue_url=url, sqs_endpoint_url=moto_url)
    async with consuming(settings) as (_, metrics):
        await wait_for(lambda: _gt(sample(metrics.failed, reason="database"), 0), timeout=30)
        assert await count(sqs, url) == 1
        await db.execute("ALTER TABLE ses_events_away RENAME TO ses_events")
        await wait_for(lambda: _eq(db.fetchval("SELECT count(*) FROM suppressions"), 1), timeout=30)
        await wait_for(lambda: _eq(count(sqs, url), 0), timeout=30)
    assert await count(sqs, dlq) == 0


async def _gt(value: float, limit: float) -> bool:
    return value > limit


def test_queue_region_comes_from_an_aws_queue_url_only() -> None:
    from sender.events_sqs import queue_region

    assert queue_region("https://sqs.eu-west-1.amazonaws.com/123456789012/ses-events") == "eu-west-1"
    assert queue_region("https://sqs.cn-north-1.amazonaws.com.cn/123456789012/ses-events") == "cn-north-1"
    assert queue_region("http://127.0.0.1:4566/000000000000/ses-events") is None
    assert queue_region("https://sqs.us-east-1.amazonaws.com.evil.example/1/q") is None
