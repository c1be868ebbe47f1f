"""Materialisation: resolve target_rules over N contacts into campaign_recipients, one statement.

    python -m bench.materialise [--contacts 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from bench.common import conditions, fresh_schema, postgres, report, seed_campaign, use_uvloop
from sender.campaigns import materialise_step, start_queued
from sender.config import Settings
from sender.db import connect, create_pool

RULES = {
    "everyone": {},
    "segment": {"all": [{"country": ["US", "CA"]}, {"field": "attributes.n", "op": "gte", "value": 1000},
                        {"not": {"field": "email", "op": "ends_with", "value": "@blocked.example"}}]},
}


async def main(args: argparse.Namespace) -> None:
    results: dict[str, Any] = {"benchmark": "materialise", "conditions": conditions(contacts=args.contacts),
                               "rules": {}}
    with postgres() as dsn:
        await fresh_schema(dsn)
        conn = await connect(dsn)
        started = time.perf_counter()
        campaign = await seed_campaign(conn, args.contacts, status="draft")
        results["seed_seconds"] = round(time.perf_counter() - started, 2)
        await conn.execute("VACUUM ANALYZE contacts")
        pool = await create_pool(dsn)
        settings = Settings(from_email="news@bench.example.com")
        for name, rules in RULES.items():
            await conn.execute("DELETE FROM campaign_recipients")
            await conn.execute("UPDATE campaigns SET status = 'queued', target_rules = $2 WHERE id = $1",
                               campaign, rules)
            started = time.perf_counter()
            [result] = await start_queued(pool, settings)
            assert result.started, result
            while await materialise_step(pool, settings, chunk=settings.materialise_chunk) is not None:
                pass
            seconds = time.perf_counter() - started
            total = int(await conn.fetchval("SELECT total_count FROM campaigns WHERE id = $1", campaign))
            results["rules"][name] = {"rules": rules, "recipients": total, "seconds": round(seconds, 3),
                                      "rows_per_second": round(total / seconds)}
            print(f"# {name}: {total} recipients from {args.contacts} contacts in {seconds:.2f} s", flush=True)
        await pool.close()
        await conn.close()
    report("materialise", results)


def cli(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--contacts", type=int, default=1_000_000)
    args = p.parse_args(argv)
    use_uvloop()
    asyncio.run(main(args))


if __name__ == "__main__":
    cli()
