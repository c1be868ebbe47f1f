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
    """Apply pending migrations in one transaction each; return the versions applied now."""
    applied_now: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(QUERIES["migrations_table"])
        done = {r["version"] for r in await conn.fetch(QUERIES["migrations_applied"])}
        for version, sql in available_migrations():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(QUERIES["migration_record"], version)
            applied_now.append(version)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return applied_now
