"""SES events applied per second into PostgreSQL, and RSS as they flow.

    python -m bench.events [--events 1000000] [--sqs-events 50000] [--receivers 4] [--batch 500]

Two paths, each printed with its conditions:
- apply: Delivery events (SNS envelopes) from a local in-process queue, parsed and applied in
  batches of --batch (the database side of the consumer, what "keep up with sending" needs);
- sqs: the same events through the real consumer (aioboto3 long-poll receive, batched apply,
  delete) from the fake SQS in its own process (client CPU includes the SQS calls).
Target (issue 11): at least 5x the send rate one instance reaches, RSS flat over 1M events.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry

from bench.common import conditions, fresh_schema, pin_servers, postgres, report, rss_mb, use_uvloop
from sender.config import Settings
from sender.db import connect, create_pool
from sender.event_metrics import EventMetrics
from sender.events import apply_effects, parse_event
from sender.events_sqs import SqsConsumer

DELIVERY = json.dumps({
    "Type": "Notification", "MessageId": "sns-{i}", "TopicArn": "arn:aws:sns:us-east-1:123456789012:ses-events",
    "Timestamp": "2026-01-01T00:00:00.000Z",
    "Message": json.dumps({
        "eventType": "Delivery",
        "mail": {"timestamp": "2026-01-01T00:00:00.000Z", "source": "news@bench.example.com",
                 "sourceArn": "arn:aws:ses:us-east-1:123456789012:identity/bench.example.com",
                 "sendingAccountId": "123456789012", "messageId": "m-{i}",
                 "destination": ["user{i}@bench.example.net"], "headersTruncated": False,
                 "tags": {"ses:configuration-set": ["events"], "campaign_id": ["1"], "recipient_id": ["{i}"]}},
        "delivery": {"timestamp": "2026-01-01T00:00:01.000Z", "processingTimeMillis": 812,
                     "recipients": ["user{i}@bench.example.net"], "smtpResponse": "250 2.6.0 Message received",
                     "reportingMTA": "a8-30.smtp-out.amazonses.com"},
    }),
})


async def control(url: str, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        if payload is None:
            async with http.get(url + path) as resp:
                return dict(await resp.json())
        async with http.post(url + path, json=payload) as resp:
            return dict(await resp.json())


async def seed(dsn: str, n: int) -> int:
    """A sent campaign of n recipients with message ids m-1 … m-n."""
    await fresh_schema(dsn)
    conn = await connect(dsn)
    campaign = int(await conn.fetchval("INSERT INTO campaigns (name, status) VALUES ('bench', 'sent') RETURNING id"))
    await conn.execute(
        "INSERT INTO campaign_recipients (id, campaign_id, email, status, message_id, sent_at) "
        "SELECT g, $1, 'user' || g || '@bench.example.net', 'sent', 'm-' || g, now() "
        "FROM generate_series(1, $2) g", campaign, n)
    await conn.execute("UPDATE campaigns SET sent_count = $2, total_count = $2 WHERE id = $1", campaign, n)
    await conn.execute("VACUUM ANALYZE campaign_recipients")
    await conn.close()
    return campaign


def line(name: str, n: int, seconds: float, cpu: float, rss: list[tuple[int, float]]) -> dict[str, Any]:
    first = next((mb for k, mb in rss if k >= n // 10), rss[-1][1])
    print(f"# {name}: {n} Delivery events in {seconds:.1f} s = {n / seconds:.0f}/s ({cpu / n * 1e6:.0f} µs client "
          f"CPU each); RSS {first} MB after the first tenth, {rss[-1][1]} MB at the end", flush=True)
    return {"events": n, "seconds": round(seconds, 1), "events_per_second": round(n / seconds),
            "client_cpu_us_per_event": round(cpu / n * 1e6), "rss_mb": rss,
            "rss_end_over_first_tenth": round(rss[-1][1] / first, 3)}


async def apply_path(dsn: str, n: int, batch: int) -> dict[str, Any]:
    campaign = await seed(dsn, n)
    conn = await connect(dsn)
    rss = [(0, round(rss_mb(), 1))]
    busy = cpu = 0.0
    for start in range(1, n + 1, batch):
        bodies = [DELIVERY.replace("{i}", str(i)) for i in range(start, min(n + 1, start + batch))]
        t, c = time.perf_counter(), time.process_time()
        effects = [e for body in bodies for e in parse_event(body)]
        await apply_effects(conn, effects)
        busy += time.perf_counter() - t
        cpu += time.process_time() - c
        done = start + len(bodies) - 1
        if done // max(1, n // 10) != (done - len(bodies)) // max(1, n // 10):
            rss.append((done, round(rss_mb(), 1)))
    delivered = await conn.fetchval("SELECT delivered_count FROM campaigns WHERE id = $1", campaign)
    await conn.close()
    assert delivered == n, (delivered, n)
    return line("apply", n, busy, cpu, rss)


async def sqs_path(dsn: str, n: int, receivers: int, batch: int) -> dict[str, Any]:
    campaign = await seed(dsn, n)
    proc = subprocess.Popen([sys.executable, "-m", "sender.demo.fakesqs", "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    pin_servers(pid=proc.pid)
    try:
        assert proc.stdout is not None
        fake = json.loads(await asyncio.to_thread(proc.stdout.readline))
        settings = Settings(database_url=dsn, events_queue_url=fake["queue_url"], sqs_endpoint_url=fake["fake_sqs"],
                            events_receivers=receivers, events_batch=batch)
        pool = await create_pool(dsn, min_size=2, max_size=4)
        consumer = SqsConsumer(settings, pool, EventMetrics(CollectorRegistry()), wait_seconds=1, depth_interval=5.0)
        chunk = 20_000
        filled = min(chunk, n)
        await control(fake["control"], "/_fake/fill", {"queue": "ses-events", "template": DELIVERY, "start": 1,
                                                       "count": filled})

        async def refill() -> None:  # keeps the queue stocked without holding 1M bodies anywhere
            nonlocal filled
            while filled < n:
                if (await control(fake["control"], "/_fake/stats"))["ses-events"]["ready"] < chunk // 2:
                    count = min(chunk, n - filled)
                    await control(fake["control"], "/_fake/fill", {"queue": "ses-events", "template": DELIVERY,
                                                                   "start": filled + 1, "count": count})
                    filled += count
                await asyncio.sleep(0.2)

        rss = [(0, round(rss_mb(), 1))]
        t0, c0 = time.perf_counter(), time.process_time()
        tasks = [asyncio.create_task(consumer.run()), asyncio.create_task(refill())]
        step, mark = max(1, n // 10), max(1, n // 10)
        while consumer.applied_messages < n:
            await asyncio.sleep(0.1)
            if consumer.applied_messages >= mark:
                rss.append((consumer.applied_messages, round(rss_mb(), 1)))
                mark += step
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        delivered = await pool.fetchval("SELECT delivered_count FROM campaigns WHERE id = $1", campaign)
        await pool.close()
        assert delivered == n, (delivered, n)
        return line("sqs", n, seconds, cpu, rss)
    finally:
        proc.terminate()
        proc.wait(10)


async def main(args: argparse.Namespace) -> None:
    load = Path("/proc/loadavg").read_text().split()[:3]
    results: dict[str, Any] = {"benchmark": "events", "conditions": conditions(
        batch=args.batch, receivers=args.receivers, event="SES Delivery in an SNS envelope (1.2 KB)",
        load_average_at_start=load)}
    with postgres() as dsn:
        results["apply"] = await apply_path(dsn, args.events, args.batch)
        if args.sqs_events:
            results["sqs"] = await sqs_path(dsn, args.sqs_events, args.receivers, args.batch)
    report("events", results)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--events", type=int, default=100_000, help="events through the apply path")
    p.add_argument("--sqs-events", type=int, default=20_000, help="events through fake SQS (0: skip)")
    p.add_argument("--receivers", type=int, default=4)
    p.add_argument("--batch", type=int, default=500)
    use_uvloop()
    asyncio.run(main(p.parse_args()))
