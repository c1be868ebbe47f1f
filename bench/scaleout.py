"""Scale-out: 1, 2 and 3 daemon processes share one account cap through the budget in PostgreSQL.

    python -m bench.scaleout [--seconds 8] [--caps 14 100 300] [--instances 1 2 3]

For each cap and instance count: aggregate/cap over the steady part (first and last second left
out), one-second windows over the cap and 429s, all by arrival time at the fake SES (its own
process, strict sliding-window quota, 20 ms ± 5 ms latency); and the database cost of
coordination per instance: grants per second, and transactions per 1,000 sends (everything the
instances commit: grants, claims, write-backs, heartbeats, ticks). Then the 1/s sandbox cap with
3 instances; a join at +3 s and a kill -9 at +6 s; uncapped throughput of 2 instances
against 1 on this machine; and a campaign with its own rate_per_sec (shared by every instance
sending it, sender.campaign_share): 100/s under a 300/s cap with 1, 2 and 3 instances (aggregate
against the campaign's rate, windows over it), and 800/s with no account cap, 2 instances against 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg

from bench.common import (
    conditions,
    fake_ses_process,
    fresh_schema,
    postgres,
    report,
    seed_campaign,
    write_costs,
    write_counters,
)
from sender.db import connect
from sender.demo.fakeses import max_in_window

STEADY_MARGIN = 1.0  # seconds left out at each end


def daemon_env(dsn: str, ses_url: str, name: str, **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SENDER_", "DATABASE_URL", "AWS_ENDPOINT"))}
    return base | {"DATABASE_URL": dsn, "AWS_ENDPOINT_URL_SESV2": ses_url, "SES_FROM_EMAIL": "news@bench.example.com",
                   "SENDER_INSTANCE_ID": name, "SENDER_HTTP_PORT": "0", "SENDER_ENV_FILE": "/nonexistent",
                   "SENDER_LOG_LEVEL": "warning", "SENDER_POLL_INTERVAL": "0.2"} | extra


async def start(dsn: str, ses_url: str, name: str, **extra: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "sender", "run",
                                                env=daemon_env(dsn, ses_url, name, **extra),
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)


@contextlib.asynccontextmanager
async def instances(dsn: str, ses_url: str, count: int,
                    **extra: str) -> AsyncIterator[list[asyncio.subprocess.Process]]:
    procs = [await start(dsn, ses_url, f"bench-{i}", **extra) for i in range(count)]
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()


async def wait_live(conn: asyncpg.Connection, count: int) -> None:
    while await conn.fetchval("SELECT count(*) FROM sender_instances "
                              "WHERE heartbeat_at > now() - interval '2 s'") < count:
        await asyncio.sleep(0.1)


async def wait_sent(conn: asyncpg.Connection, campaign: int) -> None:
    while await conn.fetchval("SELECT status FROM campaigns WHERE id = $1", campaign) != "sent":
        await asyncio.sleep(0.2)


async def arrivals(url: str) -> tuple[list[float], int, int]:
    """Arrival times of accepted messages, 429s, and distinct recipients."""
    async with aiohttp.ClientSession() as http, http.get(f"{url}/_fake/messages") as r:
        data = await r.json()
    times = sorted(m["received_at"] for m in data["messages"])
    throttled = sum(1 for x in data["rejections"] if x["code"] == "TooManyRequestsException")
    return times, throttled, len({m["to"][0] for m in data["messages"]})


def steady_rate(times: list[float]) -> float:
    lo, hi = times[0] + STEADY_MARGIN, times[-1] - STEADY_MARGIN
    inside = [t for t in times if lo <= t <= hi]
    return (len(inside) - 1) / (inside[-1] - inside[0]) if len(inside) > 2 else 0.0


async def db_counters(conn: asyncpg.Connection) -> tuple[int, int]:
    commits = await conn.fetchval("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
    grants = await conn.fetchval("SELECT coalesce(sum(grants), 0) FROM sender_rate_budgets")
    return int(commits), int(grants)


async def one(dsn: str, cap: float, count: int, seconds: float, *, kill: bool = False,
              uncapped: bool = False, campaign_rate: float | None = None) -> dict[str, Any]:
    limit = min(cap, campaign_rate) if campaign_rate else cap  # what the campaign may send
    messages = max(8, int(limit * seconds))
    async with fake_ses_process(rate=cap, latency=0.02, jitter=0.005, enforce=not uncapped, lean=True) as fake:
        await fresh_schema(dsn)
        conn = await connect(dsn)
        campaign = await seed_campaign(conn, messages, status="draft", rate=campaign_rate)
        extra = {"SENDER_MAX_RATE": str(cap)} if uncapped else {}
        if kill:  # rows of the killed instance come back after 3 s
            extra |= {"SENDER_SEND_TIMEOUT": "2", "SENDER_HEARTBEAT_INTERVAL": "0.2",
                      "SENDER_INSTANCE_TIMEOUT": "3", "SENDER_LEASE_SECONDS": "5"}
        async with instances(dsn, fake.url, count, **extra) as procs:
            await wait_live(conn, count)
            await asyncio.sleep(0.1)
            commits0, grants0 = await db_counters(conn)
            writes0 = await write_counters(conn)
            await conn.execute("SELECT pg_stat_clear_snapshot()")
            await conn.execute("UPDATE campaigns SET status = 'queued' WHERE id = $1", campaign)
            started = asyncio.get_running_loop().time()
            killed_at = 0.0
            if kill:
                await asyncio.sleep(3)
                procs.append(await start(dsn, fake.url, "bench-late", **extra))
                await asyncio.sleep(3)
                procs[0].send_signal(signal.SIGKILL)
                killed_at = time.monotonic()  # CLOCK_MONOTONIC: the fake's arrival times are on it too
            await wait_sent(conn, campaign)
            elapsed = asyncio.get_running_loop().time() - started
            await conn.execute("SELECT pg_stat_clear_snapshot()")
            commits1, grants1 = await db_counters(conn)
            await asyncio.sleep(1.5)  # table statistics reach the shared counters about once a second
            writes = write_costs(writes0, await write_counters(conn), messages)
        times, throttled, distinct = await arrivals(fake.url)
        sent_rows = await conn.fetchval(
            "SELECT count(*) FROM campaign_recipients WHERE campaign_id = $1 AND status = 'sent'", campaign)
        await conn.close()
    rate = steady_rate(times)
    sends = len(times)
    return {
        "cap": cap, "campaign_rate": campaign_rate, "instances": count + (1 if kill else 0), "messages": messages,
        "accepted": sends, "aggregate_rate": round(rate, 2),
        "aggregate_over_cap": round(rate / limit, 4) if not uncapped or campaign_rate else None,
        "max_in_any_1s_window": max_in_window(times), "windows_over_cap": int(max_in_window(times) > limit),
        "throttled": throttled, "lost": messages - min(sent_rows, distinct), "resent": sends - distinct,
        "grants_per_second_per_instance": round((grants1 - grants0) / elapsed / count, 2),
        "db_transactions_per_1000_sends": round((commits1 - commits0) / sends * 1000, 1),
        "seconds": round(elapsed, 2),
        "row_versions_per_message": writes["row_updates_per_message"],
        "wal_bytes_per_message": writes["wal_bytes_per_message"], "deadlocks": writes["deadlocks"],
    } | ({"rate_in_2s_after_kill": round(sum(1 for t in times if killed_at <= t < killed_at + 2) / 2, 2)}
         if kill else {})


def line(row: dict[str, Any]) -> str:
    return (f"# cap {row['cap']:g}/s, {row['instances']} instance(s): {row['aggregate_rate']}/s "
            f"({row['aggregate_over_cap']}), max window {row['max_in_any_1s_window']}, 429s {row['throttled']}, "
            f"grants/s/instance {row['grants_per_second_per_instance']}, "
            f"txn/1000 sends {row['db_transactions_per_1000_sends']}, row versions/msg "
            f"{row['row_versions_per_message']}, WAL B/msg {row['wal_bytes_per_message']}, "
            f"deadlocks {row['deadlocks']}")


async def main(args: argparse.Namespace) -> None:
    results: dict[str, Any] = {"benchmark": "scaleout", "conditions": conditions(
        seconds_per_run=args.seconds, ses_latency="20 ms ± 5 ms",
        fake_ses="separate process, enforces MaxSendRate over every sliding 1 s window",
        daemons="separate `sender run` processes, not pinned",
        warm_up="one unmeasured 2 s run at cap 100 first (a cold PostgreSQL cost the first run up to 1.5%)"),
        "runs": []}
    with postgres() as dsn:
        await one(dsn, 100, 1, 2)  # warm-up: PostgreSQL's caches, the daemons' first imports
        runs = [] if args.rated_only else [(cap, n) for cap in args.caps for n in args.instances] + [(1.0, 3)]
        for cap, n in runs:
            row = await one(dsn, cap, n, args.seconds if cap > 1 else 8)
            results["runs"].append(row)
            print(line(row), flush=True)
        if args.rated_only:
            await rated(dsn, args, results)
            report("scaleout-rated", results)
            return
        row = await one(dsn, 100, 2, 12, kill=True)
        results["join_and_kill"] = row
        print(f"# join +3 s, kill -9 +6 s at cap 100: max window {row['max_in_any_1s_window']}, "
              f"429s {row['throttled']}, lost {row['lost']}, resent {row['resent']}, "
              f"steady rate {row['aggregate_rate']}/s, rate in the 2 s after the kill {row['rate_in_2s_after_kill']}/s",
              flush=True)
        uncapped = [await one(dsn, 5000, n, 1, uncapped=True) for n in (1, 2)]
        results["uncapped"] = {"one": uncapped[0], "two": uncapped[1],
                               "ratio": round(uncapped[1]["aggregate_rate"] / uncapped[0]["aggregate_rate"], 2)}
        print(f"# uncapped: 1 instance {uncapped[0]['aggregate_rate']}/s, 2 instances "
              f"{uncapped[1]['aggregate_rate']}/s, ratio {results['uncapped']['ratio']}", flush=True)
        await rated(dsn, args, results)
    report("scaleout", results)


async def rated(dsn: str, args: argparse.Namespace, results: dict[str, Any]) -> None:
    """A campaign with its own rate: shared by every instance sending it, never over it in any window."""
    results["campaign_rate"] = []
    for n in args.instances:
        row = await one(dsn, 300, n, args.seconds, campaign_rate=100)
        results["campaign_rate"].append(row)
        print(f"# campaign at 100/s, cap 300/s, {n} instance(s): {row['aggregate_rate']}/s "
              f"({row['aggregate_over_cap']} of its rate), max window {row['max_in_any_1s_window']}, "
              f"429s {row['throttled']}, txn/1000 sends {row['db_transactions_per_1000_sends']}", flush=True)
    fast = [await one(dsn, 5000, n, 2, uncapped=True, campaign_rate=800) for n in (1, 2)]
    results["campaign_rate_uncapped"] = {
        "one": fast[0], "two": fast[1], "ratio": round(fast[1]["aggregate_rate"] / fast[0]["aggregate_rate"], 2)}
    print(f"# campaign at 800/s, no account cap: 1 instance {fast[0]['aggregate_rate']}/s, 2 instances "
          f"{fast[1]['aggregate_rate']}/s (max window {fast[1]['max_in_any_1s_window']}), "
          f"ratio {results['campaign_rate_uncapped']['ratio']}", flush=True)


def cli(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--caps", type=float, nargs="+", default=[14, 100, 300])
    p.add_argument("--instances", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--rated-only", action="store_true", help="only the campaign with its own rate")
    asyncio.run(main(p.parse_args(argv)))


if __name__ == "__main__":
    cli()
