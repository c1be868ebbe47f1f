"""Database access: the connection pool, named queries and migrations."""

import asyncio

import asyncpg

from sender.db.pool import connect, create_pool
from sender.db.queries import QUERIES

# What a lost, slow or refusing database raises: retried with backoff, never fatal to the daemon.
DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, asyncio.TimeoutError)


def db_error_text(exc: BaseException) -> str:
    """The exception class and the server's own first line (never a DSN): what an operator needs."""
    message = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


__all__ = ["DB_ERRORS", "QUERIES", "connect", "create_pool", "db_error_text"]
