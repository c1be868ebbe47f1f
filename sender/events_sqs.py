"""The SES events consumer: SQS (fed by SNS or EventBridge) into PostgreSQL, at-least-once.

A few receivers long-poll batches of 10 into a bounded local queue; one applier takes up to
SENDER_EVENTS_BATCH messages at a time, applies them in one transaction, and only then deletes
them. Unparsable messages are counted, logged and left alone: SQS hands them to the dead-letter
queue after the redrive policy's maxReceiveCount. A database outage keeps the batch and retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aioboto3
import asyncpg
from botocore.config import Config

from sender.config import Settings
from sender.db import DB_ERRORS
from sender.event_metrics import EventMetrics
from sender.events import Effect, EventError, apply_effects, parse_event
from sender.logs import get_logger

log = get_logger("sender.events_sqs")


_QUEUE_HOST = re.compile(r"^sqs\.([a-z0-9-]+)\.amazonaws\.com(\.cn)?$")


def queue_region(url: str) -> str | None:
    """The region in an AWS queue URL (https://sqs.eu-west-1.amazonaws.com/…): the queue may live
    outside the SES region."""
    match = _QUEUE_HOST.match(urlsplit(url).hostname or "")
    return match.group(1) if match else None


@dataclass(slots=True)
class Received:
    receipt: str
    effects: list[Effect]
    sent_at: float | None  # SQS SentTimestamp, seconds since the epoch


class SqsConsumer:
    def __init__(self, settings: Settings, pool: asyncpg.Pool, metrics: EventMetrics, *,
                 wait_seconds: int = 20, depth_interval: float = 15.0) -> None:
        assert settings.events_queue_url
        self.settings = settings
        self.url = settings.events_queue_url
        self.pool = pool
        self.metrics = metrics
        self.wait_seconds = wait_seconds
        self.depth_interval = depth_interval
        self.applied_messages = 0
        self._healthy = asyncio.Event()  # cleared while the database refuses batches: stop receiving
        self._healthy.set()

    async def run(self) -> None:
        s = self.settings
        session = aioboto3.Session()
        config = Config(retries={"total_max_attempts": 3, "mode": "standard"}, connect_timeout=5,
                        read_timeout=self.wait_seconds + 10, max_pool_connections=s.events_receivers + 16,
                        parameter_validation=False)
        region = queue_region(self.url) or s.region
        async with session.client("sqs", region_name=region, endpoint_url=s.sqs_endpoint_url, config=config) as sqs:
            # one item per receive call (up to 10 messages), so deletes go back ten at a time
            queue: asyncio.Queue[list[Received]] = asyncio.Queue(maxsize=max(4, s.events_batch // 5))
            tasks = [asyncio.create_task(self._receive(sqs, queue), name=f"sqs-receive-{i}")
                     for i in range(s.events_receivers)]
            tasks.append(asyncio.create_task(self._apply_loop(sqs, queue), name="sqs-apply"))
            tasks.append(asyncio.create_task(self._depth_loop(sqs), name="sqs-depth"))
            log.info("events_consumer_started", receivers=s.events_receivers, batch=s.events_batch)
            try:
                await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _receive(self, sqs: Any, queue: asyncio.Queue[list[Received]]) -> None:
        backoff = 1.0
        while True:
            await self._healthy.wait()
            try:
                resp = await sqs.receive_message(QueueUrl=self.url, MaxNumberOfMessages=10,
                                                 WaitTimeSeconds=self.wait_seconds,
                                                 MessageSystemAttributeNames=["SentTimestamp"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # network, credentials, a deleted queue: keep trying, say so
                log.warning("events_receive_failed", error=type(exc).__name__, retry_in=backoff)
                self.metrics.failed.labels(reason="receive").inc()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            backoff = 1.0
            unit = [item for message in resp.get("Messages", []) if (item := self._parse(message)) is not None]
            if unit:
                await queue.put(unit)

    def _parse(self, message: dict[str, Any]) -> Received | None:
        try:
            effects = parse_event(message.get("Body", ""))
        except EventError as exc:
            reason = "unknown_type" if str(exc).startswith("unknown event type") else "unparsable"
            self.metrics.failed.labels(reason=reason).inc()
            log.warning("ses_event_unreadable", reason=reason, detail=str(exc),
                        sqs_message_id=message.get("MessageId"), note="left for the dead-letter queue")
            return None
        sent = message.get("Attributes", {}).get("SentTimestamp")
        sent_at = int(sent) / 1000 if isinstance(sent, str) and sent.isdigit() else None
        return Received(message["ReceiptHandle"], effects, sent_at)

    async def _apply_loop(self, sqs: Any, queue: asyncio.Queue[list[Received]]) -> None:
        limit = self.settings.events_batch
        while True:
            units = [await queue.get()]
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.02):  # a moment for the other receivers' batches
                    while sum(map(len, units)) < limit:
                        units.append(await queue.get())
            while sum(map(len, units)) < limit and not queue.empty():
                units.append(queue.get_nowait())
            await self._apply(sqs, [item for unit in units for item in unit])
            await asyncio.gather(*(self._delete(sqs, [item.receipt for item in unit]) for unit in units))

    async def _apply(self, sqs: Any, batch: list[Received]) -> None:
        """Commit the batch, retrying through database outages while keeping its messages hidden
        (so they are neither redelivered nor counted towards the dead-letter redrive meanwhile)."""
        effects = [e for item in batch for e in item.effects]
        backoff = 0.5
        while True:
            try:
                async with self.pool.acquire() as conn:
                    applied = await apply_effects(conn, effects, soft_bounce_limit=self.settings.soft_bounce_limit,
                                                  soft_bounce_days=self.settings.soft_bounce_days)
                break
            except DB_ERRORS as exc:
                self._healthy.clear()
                log.warning("events_apply_failed", messages=len(batch), error=type(exc).__name__, retry_in=backoff)
                self.metrics.failed.labels(reason="database").inc()
                await self._hide(sqs, [item.receipt for item in batch], seconds=int(backoff) + 30)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
        self._healthy.set()
        self.metrics.record(applied)
        self.applied_messages += len(batch)
        oldest = min((item.sent_at for item in batch if item.sent_at is not None), default=None)
        if oldest is not None:
            self.metrics.queue_lag.set(max(0.0, time.time() - oldest))

    async def _delete(self, sqs: Any, receipts: list[str]) -> None:
        """Delete committed messages, ten per call; a failed delete only means a harmless replay."""
        async def chunk(part: list[str]) -> None:
            try:
                resp = await sqs.delete_message_batch(
                    QueueUrl=self.url, Entries=[{"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(part)])
                if resp.get("Failed"):
                    log.warning("events_delete_failed", messages=len(resp["Failed"]))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("events_delete_failed", messages=len(part), error=type(exc).__name__)

        await asyncio.gather(*(chunk(receipts[i:i + 10]) for i in range(0, len(receipts), 10)))

    async def _hide(self, sqs: Any, receipts: list[str], *, seconds: int) -> None:
        for i in range(0, len(receipts), 10):
            with contextlib.suppress(Exception):
                await sqs.change_message_visibility_batch(QueueUrl=self.url, Entries=[
                    {"Id": str(n), "ReceiptHandle": r, "VisibilityTimeout": seconds}
                    for n, r in enumerate(receipts[i:i + 10])])

    async def _depth_loop(self, sqs: Any) -> None:
        while True:
            with contextlib.suppress(Exception):
                resp = await sqs.get_queue_attributes(QueueUrl=self.url,
                                                      AttributeNames=["ApproximateNumberOfMessages"])
                self.metrics.queue_depth.set(int(resp["Attributes"]["ApproximateNumberOfMessages"]))
            await asyncio.sleep(self.depth_interval)
