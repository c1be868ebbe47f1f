"""Database access: the connection pool, named queries and migrations."""

import asyncio

import asyncpg

from sender.db.health import describe
from sender.db.pool import connect, create_pool
from sender.db.queries import QUERIES

# What a lost, slow or refusing database raises: retried with backoff, never fatal to the daemon.
DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, asyncio.TimeoutError)


def db_error_text(exc: BaseException) -> str:
    """The exception class and the server's own words, secrets redacted: what an operator needs."""
    problem = describe(exc)
    return f"{problem.code}: {problem.reason}"


__all__ = ["DB_ERRORS", "QUERIES", "connect", "create_pool", "db_error_text"]
