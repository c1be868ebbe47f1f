"""asyncpg connections and pools: JSON codecs, the connection budget, pooler-safe options and an
application_name a DBA can read in pg_stat_activity (`sender/<instance id>`, `sender/cli`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import asyncpg

if TYPE_CHECKING:
    from sender.config import Settings


async def _init_connection(conn: asyncpg.Connection) -> None:
    for kind in ("json", "jsonb"):
        await conn.set_type_codec(kind, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _no_reset(conn: asyncpg.Connection) -> None:
    """Pool connections never carry session state (no LISTEN, advisory locks or SET on them), so
    asyncpg's default reset (`RESET ALL; UNLISTEN *; …`, one extra round trip per release) is skipped."""


@dataclass(frozen=True)
class ConnectionOptions:
    """What every connection of one process passes to asyncpg.

    Behind PgBouncer in transaction mode consecutive transactions may run on different server
    connections, so asyncpg's named prepared statements (its statement cache) must be off; the
    unnamed statement it then uses is parsed again with every execution, in the same round trip.
    """

    application_name: str = "sender"
    statement_cache_size: int | None = None  # None: asyncpg's default

    def kwargs(self, dsn: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if "application_name" not in parse_qs(urlsplit(dsn).query):  # the DSN's own name wins
            out["server_settings"] = {"application_name": self.application_name[:63]}
        if self.statement_cache_size is not None:
            out["statement_cache_size"] = self.statement_cache_size
        return out


def options_for(settings: Settings, application_name: str) -> ConnectionOptions:
    return ConnectionOptions(application_name=application_name,
                             statement_cache_size=0 if settings.db_pooler == "transaction" else None)


_process_options = ConnectionOptions()


def use_for_process(options: ConnectionOptions) -> None:
    """Options for connections opened without explicit ones (the CLI commands, `sender/cli`)."""
    global _process_options
    _process_options = options


def _merged(dsn: str, options: ConnectionOptions | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    return (options or _process_options).kwargs(dsn) | kwargs


async def create_pool(dsn: str, *, min_size: int = 2, max_size: int = 10,
                      options: ConnectionOptions | None = None, **kwargs: Any) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection, reset=_no_reset,
        **_merged(dsn, options, kwargs),
    )
    assert pool is not None
    return pool


async def connect(dsn: str, *, options: ConnectionOptions | None = None, **kwargs: Any) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn, **_merged(dsn, options, kwargs))
    await _init_connection(conn)
    return conn


def instance_application_name(settings: Settings) -> str:
    return f"sender/{settings.instance_id}"


async def open_pool(settings: Settings) -> asyncpg.Pool:
    """The daemon's pool: at most SENDER_DB_POOL_SIZE connections, idle ones above
    SENDER_DB_POOL_MIN closed after SENDER_DB_IDLE_SECONDS."""
    assert settings.database_url
    return await create_pool(
        settings.database_url, min_size=settings.db_pool_min, max_size=settings.db_pool_size,
        max_inactive_connection_lifetime=settings.db_idle_seconds, timeout=10,
        options=options_for(settings, instance_application_name(settings)),
    )


def listen_dsn(settings: Settings) -> str | None:
    """Where LISTEN can work: SENDER_LISTEN_DATABASE_URL, else DATABASE_URL unless it is a
    transaction pooler (which drops LISTEN); None means poll-only."""
    if settings.listen_database_url:
        return settings.listen_database_url
    return None if settings.db_pooler == "transaction" else settings.database_url


async def open_dedicated(settings: Settings, *, dsn: str | None = None, direct: bool = False) -> asyncpg.Connection:
    """One connection outside the pool (the LISTEN connection, the heartbeat), named like the pool's.
    `direct` says the DSN bypasses any pooler, so asyncpg's statement cache may stay on."""
    target = dsn or settings.database_url
    assert target
    options = options_for(settings, instance_application_name(settings))
    if direct:
        options = ConnectionOptions(application_name=options.application_name)
    return await connect(target, options=options, timeout=10)


def connection_budget(settings: Settings, *, heartbeat: int) -> dict[str, Any]:
    """Server connections one instance may hold at most (README "Sizing PostgreSQL")."""
    listener = 1 if listen_dsn(settings) else 0
    return {"pool_min": settings.db_pool_min, "pool_max": settings.db_pool_size, "listener": listener,
            "heartbeat": heartbeat, "max_connections": settings.db_pool_size + listener + heartbeat,
            "pooler": settings.db_pooler, "idle_close_seconds": settings.db_idle_seconds,
            "wakeups": "listen" if listener else "poll"}
