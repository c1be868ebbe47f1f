"""LISTEN on `sender_campaigns`: the main app's NOTIFY wakes the tick at once instead of at the next poll."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import asyncpg

from sender.backoff import Backoff
from sender.config import Settings
from sender.db import DB_ERRORS, connect, db_error_text
from sender.logs import get_logger

log = get_logger("sender.listener")


class CampaignListener:
    """One dedicated connection (LISTEN is session state, so never a pool connection)."""

    def __init__(self, settings: Settings, wake: Callable[[], None]) -> None:
        self.settings = settings
        self._wake = wake
        self._conn: asyncpg.Connection | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Keep the LISTEN connection up; reconnect with backoff, and wake the tick after each reconnect
        (notifications sent while it was down are lost, so the tick looks for itself)."""
        backoff = Backoff(initial=0.2, cap=2.0)
        assert self.settings.database_url
        while not stop.is_set():
            if self._conn is None or self._conn.is_closed():
                try:
                    self._conn = await connect(self.settings.database_url, timeout=10)
                    await self._conn.add_listener("sender_campaigns", lambda *_: self._wake())
                except DB_ERRORS as exc:
                    log.warning("listener_unavailable", error=db_error_text(exc))
                    await self.close()
                    await backoff.wait(stop)
                    continue
                backoff.reset()
                self._wake()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)
