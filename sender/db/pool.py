"""asyncpg connections with JSON codecs, so jsonb columns arrive as Python values."""

from __future__ import annotations

import json
from typing import Any

import asyncpg


async def _init_connection(conn: asyncpg.Connection) -> None:
    for kind in ("json", "jsonb"):
        await conn.set_type_codec(kind, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _no_reset(conn: asyncpg.Connection) -> None:
    """Pool connections never carry session state (no LISTEN, advisory locks or SET on them), so
    asyncpg's default reset (`RESET ALL; UNLISTEN *; …`, one extra round trip per release) is skipped."""


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 10, **kwargs: Any) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection, reset=_no_reset,
        server_settings={"application_name": "sender"}, **kwargs,
    )
    assert pool is not None
    return pool


async def connect(dsn: str, **kwargs: Any) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn, server_settings={"application_name": "sender"}, **kwargs)
    await _init_connection(conn)
    return conn
