"""Many campaigns at once (issue 16): one daemon instance under a strict fake SES quota.

    python -m bench.campaigns [--rate 200] [--latency 0.02] [--big 6000] [--small 300x20] [--singles 1000]
                              [--queued 10000] [--latency-runs 5]

Workloads, each on a fresh schema, one daemon per workload, in one run (so the baseline shares the
conditions): 1 x BIG (the baseline), N x M, SINGLES x 1, QUEUED x 1 queued before the daemon starts,
and the latency of a 1-recipient campaign queued on an idle daemon and behind a BIG campaign sending
at the cap. Recipients are supplied by the "main app" (target_rules null) for the many-campaign
workloads, as a multi-tenant app does; the baseline and the big campaign materialise from `{}`.

Figures: aggregate rate / cap, one-second windows over the cap (at the fake), DB transactions per
1,000 sends (pg_stat_database xact_commit + xact_rollback delta, less this monitor's own), daemon
CPU per 1,000 sends (this process: the daemon runs in it, the fake SES and PostgreSQL do not),
campaigns started per second, RSS first vs last tenth (10,000 queued), and the tick's round trip.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import asyncpg

from bench.common import conditions, fake_ses_process, fresh_schema, postgres, report, rss_mb, use_uvloop
from sender.config import Settings
from sender.daemon import Daemon
from sender.db import connect
from sender.tick import Tick

TICKS: list[float] = []  # seconds per tick of the running daemon


def instrument_ticks() -> None:
    original = Tick.run

    async def timed(self: Tick) -> None:
        started = time.perf_counter()
        try:
            await original(self)
        finally:
            TICKS.append(time.perf_counter() - started)

    Tick.run = timed  # type: ignore[method-assign]


async def transactions(conn: asyncpg.Connection) -> int:
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    return int(await conn.fetchval(
        "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"))


async def seed(conn: asyncpg.Connection, campaigns: int, per_campaign: int, *, rules: bool = False,
               status: str = "queued") -> tuple[list[int], int]:
    """`campaigns` x `per_campaign` distinct contacts; with rules, one campaign to all of them (`{}`)."""
    total = campaigns * per_campaign
    first = int(await conn.fetchval("SELECT coalesce(max(id), 0) FROM contacts"))
    await conn.execute(
        "INSERT INTO contacts (email, first_name, country) "
        "SELECT 'user' || (g + $2) || '@bench.example.net', 'First' || g, 'US' FROM generate_series(1, $1) g",
        total, first)
    template = await conn.fetchval("INSERT INTO templates (name, subject, content_html) "
                                   "VALUES ('bench', 'Hello {{ first_name }}', '<p>Hi {{ first_name }}</p>') "
                                   "RETURNING id")
    if rules:
        cid = await conn.fetchval("INSERT INTO campaigns (name, template_id, target_rules, status) "
                                  "VALUES ('big', $1, '{}', $2) RETURNING id", template, status)
        return [int(cid)], total
    ids = [r["id"] for r in await conn.fetch(
        "INSERT INTO campaigns (name, template_id, status) SELECT 'tenant ' || g, $1, 'draft' "
        "FROM generate_series(1, $2) g RETURNING id", template, campaigns)]
    await conn.execute(
        "INSERT INTO campaign_recipients (campaign_id, contact_id, email) "
        "SELECT c.id, ct.id, ct.email FROM unnest($1::bigint[]) WITH ORDINALITY AS c(id, n) "
        "JOIN contacts ct ON ct.id > $3 AND ct.id <= $3 + $2 * c.n AND ct.id > $3 + $2 * (c.n - 1)",
        ids, per_campaign, first)
    await conn.execute("UPDATE campaigns SET status = $2 WHERE id = ANY($1::bigint[])", ids, status)
    return ids, total


async def workload(dsn: str, fake: Any, args: argparse.Namespace, name: str, campaigns: int, per_campaign: int,
                   *, rules: bool = False, before_start: bool = False) -> dict[str, Any]:
    """Queue the campaigns (before the daemon starts, or once it is idle), run until all are sent."""
    await fresh_schema(dsn)
    await fake.reset()
    conn = await connect(dsn)
    monitor = await connect(dsn)
    settings = Settings(database_url=dsn, endpoint_url=fake.url, from_email="news@bench.example.com", http_port=0)
    if before_start:
        ids, total = await seed(conn, campaigns, per_campaign, rules=rules)
        await asyncio.sleep(1.1)  # pg stats flushed
    stop = asyncio.Event()
    TICKS.clear()
    if before_start:  # measured from the daemon's start: it finds them all queued
        xact_before = await transactions(monitor)
        cpu_before, started = time.process_time(), time.perf_counter()
        queued_at = await monitor.fetchval("SELECT clock_timestamp()")
    task = asyncio.create_task(Daemon(settings, tune_gc=True).run(stop))
    if not before_start:
        await asyncio.sleep(2.0)  # started and idle
        ids, total = await seed(conn, campaigns, per_campaign, rules=rules, status="draft")
        await asyncio.sleep(1.1)
        xact_before = await transactions(monitor)
        cpu_before, started = time.process_time(), time.perf_counter()
        queued_at = await monitor.fetchval("SELECT clock_timestamp()")
        await conn.execute("UPDATE campaigns SET status = 'queued' WHERE id = ANY($1::bigint[])", ids)
    polls = 0
    rss: list[tuple[int, float]] = []
    first_all_started = None
    while True:
        row = await monitor.fetchrow(
            "SELECT count(*) FILTER (WHERE status = 'sent') AS sent, "
            "count(*) FILTER (WHERE status = 'queued') AS queued, coalesce(sum(sent_count), 0) AS messages "
            "FROM campaigns WHERE id = ANY($1::bigint[])", ids)
        polls += 1
        rss.append((int(row["messages"]), rss_mb()))
        if first_all_started is None and row["queued"] == 0:
            first_all_started = time.perf_counter() - started
        if row["sent"] == len(ids) or time.perf_counter() - started > args.timeout:
            break
        await asyncio.sleep(0.5)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_before
    ticks = list(TICKS)
    stop.set()
    await task
    await asyncio.sleep(1.1)
    xacts = await transactions(monitor) - xact_before - polls - 3
    starts = await monitor.fetchrow("SELECT max(started_at) AS last, count(DISTINCT started_at) AS batches, "
                                    "count(*) FILTER (WHERE status = 'sent') AS sent FROM campaigns "
                                    "WHERE id = ANY($1::bigint[])", ids)
    await monitor.close()
    await conn.close()
    stats = await fake.stats()
    times = sorted(m["received_at"] for m in (await _messages(fake)))
    sent = stats["accepted"]
    span = (times[-1] - times[0]) if len(times) > 1 else 0.0
    start_span = (starts["last"] - queued_at).total_seconds() if starts["last"] else 0.0
    tenth = max(1, len(rss) // 10)
    result = {
        "workload": name, "campaigns": len(ids), "recipients": total, "campaigns_sent": starts["sent"],
        "accepted_by_ses": sent, "unique_recipients": stats["unique_recipients"], "wall_seconds": round(wall, 1),
        "aggregate_rate": round((sent - 1) / span, 1) if span else None,
        "aggregate_over_cap": round((sent - 1) / span / args.rate, 3) if span else None,
        "max_in_any_1s_window": stats["max_in_any_window"], "windows_over_cap": _windows_over(times, args.rate),
        "throttled_by_ses": stats["throttled"],
        "db_transactions_per_1000_sends": round(xacts / sent * 1000, 1) if sent else None,
        "daemon_cpu_seconds_per_1000_sends": round(cpu / sent * 1000, 3) if sent else None,
        # from the queueing (or the daemon's start) to the last start's transaction, by the database's clock
        "campaigns_started_per_second": round(len(ids) / start_span, 1) if start_span > 0 else None,
        "start_transactions": starts["batches"],
        "all_started_within_seconds": round(first_all_started, 2) if first_all_started is not None else None,
        "tick_ms": {"median": round(statistics.median(ticks) * 1000, 2), "p90": round(
            sorted(ticks)[int(len(ticks) * 0.9)] * 1000, 2), "max": round(max(ticks) * 1000, 2)} if ticks else None,
        "rss_mb_first_tenth": round(statistics.mean(r for _, r in rss[:tenth]), 1),
        "rss_mb_last_tenth": round(statistics.mean(r for _, r in rss[-tenth:]), 1),
    }
    print(f"# {name}: {result}", flush=True)
    return result


async def _messages(fake: Any) -> list[dict[str, Any]]:
    import aiohttp

    async with aiohttp.ClientSession() as http, http.get(f"{fake.url}/_fake/messages") as r:
        return list((await r.json())["messages"])


def _windows_over(times: list[float], cap: float) -> int:
    """One-second windows (starting at each arrival) holding more than the cap."""
    over, end = 0, 0
    for start, t in enumerate(times):
        while end < len(times) and times[end] - t < 1.0:
            end += 1
        over += (end - start) > cap
    return over


async def latency(dsn: str, fake: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Queue-to-SES of a 1-recipient campaign: on an idle daemon, then behind a big campaign at the cap."""
    await fresh_schema(dsn)
    await fake.reset()
    conn = await connect(dsn)
    settings = Settings(database_url=dsn, endpoint_url=fake.url, from_email="news@bench.example.com", http_port=0)
    [big], _ = await seed(conn, 1, args.big, rules=True, status="draft")
    singles, _ = await seed(conn, args.latency_runs * 2, 1, status="draft")
    # the big campaign targets only its own contacts, so no single's address is also one of its own
    await conn.execute("UPDATE contacts SET country = 'CA' WHERE id IN (SELECT contact_id FROM campaign_recipients "
                       "WHERE campaign_id = ANY($1::bigint[]))", singles)
    await conn.execute("UPDATE campaigns SET target_rules = $2 WHERE id = $1", big,
                       {"field": "country", "op": "eq", "value": "US"})
    stop = asyncio.Event()
    task = asyncio.create_task(Daemon(settings, tune_gc=True).run(stop))
    await asyncio.sleep(2.0)
    idle = [await _queue_to_ses(conn, fake, cid) for cid in singles[:args.latency_runs]]
    await conn.execute("UPDATE campaigns SET status = 'queued' WHERE id = $1", big)
    while (await fake.stats())["accepted"] < len(idle) + args.rate * 2:  # the big one at the cap
        await asyncio.sleep(0.2)
    behind = [await _queue_to_ses(conn, fake, cid) for cid in singles[args.latency_runs:]]
    stop.set()
    await task
    await conn.close()
    result = {"idle_ms": [round(x * 1000) for x in idle], "behind_big_ms": [round(x * 1000) for x in behind],
              "idle_median_ms": round(statistics.median(idle) * 1000),
              "behind_big_median_ms": round(statistics.median(behind) * 1000),
              "behind_big_max_ms": round(max(behind) * 1000)}
    print(f"# latency: {result}", flush=True)
    return result


async def _queue_to_ses(conn: asyncpg.Connection, fake: Any, campaign: int) -> float:
    email = await conn.fetchval("SELECT email FROM campaign_recipients WHERE campaign_id = $1", campaign)
    await conn.execute("UPDATE campaigns SET status = 'queued' WHERE id = $1", campaign)
    queued = time.monotonic()
    while True:
        found = [m for m in await _messages(fake) if m["to"] and m["to"][0] == email]
        if found:
            return float(found[0]["received_at"]) - queued  # the fake's clock: the poll's pace does not count
        await asyncio.sleep(0.05)


async def main(args: argparse.Namespace) -> None:
    instrument_ticks()
    n_small, m_small = (int(x) for x in args.small.split("x"))
    results: list[dict[str, Any]] = []
    with postgres() as dsn:
        async with fake_ses_process(rate=args.rate, latency=args.latency, enforce=True, lean=True) as fake:
            results.append(await workload(dsn, fake, args, f"1x{args.big} (baseline)", 1, args.big, rules=True))
            results.append(await workload(dsn, fake, args, f"{n_small}x{m_small}", n_small, m_small))
            results.append(await workload(dsn, fake, args, f"{args.singles}x1", args.singles, 1))
            if args.queued:
                results.append(await workload(dsn, fake, args, f"{args.queued} queued x1", args.queued, 1,
                                              before_start=True))
            lat = await latency(dsn, fake, args)
    base = results[0]
    for r in results[1:]:
        if base["db_transactions_per_1000_sends"] and r["db_transactions_per_1000_sends"]:
            r["transactions_vs_baseline"] = round(r["db_transactions_per_1000_sends"]
                                                  / base["db_transactions_per_1000_sends"], 2)
        if base["daemon_cpu_seconds_per_1000_sends"] and r["daemon_cpu_seconds_per_1000_sends"]:
            r["cpu_vs_baseline"] = round(r["daemon_cpu_seconds_per_1000_sends"]
                                         / base["daemon_cpu_seconds_per_1000_sends"], 2)
    report("campaigns", {
        "benchmark": "campaigns",
        "conditions": conditions(fake_ses_rate=args.rate, fake_ses_latency_s=args.latency, instances=1,
                                 poll_interval="1 s (default)", rows=[f"{r['workload']}: {r['recipients']}"
                                                                     for r in results]),
        "workloads": results, "latency": lat,
    })


def cli(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=200.0, help="the fake SES's strict per-second quota")
    p.add_argument("--latency", type=float, default=0.02, help="the fake SES's latency, seconds")
    p.add_argument("--big", type=int, default=6000, help="recipients of the baseline (and the big) campaign")
    p.add_argument("--small", default="300x20", help="CAMPAIGNSxRECIPIENTS of the many-campaign workload")
    p.add_argument("--singles", type=int, default=1000, help="1-recipient campaigns queued at once")
    p.add_argument("--queued", type=int, default=10000, help="1-recipient campaigns queued before start (0: skip)")
    p.add_argument("--latency-runs", type=int, default=5)
    p.add_argument("--timeout", type=float, default=300.0, help="give up a workload after this many seconds")
    args = p.parse_args(argv)
    use_uvloop()
    asyncio.run(main(args))


if __name__ == "__main__":
    cli()
