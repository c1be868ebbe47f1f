"""Time to first send: from a campaign's `queued` commit to SES receiving its first message.

    python -m bench.first_send [--runs 20]

A running, idle daemon wakes on NOTIFY. Both clocks are CLOCK_MONOTONIC on this host
(time.monotonic() in both processes). Target: median <= 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from bench.common import conditions, fake_ses_process, fresh_schema, postgres, report, use_uvloop
from sender.config import Settings
from sender.daemon import Daemon
from sender.db import connect


async def main(args: argparse.Namespace) -> None:
    delays: list[float] = []
    with postgres() as dsn:
        async with fake_ses_process(rate=1000, latency=0.02, enforce=True, lean=True) as fake:
            await fresh_schema(dsn)
            conn = await connect(dsn)
            await conn.execute("INSERT INTO contacts (email, first_name) VALUES ('first@bench.example.net', 'F')")
            template = await conn.fetchval("INSERT INTO templates (name, subject, content_html) "
                                           "VALUES ('t', 'Hi', '<p>Hi {{ first_name }}</p>') RETURNING id")
            settings = Settings(database_url=dsn, endpoint_url=fake.url, from_email="news@bench.example.com",
                                http_port=0)  # default poll interval (1 s): the wake-up is NOTIFY's
            stop = asyncio.Event()
            task = asyncio.create_task(Daemon(settings).run(stop))
            await asyncio.sleep(2)  # let it start and go idle
            for _ in range(args.runs):
                before = (await fake.stats())["accepted"]
                await conn.execute("INSERT INTO campaigns (name, template_id, target_rules, status) "
                                   "VALUES ('c', $1, '{}', 'queued')", template)
                queued_at = time.monotonic()
                while (stats := await fake.stats())["accepted"] == before:
                    await asyncio.sleep(0.01)
                delays.append(stats["last_at"] - queued_at)
                await asyncio.sleep(0.3)
            stop.set()
            await task
            await conn.close()
    result: dict[str, Any] = {
        "benchmark": "first_send", "conditions": conditions(runs=args.runs, ses_latency="20 ms",
                                                            poll_interval="1 s (default)"),
        "median_seconds": round(statistics.median(delays), 4), "p90_seconds": round(
            sorted(delays)[int(len(delays) * 0.9) - 1], 4), "max_seconds": round(max(delays), 4),
        "all_seconds": [round(d, 4) for d in delays]}
    print(f"# time to first send: median {result['median_seconds'] * 1000:.0f} ms, "
          f"max {result['max_seconds'] * 1000:.0f} ms over {args.runs} campaigns", flush=True)
    report("first_send", result)


def cli(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=20)
    args = p.parse_args(argv)
    use_uvloop()
    asyncio.run(main(args))


if __name__ == "__main__":
    cli()
