"""Database writes per message: row versions on campaign_recipients and WAL bytes (issue: halve them).

    python -m bench.writes [--messages 3000] [--runs 1]

Each campaign is materialised first (its inserts are not counted), then sent by one daemon with the
fake SES in its own process; the figures cover sending only: claim, write-back and whatever else
touches the recipient rows. Also counts deadlocks (pg_stat_database) over all runs.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from bench.common import (
    conditions,
    fake_ses_process,
    fresh_schema,
    postgres,
    report,
    seed_campaign,
    use_uvloop,
    write_costs,
    write_counters,
)
from sender.config import Settings
from sender.daemon import Daemon
from sender.db import connect

CASES = [  # (label, campaign rate, SES latency)
    ("100/s, 50 ms", 100.0, 0.05),
    ("300/s, 50 ms", 300.0, 0.05),
    ("uncapped, 0 ms", None, 0.0),
]


async def one_case(dsn: str, label: str, rate: float | None, latency: float, messages: int) -> dict[str, Any]:
    async with fake_ses_process(rate=1e9, latency=latency, enforce=False, lean=True) as fake:
        await fresh_schema(dsn)
        conn = await connect(dsn)
        campaign = await seed_campaign(conn, messages, rate=rate, status="draft")
        await conn.execute("INSERT INTO campaign_recipients (campaign_id, contact_id, email) "
                           "SELECT $1, id, email FROM contacts", campaign)
        await conn.execute("UPDATE campaigns SET status = 'sending', total_count = $2, materialised_at = now(), "
                           "started_at = now() WHERE id = $1", campaign, messages)
        await asyncio.sleep(1.5)
        before = await write_counters(conn)
        settings = Settings(database_url=dsn, endpoint_url=fake.url, from_email="news@bench.example.com",
                            max_rate=1_000_000, http_port=0)
        stop = asyncio.Event()
        started = time.perf_counter()
        task = asyncio.create_task(Daemon(settings, tune_gc=True).run(stop))
        while await conn.fetchval("SELECT status FROM campaigns WHERE id = $1", campaign) != "sent":
            await asyncio.sleep(0.2)
        elapsed = time.perf_counter() - started
        stop.set()
        await task
        await asyncio.sleep(1.5)
        after = await write_counters(conn)
        await conn.close()
    costs = write_costs(before, after, messages)
    print(f"# {label}: {costs['row_updates_per_message']} row updates and {costs['wal_bytes_per_message']} B of WAL "
          f"per message, {costs['deadlocks']} deadlocks ({messages / elapsed:.0f}/s)", flush=True)
    return {"case": label, "messages": messages, "seconds": round(elapsed, 1), **costs}


async def main(args: argparse.Namespace) -> None:
    results = []
    with postgres() as dsn:
        for _ in range(args.runs):
            for label, rate, latency in CASES:
                results.append(await one_case(dsn, label, rate, latency, args.messages))
    report("writes", {"benchmark": "writes",
                      "conditions": conditions(messages=args.messages, runs=args.runs, instances=1,
                                               fake_ses="separate process, lean records"),
                      "results": results, "deadlocks_total": sum(r["deadlocks"] for r in results)})


def cli(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=3000)
    p.add_argument("--runs", type=int, default=1)
    args = p.parse_args(argv)
    use_uvloop()
    asyncio.run(main(args))


if __name__ == "__main__":
    cli()
