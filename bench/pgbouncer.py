"""PgBouncer in transaction mode against direct PostgreSQL, in one run, uncapped; and the server
connections one instance holds idle, with one campaign and with many.

    python -m bench.pgbouncer [--messages 10000]

Throughput: one in-process daemon, fake SES at 0 ms latency without a rate limit, the same campaign
sent direct and through PgBouncer 1.18 (Debian) in transaction mode (statement cache off), in
alternating order. Database cost per 1,000 messages: transactions (pg_stat_database) and round
trips (ReadyForQuery messages counted by a byte-forwarding proxy in a second, smaller pass, so the
proxy does not weigh on the throughput figures). Connections: pg_stat_activity rows named
`sender/<instance>`, sampled every 50 ms, with the default budget (pool 4, min 1, + LISTEN).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import struct
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg

from bench.common import (
    conditions,
    fake_ses_process,
    fresh_schema,
    pin_servers,
    postgres,
    report,
    seed_campaign,
    use_uvloop,
)
from sender.config import Settings
from sender.daemon import Daemon
from sender.db import connect
from tests.pgbouncer import free_port, pgbouncer


async def transactions(conn: asyncpg.Connection) -> int:
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    return int(await conn.fetchval(
        "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"))


class RoundTripProxy:
    """Forwards bytes to the server and counts ReadyForQuery ('Z') messages: one per round trip."""

    def __init__(self, target: tuple[str, int] | str) -> None:
        self.target = target
        self.round_trips = 0

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if isinstance(self.target, str):
            return await asyncio.open_unix_connection(self.target)
        return await asyncio.open_connection(*self.target)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await self._open()

        async def upstream() -> None:
            while data := await reader.read(65536):
                up_writer.write(data)
                await up_writer.drain()
            up_writer.close()

        async def downstream() -> None:
            buffer = b""
            while data := await up_reader.read(65536):
                writer.write(data)
                buffer += data
                while len(buffer) >= 5:
                    kind, length = buffer[:1], struct.unpack("!I", buffer[1:5])[0]
                    if len(buffer) < 1 + length:
                        break
                    self.round_trips += kind == b"Z"
                    buffer = buffer[1 + length:]
                await writer.drain()
            writer.close()

        with contextlib.suppress(ConnectionError):
            await asyncio.gather(upstream(), downstream())

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[int]:
        port = free_port()
        server = await asyncio.start_server(self._client, "127.0.0.1", port)
        try:
            yield port
        finally:
            server.close()


def _unix_socket(dsn: str) -> str:
    parts = urlsplit(dsn)
    query = parse_qs(parts.query)
    return f"{query['host'][0]}/.s.PGSQL.{query.get('port', ['5432'])[0]}"


async def send_campaign(direct: str, dsn: str, pooler: str, fake_url: str, n: int) -> dict[str, Any]:
    """Seed n recipients, run one daemon through `dsn` until the campaign is sent; figures."""
    await fresh_schema(direct)
    conn = await connect(direct)
    try:
        campaign = await seed_campaign(conn, n)
        await asyncio.sleep(1.1)  # pg stats are flushed at most once a second
        before = await transactions(conn)
        settings = Settings(database_url=dsn, db_pooler=pooler, endpoint_url=fake_url,
                            from_email="news@bench.example.com", max_rate=1_000_000, concurrency=64, http_port=0)
        stop = asyncio.Event()
        task = asyncio.create_task(Daemon(settings, tune_gc=False).run(stop))
        polls = 0
        while await conn.fetchval("SELECT status FROM campaigns WHERE id = $1", campaign) != "sent":
            polls += 1
            await asyncio.sleep(0.25)
        stop.set()
        await task
        await asyncio.sleep(1.1)
        xacts = await transactions(conn) - before - polls - 3  # less this monitor's own
        first, last, sent = await conn.fetchrow(
            "SELECT min(sent_at), max(sent_at), count(*) FROM campaign_recipients "
            "WHERE campaign_id = $1 AND status = 'sent'", campaign)
    finally:
        await conn.close()
    span = (last - first).total_seconds()
    return {"sent": sent, "rate": round((sent - 1) / span, 1), "transactions_per_1000": round(xacts / n * 1000, 2)}


async def connections_held(direct: str, fake_url: str) -> dict[str, Any]:
    """Server connections of one instance (default budget): idle, one campaign, twelve at once."""
    await fresh_schema(direct)
    conn = await connect(direct)
    settings = Settings(database_url=direct, endpoint_url=fake_url, from_email="news@bench.example.com",
                        max_rate=2000, concurrency=64, http_port=0, instance_id="bench-conns", db_idle_seconds=2.0)
    stop = asyncio.Event()
    task = asyncio.create_task(Daemon(settings).run(stop))
    count_sql = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'sender/bench-conns'"

    async def peak(seconds: float | None = None, until_sent: list[int] | None = None) -> int:
        top, deadline = 0, time.monotonic() + (seconds or 3600)
        while time.monotonic() < deadline:
            top = max(top, int(await conn.fetchval(count_sql)))
            if until_sent is not None and await conn.fetchval(
                    "SELECT count(*) FROM campaigns WHERE id = ANY($1) AND status <> 'sent'", until_sent) == 0:
                break
            await asyncio.sleep(0.05)
        return top

    try:
        await asyncio.sleep(2.0)
        idle = await peak(3.0)
        one = await peak(until_sent=[await seed_campaign(conn, 5000)])
        rules = {"field": "attributes.n", "op": "lte", "value": 500}  # 500 recipients each
        many_ids = [r["id"] for r in await conn.fetch(
            "INSERT INTO campaigns (name, template_id, target_rules, status) "
            "SELECT 'many', template_id, $1, 'queued' FROM campaigns, generate_series(1, 12) "
            "WHERE name = 'bench' RETURNING id", rules)]
        many = await peak(until_sent=many_ids)
        await asyncio.sleep(4.0)  # SENDER_DB_IDLE_SECONDS=2: the pool shrinks back to its floor
        after_idle = await peak(1.0)
    finally:
        stop.set()
        await task
        await conn.close()
    return {"idle": idle, "one_campaign": one, "twelve_campaigns": many, "idle_again_after_idle_close": after_idle,
            "budget": "pool max 4, min 1, + 1 LISTEN; idle connections above the floor closed after 2 s here"}


async def main(args: argparse.Namespace) -> None:
    n = args.messages
    with postgres() as direct:
        async with fake_ses_process(rate=1e9, latency=0.0, enforce=False, lean=True) as fake, \
                pgbouncer(direct, mode="transaction") as bounced:
            pin_servers(pgdata="sender-pgbouncer-")
            runs: dict[str, list[dict[str, Any]]] = {"direct": [], "transaction": []}
            for _ in range(args.repeats):
                for mode, dsn in (("direct", direct), ("transaction", bounced)):
                    runs[mode].append(await send_campaign(direct, dsn, mode, fake.url, n))
                    await fake.reset()
                runs = {k: v for k, v in reversed(runs.items())}  # alternate the order
            trips: dict[str, float] = {}
            small = max(2000, n // 5)
            bounced_port = urlsplit(bounced).port
            assert bounced_port is not None
            for mode, target in (("direct", _unix_socket(direct)), ("transaction", ("127.0.0.1", bounced_port))):
                proxy = RoundTripProxy(target)
                async with proxy.serving() as port:
                    user_db = urlsplit(bounced)
                    dsn = f"postgresql://{user_db.username}@127.0.0.1:{port}{user_db.path}?sslmode=disable"
                    if mode == "direct":
                        dsn = f"postgresql://postgres@127.0.0.1:{port}{urlsplit(direct).path}?sslmode=disable"
                    await send_campaign(direct, dsn, mode, fake.url, small)
                    trips[mode] = round(proxy.round_trips / small * 1000, 1)
                await fake.reset()
            held = await connections_held(direct, fake.url)
    rate = {m: statistics.median(r["rate"] for r in v) for m, v in runs.items()}
    result = {
        "benchmark": "pgbouncer",
        "conditions": conditions(messages=n, repeats=args.repeats, ses_latency="0 ms", rate_cap="none",
                                 concurrency=64, pgbouncer="1.18 transaction mode, default_pool_size 20",
                                 round_trip_pass_messages=small),
        "runs": runs,
        "median_rate": rate,
        "transaction_over_direct": round(rate["transaction"] / rate["direct"], 3),
        "transactions_per_1000": {m: statistics.median(r["transactions_per_1000"] for r in v)
                                  for m, v in runs.items()},
        "round_trips_per_1000": trips,
        "connections_per_instance": held,
    }
    print(f"# direct {rate['direct']}/s, PgBouncer transaction {rate['transaction']}/s "
          f"({result['transaction_over_direct']}x); round trips per 1,000: {trips}; connections: {held}", flush=True)
    report("pgbouncer", result)


def cli(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=10_000)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    use_uvloop()
    asyncio.run(main(args))


if __name__ == "__main__":
    cli()
