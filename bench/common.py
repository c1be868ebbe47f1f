"""Shared benchmark plumbing: embedded PostgreSQL, a fake SES in its own process, conditions, results."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from sender.db import connect
from sender.db.migrate import migrate

RESULTS = Path(__file__).parent / "results"
os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")


CLIENT_CPU, SERVER_CPU = {0}, {1}


def pinning() -> bool:
    """Pin the client to CPU 0 and its servers (fake SES, PostgreSQL) to CPU 1 when there are two.

    Without it the daemon's run shares two cores among three busy processes (client, fake SES,
    PostgreSQL) while the bare loop shares them between two: the comparison would measure CPU
    contention, not the client. BENCH_NO_PIN=1 turns it off.
    """
    return (os.cpu_count() or 1) >= 2 and not os.environ.get("BENCH_NO_PIN") and hasattr(os, "sched_setaffinity")


def pin_client() -> None:
    if pinning():
        os.sched_setaffinity(0, CLIENT_CPU)


def pin_servers(pgdata: str | None = None, pid: int | None = None) -> None:
    """Move a server process (or every process of the PostgreSQL at pgdata) to the server CPU."""
    if not pinning():
        return
    import psutil

    pids = [pid] if pid else [p.pid for p in psutil.process_iter(["cmdline"])
                                if pgdata and any(pgdata in part for part in (p.info["cmdline"] or []))]
    for each in pids:
        with contextlib.suppress(OSError, psutil.Error):
            os.sched_setaffinity(each, SERVER_CPU)


def conditions(**extra: Any) -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu_pinning": "client on CPU 0, fake SES and PostgreSQL on CPU 1" if pinning() else "none",
        "versions": {p: version(p) for p in ("aioboto3", "botocore", "aiobotocore", "asyncpg", "aiohttp", "uvloop")},
        **extra,
    }


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def save(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    return path


def report(name: str, result: dict[str, Any]) -> None:
    path = save(name, result)
    print(json.dumps(result, indent=2, default=str))
    print(f"# saved {path}", file=sys.stderr)


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """DATABASE_URL when set (a scratch database!), else a throwaway embedded PostgreSQL."""
    if os.environ.get("BENCH_DATABASE_URL"):
        yield os.environ["BENCH_DATABASE_URL"]
        return
    from sender.demo.embedded import start_embedded

    data = Path(tempfile.mkdtemp(prefix="sender-bench-")) / "data"
    server, dsn = start_embedded(data)
    pin_servers(pgdata=str(data))  # the postmaster: backends it forks later inherit the CPU
    try:
        yield dsn
    finally:
        server._cleanup()


async def fresh_schema(dsn: str) -> None:
    conn = await connect(dsn)
    try:
        await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        await migrate(conn)
    finally:
        await conn.close()


@dataclass
class FakeSESProcess:
    url: str
    proc: subprocess.Popen[str]

    async def stats(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as http, http.get(f"{self.url}/_fake/stats") as r:
            return dict(await r.json())

    async def reset(self) -> None:
        async with aiohttp.ClientSession() as http, http.post(f"{self.url}/_fake/reset") as r:
            await r.read()

    async def configure(self, **spec: Any) -> None:
        async with aiohttp.ClientSession() as http, http.post(f"{self.url}/_fake/faults", json=spec) as r:
            await r.read()


@contextlib.asynccontextmanager
async def fake_ses_process(*, rate: float, latency: float, jitter: float = 0.0, enforce: bool = True,
                           lean: bool = False) -> AsyncIterator[FakeSESProcess]:
    """The fake SES in its own process, so the client's CPU figures are the client's alone."""
    args = [sys.executable, "-m", "sender.demo.fakeses", "--port", "0", "--rate", str(rate), "--latency", str(latency),
            "--jitter", str(jitter), "--daily", "-1"]
    args += ["--no-enforce"] if not enforce else []
    args += ["--lean"] if lean else []
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    pin_servers(pid=proc.pid)
    try:
        assert proc.stdout is not None
        line = await asyncio.to_thread(proc.stdout.readline)
        yield FakeSESProcess(url=json.loads(line)["fake_ses"], proc=proc)
    finally:
        proc.terminate()
        proc.wait(10)


async def seed_campaign(conn: asyncpg.Connection, recipients: int, *, rate: float | None = None,
                        status: str = "queued", html: str | None = None) -> int:
    """`recipients` contacts and one campaign to all of them, built set-based in SQL."""
    await conn.execute(
        "INSERT INTO contacts (email, first_name, last_name, country, attributes) "
        "SELECT 'user' || g || '@bench.example.net', 'First' || g, 'Last', "
        "(ARRAY['US','CA','GB','DE'])[1 + g % 4], jsonb_build_object('n', g) "
        "FROM generate_series(1, $1) g", recipients)
    template = await conn.fetchval(
        "INSERT INTO templates (name, subject, content_html) VALUES ('bench', 'Hello {{ first_name }}', $1) "
        "RETURNING id", html or "<p>Hi {{ first_name }} from {{ country }}, n={{ attributes.n }}</p>")
    return int(await conn.fetchval(
        "INSERT INTO campaigns (name, template_id, target_rules, rate_per_sec, status) "
        "VALUES ('bench', $1, '{}', $2, $3) RETURNING id", template, rate, status))


def use_uvloop() -> None:
    """uvloop for the benchmark process (as `sender run` uses), and the client pinned to its core."""
    import uvloop

    pin_client()
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def write_counters(conn: asyncpg.Connection) -> dict[str, int]:
    """WAL position and the recipient table's row-version counters, for per-message write costs.

    Statistics reach the shared counters at most about once a second: wait that long after the
    work before reading (the callers sleep 1.5 s).
    """
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    row = await conn.fetchrow(
        "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn AS wal, t.n_tup_upd AS upd, t.n_tup_hot_upd AS hot, "
        "t.n_tup_ins AS ins, d.deadlocks AS deadlocks "
        "FROM pg_stat_user_tables t, pg_stat_database d "
        "WHERE t.relname = 'campaign_recipients' AND d.datname = current_database()")
    return {key: int(row[key]) for key in ("wal", "upd", "hot", "ins", "deadlocks")}


def write_costs(before: dict[str, int], after: dict[str, int], messages: int) -> dict[str, float | int]:
    """Row versions and WAL per message between two write_counters() readings."""
    return {
        "row_updates_per_message": round((after["upd"] - before["upd"]) / messages, 3),
        "hot_updates_per_message": round((after["hot"] - before["hot"]) / messages, 3),
        "wal_bytes_per_message": round((after["wal"] - before["wal"]) / messages),
        "deadlocks": after["deadlocks"] - before["deadlocks"],
    }
