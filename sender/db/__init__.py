"""Database access: the connection pool, named queries and migrations."""

from sender.db.pool import connect, create_pool
from sender.db.queries import QUERIES

__all__ = ["QUERIES", "connect", "create_pool"]
