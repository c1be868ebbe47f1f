"""Throughput, uncapped: the full daemon vs a bare aioboto3 SendEmail loop vs the old synchronous MVP loop.

    python -m bench.throughput [--messages N] [--concurrency C] [--latency 0 0.02] [--profile]

The fake SES runs in its own process with no rate enforcement; PostgreSQL is embedded. Figures:
messages/s, client CPU µs per message (this process only), and the daemon/bare ratio (target ≥ 0.85).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import pstats
import time
from collections import defaultdict
from typing import Any

import boto3
import botocore.config

from bench.common import conditions, fake_ses_process, fresh_schema, postgres, report, seed_campaign, use_uvloop
from sender.config import Settings
from sender.daemon import Daemon
from sender.db import connect
from sender.render import CampaignTemplates, Contact
from sender.ses import OutgoingEmail, open_ses
from sender.tuning import tune_gc_for_throughput


async def bare_loop(url: str, messages: int, concurrency: int) -> dict[str, float]:
    """The floor: one reused aioboto3 client, prebuilt requests, `concurrency` workers, nothing else."""
    emails = [OutgoingEmail(to=f"user{i}@bench.example.net", from_email="news@bench.example.com",
                            subject=f"Hello First{i}", html=f"<p>Hi First{i}</p>", text=f"Hi First{i}")
              for i in range(messages)]
    async with open_ses(Settings(endpoint_url=url), pool_size=concurrency) as ses:
        await ses.send(emails[0])  # warm the connection pool and botocore's caches, as the daemon's first send does
        tune_gc_for_throughput()  # the same GC treatment the daemon gives itself after start-up
        queue = iter(emails[1:])

        async def worker() -> None:
            for email in queue:
                await ses.send(email)

        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    sent = messages - 1
    return {"messages": sent, "seconds": wall, "rate": sent / wall, "cpu_us_per_message": cpu / sent * 1e6}


async def mvp_loop(url: str, dsn: str, messages: int, rate_per_sec: float) -> dict[str, float]:
    """The replaced MVP: for each row, render, send_email (sync boto3), UPDATE to sent, sleep 1/rate."""
    conn = await connect(dsn)
    campaign = await seed_campaign(conn, messages, status="draft")
    await conn.execute("INSERT INTO campaign_recipients (campaign_id, contact_id, email) "
                       "SELECT $1, id, email FROM contacts", campaign)
    rows = await conn.fetch("SELECT r.id, r.email, c.first_name, c.country, c.attributes FROM campaign_recipients r "
                            "JOIN contacts c ON c.id = r.contact_id ORDER BY r.id")
    client = boto3.client("sesv2", region_name="us-east-1", endpoint_url=url,
                          config=botocore.config.Config(retries={"mode": "standard", "total_max_attempts": 1}))
    templates = CampaignTemplates("Hello {{ first_name }}", "<p>Hi {{ first_name }} from {{ country }}</p>", None,
                                  max_bytes=1 << 20)
    cpu, wall = time.process_time(), time.perf_counter()
    for r in rows:
        msg = templates.render(Contact(email=r["email"], first_name=r["first_name"], country=r["country"],
                                       attributes=r["attributes"]), unsubscribe_url="")
        response = client.send_email(FromEmailAddress="news@bench.example.com",
                                     Destination={"ToAddresses": [r["email"]]},
                                     Content={"Simple": {"Subject": {"Data": msg.subject},
                                                         "Body": {"Html": {"Data": msg.html},
                                                                  "Text": {"Data": msg.text}}}})
        await conn.execute("UPDATE campaign_recipients SET status = 'sent', message_id = $2, sent_at = now() "
                           "WHERE id = $1", r["id"], response["MessageId"])
        time.sleep(1 / rate_per_sec)  # the MVP blocked its event loop exactly like this
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    await conn.close()
    n = len(rows)
    return {"messages": n, "seconds": wall, "rate": n / wall, "cpu_us_per_message": cpu / n * 1e6}


async def daemon_run(url: str, dsn: str, messages: int, concurrency: int,
                     profile: cProfile.Profile | None = None) -> dict[str, Any]:
    """The whole product: materialise, claim, render, send, write back, complete."""
    conn = await connect(dsn)
    campaign = await seed_campaign(conn, messages)
    settings = Settings(database_url=dsn, endpoint_url=url, from_email="news@bench.example.com",
                        max_rate=1_000_000, concurrency=concurrency, http_port=0, poll_interval=0.2)
    stop = asyncio.Event()
    daemon = Daemon(settings, tune_gc=True)
    gc.collect()
    cpu = time.process_time()
    if profile:
        profile.enable()
    task = asyncio.create_task(daemon.run(stop))
    while await conn.fetchval("SELECT status FROM campaigns WHERE id = $1", campaign) != "sent":
        await asyncio.sleep(0.2)
    if profile:
        profile.disable()
    cpu = time.process_time() - cpu
    stop.set()
    await task
    first, last, sent = await conn.fetchrow(
        "SELECT min(sent_at), max(sent_at), count(*) FROM campaign_recipients WHERE status = 'sent'")
    await conn.close()
    span = (last - first).total_seconds()
    return {"messages": sent, "seconds": span, "rate": (sent - 1) / span, "cpu_us_per_message": cpu / sent * 1e6,
            "flushes": daemon._ctx.buffer.flushes if daemon._ctx else None}


def profile_summary(profile: cProfile.Profile, messages: int) -> dict[str, Any]:
    """Where the daemon's CPU goes, by package (self time), and the top functions."""
    stats = pstats.Stats(profile)
    by_package: dict[str, float] = defaultdict(float)
    total = 0.0
    for (filename, _, _), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        total += tottime
        for package in ("aiobotocore", "botocore", "aiohttp", "asyncpg", "jinja2", "sender", "asyncio", "uvloop",
                        "structlog", "prometheus_client", "json", "ssl", "urllib3", "http"):
            if f"/{package}/" in filename or filename.endswith(f"/{package}.py"):
                by_package[package] += tottime
                break
        else:
            by_package["other"] += tottime
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(12)
    top = [line.strip() for line in out.getvalue().splitlines() if line.strip()[:1].isdigit()][:12]
    return {"us_per_message_by_package": {k: round(v / messages * 1e6, 1)
                                          for k, v in sorted(by_package.items(), key=lambda kv: -kv[1])},
            "profiled_seconds": round(total, 2), "top_functions_by_self_time": top}


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median rate (figures stay consistent with one another), plus all rates."""
    ordered = sorted(runs, key=lambda r: r["rate"])
    return {**ordered[len(ordered) // 2], "all_rates": [round(r["rate"], 1) for r in runs]}


async def main(args: argparse.Namespace) -> None:
    results: dict[str, Any] = {"benchmark": "throughput", "conditions": conditions(
        messages=args.messages, concurrency=args.concurrency, repeats=args.repeats,
        fake_ses="separate process, no rate enforcement", loop="uvloop",
        gc="tune_gc_for_throughput() after start-up in both, as `sender run` does")}
    with postgres() as dsn:
        for latency in args.latency:
            async with fake_ses_process(rate=1e9, latency=latency, enforce=False, lean=True) as fake:
                bares, daemons = [], []
                for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits both alike
                    await fresh_schema(dsn)
                    bares.append(await bare_loop(fake.url, args.messages, args.concurrency))
                    await fresh_schema(dsn)
                    daemons.append(await daemon_run(fake.url, dsn, args.messages, args.concurrency))
                bare, daemon = median_of(bares), median_of(daemons)
                await fresh_schema(dsn)
                mvp = await mvp_loop(fake.url, dsn, args.mvp_messages, rate_per_sec=1000)
                row = {"bare_aioboto3": bare, "daemon": daemon, "old_sync_loop": mvp,
                       "daemon_vs_bare": round(daemon["rate"] / bare["rate"], 3),
                       "daemon_vs_old_loop": round(daemon["rate"] / mvp["rate"], 1)}
                if args.profile:
                    await fresh_schema(dsn)
                    prof = cProfile.Profile()
                    await daemon_run(fake.url, dsn, args.messages, args.concurrency, profile=prof)
                    row["daemon_profile"] = profile_summary(prof, args.messages)
                results[f"latency_{int(latency * 1000)}ms"] = row
                print(f"# latency {latency * 1000:.0f} ms: daemon {daemon['rate']:.0f}/s "
                      f"({daemon['cpu_us_per_message']:.0f} us/msg), bare {bare['rate']:.0f}/s "
                      f"({bare['cpu_us_per_message']:.0f} us/msg), ratio {row['daemon_vs_bare']}; "
                      f"old loop {mvp['rate']:.0f}/s", flush=True)
    report("throughput", results)


def cli(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=3000)
    p.add_argument("--mvp-messages", type=int, default=300)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3, help="bare/daemon pairs per latency; medians reported")
    p.add_argument("--latency", type=float, nargs="+", default=[0.0, 0.02])
    p.add_argument("--profile", action="store_true", help="also profile the daemon and summarise where CPU goes")
    args = p.parse_args(argv)
    use_uvloop()
    asyncio.run(main(args))


if __name__ == "__main__":
    cli()
