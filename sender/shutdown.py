"""The last steps of a graceful stop: let in-flight sends finish, then hand back what is still held.

The daemon stops its runners first (nothing new starts), waits for every delivery of every
campaign within the grace period (a second signal cuts it short), writes all results, and only
then hands back the rows it still holds and forgets its instance row.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import asyncpg

from sender.db import DB_ERRORS, QUERIES, db_error_text
from sender.logs import get_logger

log = get_logger("sender.shutdown")


async def drain_deliveries(deliveries: Iterable[asyncio.Task[None]], *, grace: float,
                           force: asyncio.Event | None) -> None:
    """Wait for every delivery to finish, up to `grace` seconds or until `force` is set; cancel the rest
    (they record their outcome as unknown or handed back, by the crash policy)."""
    tasks = set(deliveries)
    if not tasks:
        return
    waiters: set[asyncio.Future[Any]] = {asyncio.ensure_future(asyncio.wait(tasks))}
    if force is not None:
        waiters.add(asyncio.ensure_future(force.wait()))
    await asyncio.wait(waiters, timeout=grace, return_when=asyncio.FIRST_COMPLETED)
    for waiter in waiters:
        waiter.cancel()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def hand_back(pool: asyncpg.Pool, instance_id: str) -> None:
    """Rows still claimed by this instance go back to pending; its heartbeat row goes."""
    try:
        async with pool.acquire() as conn:
            released = await conn.fetch(QUERIES["release_held"], instance_id, timeout=10)
            await conn.execute(QUERIES["instance_forget"], instance_id, timeout=10)
        if released:
            log.info("released_held_rows", rows=len(released))
    except DB_ERRORS as exc:
        log.error("shutdown_release_failed", error=db_error_text(exc),
                  note="rows stay claimed and are recovered after the instance timeout")
