"""Seeding and waiting helpers shared by the database and end-to-end tests."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from sender.config import Settings
from sender.daemon import Daemon


async def add_contacts(db: asyncpg.Connection, count: int, *, domain: str = "example.org",
                       start: int = 0, **columns: Any) -> list[int]:
    rows = await db.fetch(
        "INSERT INTO contacts (email, first_name, last_name, country, attributes) "
        "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[]) RETURNING id",
        [f"user{i}@{domain}" for i in range(start, start + count)],
        [columns.get("first_name", f"First{i}") for i in range(start, start + count)],
        [columns.get("last_name", f"Last{i}") for i in range(start, start + count)],
        [columns.get("country", "US") for _ in range(count)],
        [columns.get("attributes", {"n": i}) for i in range(start, start + count)],
    )
    return [r["id"] for r in rows]


async def add_template(db: asyncpg.Connection, *, subject: str = "Hi {{ first_name }}",
                       html: str = "<p>Hello {{ first_name }}</p>", text: str | None = None) -> int:
    return int(await db.fetchval(
        "INSERT INTO templates (name, subject, content_html, content_text) VALUES ('t', $1, $2, $3) RETURNING id",
        subject, html, text,
    ))


async def add_campaign(db: asyncpg.Connection, template_id: int | None, *, rules: Any = None,
                       status: str = "queued", rate: float | None = None, **columns: Any) -> int:
    rules = {} if rules is None else rules
    return int(await db.fetchval(
        "INSERT INTO campaigns (name, template_id, target_rules, status, rate_per_sec, scheduled_at, "
        "from_email, reply_to) VALUES ('c', $1, $2, $3, $4, $5, $6, $7) RETURNING id",
        template_id, rules, status, rate, columns.get("scheduled_at"), columns.get("from_email"),
        columns.get("reply_to"),
    ))


async def wait_for(check: Callable[[], Awaitable[Any]], *, timeout: float = 30.0, interval: float = 0.05) -> Any:
    """Poll an observable condition until it holds; fail loudly with its last value if it never does."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")


async def campaign_status(db: asyncpg.Connection, campaign_id: int) -> str:
    return str(await db.fetchval("SELECT status FROM campaigns WHERE id = $1", campaign_id))


async def recipient_counts(db: asyncpg.Connection, campaign_id: int) -> dict[str, int]:
    rows = await db.fetch(
        "SELECT status, count(*) AS n FROM campaign_recipients WHERE campaign_id = $1 GROUP BY status", campaign_id)
    return {r["status"]: r["n"] for r in rows}


@contextlib.asynccontextmanager
async def running_daemon(settings: Settings, **kwargs: Any) -> AsyncIterator[Daemon]:
    daemon = Daemon(settings, **kwargs)
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        yield daemon
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def seed_sent_campaign(db: asyncpg.Connection, n: int = 4) -> tuple[int, list[int]]:
    """A sent campaign whose recipient i has message id m-i and address user{i}@example.org."""
    campaign = await add_campaign(db, await add_template(db), status="sent")
    await db.execute("INSERT INTO contacts (email) SELECT 'user' || i || '@example.org' FROM generate_series(0, $1) i",
                     n - 1)
    ids = await db.fetch(
        "INSERT INTO campaign_recipients (campaign_id, contact_id, email, status, message_id, sent_at) "
        "SELECT $1, c.id, c.email, 'sent', 'm-' || (c.id - 1), now() FROM contacts c ORDER BY c.id RETURNING id",
        campaign)
    return campaign, [r["id"] for r in ids]


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


def max_in_window(times: list[float], seconds: float = 1.0) -> int:
    """The most of the sorted `times` that fall in any half-open window of `seconds`."""
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= seconds:
            start += 1
        best = max(best, end - start + 1)
    return best
