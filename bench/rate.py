"""Rate precision: caps of 14, 100 and 500 msg/s against a fake SES that enforces them.

    python -m bench.rate [--caps 14 100 500] [--seconds 30]

Targets: achieved/cap >= 0.98, zero one-second windows above the cap, zero throttling responses,
all as recorded by the fake SES (its own process, sliding-window quota, 20 ms ± 5 ms latency).
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from bench.common import conditions, fake_ses_process, fresh_schema, postgres, report, seed_campaign, use_uvloop
from sender.config import Settings
from sender.daemon import Daemon
from sender.db import connect


async def one_cap(dsn: str, cap: float, seconds: float, latency: float) -> dict[str, Any]:
    messages = int(cap * seconds)
    async with fake_ses_process(rate=cap, latency=latency, jitter=latency / 4, enforce=True, lean=True) as fake:
        await fresh_schema(dsn)
        conn = await connect(dsn)
        campaign = await seed_campaign(conn, messages)
        settings = Settings(database_url=dsn, endpoint_url=fake.url, from_email="news@bench.example.com",
                            http_port=0, poll_interval=0.5)  # the cap comes from GetAccount, as in production
        stop = asyncio.Event()
        task = asyncio.create_task(Daemon(settings, tune_gc=True).run(stop))
        while await conn.fetchval("SELECT status FROM campaigns WHERE id = $1", campaign) != "sent":
            await asyncio.sleep(0.25)
        stop.set()
        await task
        await conn.close()
        stats = await fake.stats()
    span = stats["last_at"] - stats["first_at"]
    achieved = (stats["accepted"] - 1) / span
    return {"cap": cap, "messages": messages, "accepted": stats["accepted"], "seconds": round(span, 2),
            "achieved_rate": round(achieved, 2), "achieved_over_cap": round(achieved / cap, 4),
            "max_in_any_1s_window": stats["max_in_any_window"], "windows_over_cap": int(
                stats["max_in_any_window"] > cap), "throttled": stats["throttled"]}


async def main(args: argparse.Namespace) -> None:
    results: dict[str, Any] = {"benchmark": "rate", "conditions": conditions(
        seconds_per_cap=args.seconds, ses_latency=f"{args.latency * 1000:.0f} ms ± {args.latency * 250:.0f} ms",
        fake_ses="separate process, enforces MaxSendRate over every sliding 1 s window"), "caps": []}
    with postgres() as dsn:
        for cap in args.caps:
            row = await one_cap(dsn, cap, args.seconds, args.latency)
            results["caps"].append(row)
            print(f"# cap {cap:g}/s: achieved {row['achieved_rate']}/s ({row['achieved_over_cap']:.3f}), "
                  f"max window {row['max_in_any_1s_window']}, throttled {row['throttled']}", flush=True)
    report("rate", results)


def cli(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--caps", type=float, nargs="+", default=[14, 100, 500])
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--latency", type=float, default=0.02)
    args = p.parse_args(argv)
    use_uvloop()
    asyncio.run(main(args))


if __name__ == "__main__":
    cli()
