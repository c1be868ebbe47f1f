"""Scale of one campaign: N recipients (default 1,000,000) through a fast fake SES.

    python -m bench.scale [--recipients 1000000]

Reports: RSS of the daemon process at 10k sent and at the end (target <= 150 MB, end <= 1.2x),
claim cost per row by tenth of the campaign (last tenth <= 1.5x the first), and database
transactions per 1,000 messages from pg_stat_database (each is one round trip; target <= 10).
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
    rss_mb,
    seed_campaign,
    use_uvloop,
    write_costs,
    write_counters,
)
from sender.config import Settings
from sender.daemon import Daemon
from sender.db import connect
from sender.runner import CampaignRunner

CLAIMS: list[tuple[int, int, float]] = []  # (rows sent so far, rows claimed, seconds)


def instrument_claims(progress: list[int]) -> None:
    """Wrap CampaignRunner._claim to time every claim against how far the campaign had got."""
    original = CampaignRunner._claim

    async def timed(self: CampaignRunner, n: int) -> Any:
        started = time.perf_counter()
        rows = await original(self, n)
        if rows:
            CLAIMS.append((progress[0], len(rows), time.perf_counter() - started))
        return rows

    CampaignRunner._claim = timed  # type: ignore[method-assign]


async def transactions(conn: Any) -> int:
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    return int(await conn.fetchval(
        "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"))


async def main(args: argparse.Namespace) -> None:
    n = args.recipients
    progress = [0]
    instrument_claims(progress)
    with postgres() as dsn:
        async with fake_ses_process(rate=1e9, latency=0.0, enforce=False, lean=True) as fake:
            await fresh_schema(dsn)
            conn = await connect(dsn)
            started = time.perf_counter()
            campaign = await seed_campaign(conn, n)
            seed_seconds = time.perf_counter() - started
            monitor = await connect(dsn)
            settings = Settings(database_url=dsn, endpoint_url=fake.url, from_email="news@bench.example.com",
                                max_rate=1_000_000, concurrency=64, http_port=0)
            stop = asyncio.Event()
            rss_start = rss_mb()
            await asyncio.sleep(1.5)  # pg stats are flushed at most once a second
            xact_before = await transactions(monitor)
            writes_before = await write_counters(monitor)
            task = asyncio.create_task(Daemon(settings, tune_gc=True).run(stop))
            samples: list[tuple[int, float]] = []
            started = time.perf_counter()
            while True:
                row = await monitor.fetchrow("SELECT status, sent_count FROM campaigns WHERE id = $1", campaign)
                progress[0] = row["sent_count"]
                samples.append((row["sent_count"], rss_mb()))
                if row["status"] == "sent":
                    break
                await asyncio.sleep(1.0)
            elapsed = time.perf_counter() - started
            stop.set()
            await task
            await asyncio.sleep(1.5)
            xact_after = await transactions(monitor) - len(samples) - 3  # less this monitor's own
            writes_after = await write_counters(monitor)
            first, last = await monitor.fetchrow(
                "SELECT min(sent_at), max(sent_at) FROM campaign_recipients WHERE campaign_id = $1", campaign)
            await monitor.close()
            await conn.close()
            stats = await fake.stats()
    rss_10k = next((rss for sent, rss in samples if sent >= min(10_000, n)), samples[-1][1])
    rss_end = max(rss for _, rss in samples[-3:])
    tenths: list[dict[str, Any]] = []
    for i in range(10):
        lo, hi = n * i / 10, n * (i + 1) / 10
        picked = [(rows, secs) for done, rows, secs in CLAIMS if lo <= done < hi]
        rows = sum(r for r, _ in picked)
        tenths.append({"tenth": i + 1, "claims": len(picked),
                       "us_per_row": round(sum(s for _, s in picked) / rows * 1e6, 2) if rows else None})
    first_tenth = tenths[0]["us_per_row"]
    last_tenth = next(t["us_per_row"] for t in reversed(tenths) if t["us_per_row"] is not None)
    span = (last - first).total_seconds()
    result = {
        "benchmark": "scale", "conditions": conditions(recipients=n, ses_latency="0 ms", concurrency=64,
                                                       fake_ses="separate process, lean records"),
        "seed_seconds": round(seed_seconds, 1), "send_seconds": round(span, 1), "rate": round((n - 1) / span, 1),
        "wall_seconds": round(elapsed, 1), "accepted_by_ses": stats["accepted"],
        "unique_recipients": stats["unique_recipients"],
        "rss_mb": {"before": round(rss_start, 1), "at_10k": round(rss_10k, 1), "at_end": round(rss_end, 1),
                   "max": round(max(r for _, r in samples), 1), "end_over_10k": round(rss_end / rss_10k, 3)},
        "claim_us_per_row_by_tenth": tenths,
        "claim_last_over_first": round(last_tenth / first_tenth, 3) if first_tenth else None,
        "db_transactions": xact_after - xact_before,
        "writes_while_sending": write_costs(writes_before, writes_after, n),
        "db_transactions_per_1000_messages": round((xact_after - xact_before) / n * 1000, 2),
    }
    print(f"# {n} recipients in {span:.0f} s ({result['rate']}/s); RSS {result['rss_mb']}; claim last/first tenth "
          f"{result['claim_last_over_first']}; {result['db_transactions_per_1000_messages']} transactions per 1,000; "
          f"writes per message {result['writes_while_sending']}",
          flush=True)
    report("scale", result)


def cli(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipients", type=int, default=1_000_000)
    args = p.parse_args(argv)
    use_uvloop()
    asyncio.run(main(args))


if __name__ == "__main__":
    cli()
