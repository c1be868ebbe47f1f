"""Ordered SQL migrations, applied once each and recorded in sender_migrations."""

from __future__ import annotations

from importlib.resources import files

import asyncpg

from sender.db.queries import QUERIES

_LOCK_KEY = 0x53454E44  # "SEND": one migrator at a time across instances


def available_migrations() -> list[tuple[str, str]]:
    """(version, sql) for every migrations/*.sql file, in name order."""
    folder = files("sender.db").joinpath("migrations")
    items = sorted((p.name, p) for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(name.removesuffix(".sql"), path.read_text()) for name, path in items]


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply pending migrations in one transaction each; return the versions applied now.

    The lock is transaction-scoped (`pg_advisory_xact_lock`), taken again in every transaction:
    behind PgBouncer in transaction mode a session-level lock could be taken on one server
    connection and released on another (or never), so nothing here relies on session state.
    """
    applied_now: list[str] = []
    async with conn.transaction():
        await conn.execute(QUERIES["migration_lock"], _LOCK_KEY)
        await conn.execute(QUERIES["migrations_table"])
    for version, sql in available_migrations():
        async with conn.transaction():
            await conn.execute(QUERIES["migration_lock"], _LOCK_KEY)
            # read under the lock: another migrator may have applied it while we waited
            done = {r["version"] for r in await conn.fetch(QUERIES["migrations_applied"])}
            if version in done:
                continue
            await conn.execute(sql)
            await conn.execute(QUERIES["migration_record"], version)
        applied_now.append(version)
    return applied_now


async def check_schema(conn: asyncpg.Connection | asyncpg.Pool) -> None:
    """Refuse to run against a database that `sender migrate` has not brought up to date."""
    from sender.config import ConfigError

    wanted = [version for version, _ in available_migrations()]
    try:
        applied = {r["version"] for r in await conn.fetch(QUERIES["migrations_applied"])}
    except asyncpg.UndefinedTableError:
        applied = set()
    missing = [v for v in wanted if v not in applied]
    if missing:
        raise ConfigError(f"DATABASE_URL: the schema is not up to date (missing {', '.join(missing)}): "
                          "run `sender migrate`")
