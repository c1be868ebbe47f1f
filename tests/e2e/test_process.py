"""The daemon as a real process: SIGTERM drains cleanly; `sender migrate` is idempotent."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import asyncpg

from sender.config import Settings
from sender.db.migrate import available_migrations
from sender.demo.fakeses import FakeSES
from tests.helpers import add_campaign, add_contacts, add_template, recipient_counts, running_daemon, wait_for
from tests.processes import start_daemon


async def test_sigterm_mid_campaign_drains_and_leaves_nothing_sending(
        db: asyncpg.Connection, settings: Settings, fake_ses: FakeSES) -> None:
    fake_ses.latency = 0.05
    await add_contacts(db, 150)
    campaign = await add_campaign(db, await add_template(db), rate=30)
    proc = await start_daemon(settings)
    try:
        await wait_for(lambda: _count(fake_ses, 20), timeout=60)
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
    assert proc.returncode == 0, stderr.decode()[-2000:]
    assert b"shutdown_complete" in stderr
    counts = await recipient_counts(db, campaign)
    assert "sending" not in counts
    assert counts["sent"] == len(fake_ses.messages)
    assert counts["pending"] == 150 - counts["sent"] > 0
    # another instance picks up exactly where this one stopped: no one twice, no one missed
    async with running_daemon(settings):
        await wait_for(lambda: _campaign_sent(db, campaign), timeout=60)
    assert len(fake_ses.messages) == 150
    assert len({m.to[0] for m in fake_ses.messages}) == 150


async def _count(fake: FakeSES, n: int) -> bool:
    return len(fake.messages) >= n


async def _campaign_sent(db: asyncpg.Connection, campaign: int) -> bool:
    return await db.fetchval("SELECT status FROM campaigns WHERE id = $1", campaign) == "sent"


async def test_migrate_is_idempotent_and_tracked(db_url: str, db: asyncpg.Connection) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENDER_")} | {
        "DATABASE_URL": db_url, "SENDER_ENV_FILE": "/nonexistent"}
    for _ in range(2):
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "sender", "migrate", env=env,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        assert out.decode().strip() == "database is up to date"
    versions = [r["version"] for r in await db.fetch("SELECT version FROM sender_migrations ORDER BY version")]
    assert versions == [v for v, _ in available_migrations()]


async def test_migrate_on_empty_database_applies_everything(pg_admin_dsn: str) -> None:
    from sender.db import connect
    from sender.db.migrate import available_migrations, migrate
    from tests.helpers import with_database

    admin = await asyncpg.connect(pg_admin_dsn)
    await admin.execute('DROP DATABASE IF EXISTS "sender_empty"')
    await admin.execute('CREATE DATABASE "sender_empty"')
    try:
        conn = await connect(with_database(pg_admin_dsn, "sender_empty"))
        try:
            assert await migrate(conn) == [v for v, _ in available_migrations()]
            assert await migrate(conn) == []
            assert await conn.fetchval("SELECT count(*) FROM sender_account_hold") == 1
        finally:
            await conn.close()
    finally:
        await admin.execute('DROP DATABASE IF EXISTS "sender_empty" WITH (FORCE)')
        await admin.close()


async def test_run_refuses_an_unmigrated_database(pg_admin_dsn: str, settings: Settings) -> None:
    from tests.helpers import with_database

    admin = await asyncpg.connect(pg_admin_dsn)
    await admin.execute('DROP DATABASE IF EXISTS "sender_unmigrated"')
    await admin.execute('CREATE DATABASE "sender_unmigrated"')
    try:
        empty = with_database(pg_admin_dsn, "sender_unmigrated")
        proc = await start_daemon(settings.with_overrides(database_url=empty))
        _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await admin.execute('DROP DATABASE IF EXISTS "sender_unmigrated" WITH (FORCE)')
        await admin.close()
    assert proc.returncode == 2
    missing = ", ".join(v for v, _ in available_migrations())
    assert stderr.decode().strip().splitlines()[-1] == (
        f"sender: configuration error: DATABASE_URL: the schema is not up to date (missing {missing}): "
        "run `sender migrate`")


async def test_run_names_the_port_when_it_is_taken(db_url: str, settings: Settings) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = await start_daemon(settings, SENDER_HTTP_PORT=str(port))
        _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2
    last = stderr.decode().strip().splitlines()[-1]
    assert last.startswith(f"sender: configuration error: SENDER_HTTP_PORT: cannot listen on 127.0.0.1:{port}")
