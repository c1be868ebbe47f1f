"""Connection budget, pooler options, wake-ups and database health: units, then the daemon in-process."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import asyncpg
import pytest

from sender.config import ConfigError, Settings, load_settings
from sender.daemon import Daemon
from sender.db.health import DatabaseHealth, describe, redact
from sender.db.migrate import available_migrations, migrate
from sender.db.pool import ConnectionOptions, connect, connection_budget, listen_dsn, options_for
from sender.db.wakeups import Wakeups
from tests.helpers import (
    add_campaign,
    add_contacts,
    add_template,
    recipient_counts,
    running_daemon,
    wait_for,
    with_database,
)
from tests.pgbouncer import free_port


def test_redact_removes_passwords_of_every_shape() -> None:
    text = "failed for postgresql://app:s3cret@db:5432/x and password=hunter2 host=db, also s3cret alone"
    clean = redact(text, "postgresql://app:s3cret@db:5432/x")
    assert "s3cret" not in clean and "hunter2" not in clean
    assert "postgresql://app:***@db:5432/x" in clean and "password=***" in clean


def test_describe_quotes_the_server_message() -> None:
    exc = asyncpg.TooManyConnectionsError("remaining connection slots are reserved for roles with the "
                                          "SUPERUSER attribute")
    problem = describe(exc)
    assert problem.code == "TooManyConnectionsError" and problem.sqlstate == "53300"
    assert problem.reason.startswith("remaining connection slots are reserved")
    assert describe(TimeoutError()).reason == "timed out talking to the database"


def test_health_turns_unhealthy_only_after_failing_continuously_for_the_limit() -> None:
    now = [100.0]
    health = DatabaseHealth(5.0, clock=lambda: now[0])
    assert not health.unhealthy()  # connecting
    assert health.readiness() == {"check": "database", "code": "Connecting", "reason": "connecting to the database"}
    now[0] += 6  # never connected for 6 s
    health.failed(ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 1)"))
    assert health.unhealthy()
    health.succeeded()
    assert not health.unhealthy() and health.readiness() is None
    health.failed(OSError("gone"))
    now[0] += 4
    health.failed(OSError("still gone"))
    assert not health.unhealthy()  # 4 s of failure: not yet
    now[0] += 2
    assert health.unhealthy()
    reason = health.readiness()
    assert reason is not None and reason["reason"] == "still gone" and reason["failing_seconds"] == 6.0


def test_pool_options_follow_the_pooler_and_keep_the_dsns_application_name() -> None:
    transaction = options_for(Settings(db_pooler="transaction"), "sender/i-1")
    assert transaction.kwargs("postgresql://u@h/db") == {
        "server_settings": {"application_name": "sender/i-1"}, "statement_cache_size": 0}
    assert options_for(Settings(db_pooler="session"), "sender/cli").kwargs("postgresql://u@h/db") == {
        "server_settings": {"application_name": "sender/cli"}}
    assert ConnectionOptions("sender/x").kwargs("postgresql://u@h/db?application_name=billing") == {}


def test_budget_and_listen_target_per_topology() -> None:
    direct = Settings(database_url="postgresql://u@db/x")
    assert listen_dsn(direct) == "postgresql://u@db/x"
    assert connection_budget(direct, heartbeat=1)["max_connections"] == 4 + 1 + 1
    bounced = direct.with_overrides(db_pooler="transaction", database_url="postgresql://u@bouncer/x")
    assert listen_dsn(bounced) is None and connection_budget(bounced, heartbeat=1)["wakeups"] == "poll"
    side = bounced.with_overrides(listen_database_url="postgresql://u@db/x")
    assert listen_dsn(side) == "postgresql://u@db/x" and connection_budget(side, heartbeat=0)["listener"] == 1


def test_poll_only_wakeups_slow_down_when_idle_and_speed_up_with_work() -> None:
    settings = Settings(db_pooler="transaction", database_url="postgresql://u@b/x", poll_interval=0.5,
                        idle_poll_interval=3.0)
    wakeups = Wakeups(settings, asyncio.Event())
    assert not wakeups.listening
    assert [wakeups.next_wait(busy=False) for _ in range(4)] == [1.0, 2.0, 3.0, 3.0]
    assert wakeups.next_wait(busy=True) == 0.5
    assert wakeups.next_wait(busy=False) == 1.0


def test_database_settings_are_validated_by_name() -> None:
    base = {"DATABASE_URL": "postgresql://u:pw@db/x"}
    s = load_settings(base | {"SENDER_DB_POOL_SIZE": "6", "SENDER_DB_POOLER": "Transaction",
                              "SENDER_LISTEN_DATABASE_URL": "postgresql://u:listenpw@db/x"})
    assert (s.db_pool_size, s.db_pool_min, s.db_pooler) == (6, 1, "transaction")
    assert "listenpw" not in repr(s) and "pw@" not in repr(s)
    for env, message in (
        ({"SENDER_DB_POOLER": "pgpool"}, "SENDER_DB_POOLER: expected one of direct, session, transaction"),
        ({"SENDER_DB_POOL_SIZE": "0"}, "SENDER_DB_POOL_SIZE: must be at least 1"),
        ({"SENDER_DB_POOL_SIZE": "2", "SENDER_DB_POOL_MIN": "3"}, "SENDER_DB_POOL_MIN: must not exceed"),
        ({"SENDER_LISTEN_DATABASE_URL": "mysql://x"}, "SENDER_LISTEN_DATABASE_URL: expected a postgresql://"),
        ({"SENDER_IDLE_POLL_INTERVAL": "soon"}, "SENDER_IDLE_POLL_INTERVAL: expected a number"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_settings(base | env)


async def test_concurrent_migrators_apply_each_migration_once(pg_admin_dsn: str) -> None:
    admin = await asyncpg.connect(pg_admin_dsn)
    try:
        await admin.execute("DROP DATABASE IF EXISTS sender_race WITH (FORCE)")
        await admin.execute("CREATE DATABASE sender_race")
        conns = [await connect(with_database(pg_admin_dsn, "sender_race"), statement_cache_size=0)
                 for _ in range(3)]
        try:
            results = await asyncio.gather(*(migrate(c) for c in conns))
            wanted = [version for version, _ in available_migrations()]
            assert sorted(v for r in results for v in r) == wanted, "each migration applied exactly once"
            assert await conns[0].fetchval("SELECT count(*) FROM sender_migrations") == len(wanted)
            # the lock is transaction-scoped: nothing is left held on any session
            assert await conns[0].fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0
        finally:
            for c in conns:
                await c.close()
    finally:
        await admin.execute("DROP DATABASE IF EXISTS sender_race WITH (FORCE)")
        await admin.close()


async def _get(port: int, path: str, token: str | None = None) -> tuple[int, dict[str, object]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}{path}", headers=headers) as r:
        return r.status, json.loads(await r.text())


async def test_without_a_database_the_listener_is_up_and_says_why(settings: Settings) -> None:
    port = free_port()
    dead = settings.with_overrides(database_url=f"postgresql://app:Pa55word@127.0.0.1:{free_port()}/x",
                                   http_port=port, db_unhealthy_seconds=0.5, db_retry_max_seconds=0.2,
                                   admin_token="t0ken")
    async with running_daemon(dead) as daemon:
        await wait_for(lambda: _database_reason(port))
        status, body = await _get(port, "/readyz")
        assert status == 503 and "Pa55word" not in json.dumps(body)
        assert await wait_for(lambda: _status(port, "/healthz", 503))
        assert (await _get(port, "/campaigns/1", token="t0ken"))[0] == 503  # not a 500
        assert not daemon.ready.is_set()


async def _database_reason(port: int) -> bool:
    try:
        status, body = await _get(port, "/readyz")
    except aiohttp.ClientConnectionError:  # the daemon task has not bound its port yet
        return False
    reasons = body.get("reasons", [])
    assert isinstance(reasons, list)
    return status == 503 and any(r["check"] == "database" and "Connect call failed" in r.get("reason", "")
                                 for r in reasons)


async def _status(port: int, path: str, expected: int) -> bool:
    return (await _get(port, path))[0] == expected


async def test_instance_connections_are_named_and_within_the_budget(settings: Settings, db: asyncpg.Connection) -> None:
    configured = settings.with_overrides(instance_id="budget-1", db_pool_size=3)
    async with running_daemon(configured) as daemon:
        await wait_for(lambda: _ready(daemon))
        rows = await db.fetch("SELECT application_name FROM pg_stat_activity WHERE datname = current_database() "
                              "AND pid <> pg_backend_pid()")
        names = [r["application_name"] for r in rows]
        assert names and set(names) == {"sender/budget-1"}
        assert len(names) <= 3 + 1 + 1  # pool + listener + heartbeat (README "Sizing PostgreSQL")


async def _ready(daemon: Daemon) -> bool:
    return daemon.ready.is_set()


async def test_cli_connections_are_named_sender_cli_and_follow_the_pooler(db_url: str) -> None:
    from sender.cli import _connections_for_process
    from sender.db.pool import use_for_process

    try:
        _connections_for_process(Settings(database_url=db_url, db_pooler="transaction"), "campaign")
        conn = await connect(db_url)
        try:
            assert await conn.fetchval("SELECT current_setting('application_name')") == "sender/cli"
            assert not conn._stmt_cache_enabled  # no named prepared statements behind a transaction pooler
        finally:
            await conn.close()
        _connections_for_process(Settings(database_url=db_url, instance_id="i-9"), "run")
        conn = await connect(db_url)
        try:
            assert await conn.fetchval("SELECT current_setting('application_name')") == "sender/i-9"
        finally:
            await conn.close()
    finally:
        use_for_process(ConnectionOptions())


async def test_without_its_listen_connection_an_instance_polls_and_still_sends(
        settings: Settings, db: asyncpg.Connection) -> None:
    await add_contacts(db, 10)
    dead = f"postgresql://app:x@127.0.0.1:{free_port()}/x"
    configured = settings.with_overrides(listen_database_url=dead, idle_poll_interval=0.3)
    async with running_daemon(configured) as daemon:
        await wait_for(lambda: _ready(daemon))
        campaign = await add_campaign(db, await add_template(db))
        await wait_for(lambda: _all_sent(db, campaign, 10))
        assert not daemon.wakeups.listening
    assert await recipient_counts(db, campaign) == {"sent": 10}


async def _all_sent(db: asyncpg.Connection, campaign: int, n: int) -> bool:
    return await db.fetchval("SELECT sent_count FROM campaigns WHERE id = $1", campaign) == n
