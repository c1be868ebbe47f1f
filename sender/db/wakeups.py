"""Where the tick's wake-ups come from: LISTEN on a connection that can hold it (DATABASE_URL when
direct or session-pooled, SENDER_LISTEN_DATABASE_URL behind a transaction pooler), or adaptive
polling when there is none or it cannot be had (fast while there is work, slower when idle)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import asyncpg

from sender.config import Settings
from sender.db.health import describe
from sender.db.pool import listen_dsn, open_dedicated
from sender.logs import get_logger

log = get_logger("sender.db.wakeups")

CHANNEL = "sender_campaigns"
_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, asyncio.TimeoutError)


class Wakeups:
    def __init__(self, settings: Settings, wake: asyncio.Event) -> None:
        self.settings = settings
        self._wake = wake
        self._dsn = listen_dsn(settings)
        self._direct = self._dsn is not None and self._dsn == settings.listen_database_url
        self._conn: asyncpg.Connection | None = None
        self._retry_at = 0.0
        self._backoff = 1.0
        self._idle_wait = settings.poll_interval
        self._connecting: asyncio.Task[None] | None = None

    @property
    def listening(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def ensure(self) -> None:
        """(Re)open the LISTEN connection in the background when due, so a slow or refused connect
        never holds up the tick; on failure it logs the server's reason and the tick keeps polling."""
        if self._dsn is None or self.listening or time.monotonic() < self._retry_at:
            return
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.create_task(self._connect(self._dsn), name="listener-connect")

    async def _connect(self, dsn: str) -> None:
        conn: asyncpg.Connection | None = None
        try:
            conn = await open_dedicated(self.settings, dsn=dsn, direct=self._direct)
            await conn.add_listener(CHANNEL, lambda *_: self._wake.set())
        except _ERRORS as exc:
            if conn is not None:
                conn.terminate()  # never hold a slot that does not listen
            problem = describe(exc, dsn)
            log.warning("listener_unavailable", error=problem.code, reason=problem.reason,
                        retry_in=self._backoff, note="polling until it is back")
            self._retry_at = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, 30.0)
            return
        if self._backoff > 1.0:
            log.info("listener_restored")
        self._conn, self._backoff = conn, 1.0

    def next_wait(self, busy: bool) -> float:
        """Seconds until the next tick when nothing wakes it.

        With LISTEN: the poll interval. Polling only: the poll interval while anything is queued,
        sending or cancelling; when idle it doubles up to SENDER_IDLE_POLL_INTERVAL, so a campaign
        queued on an idle cluster starts within that interval plus one tick.
        """
        poll = self.settings.poll_interval
        if self.listening or busy:
            self._idle_wait = poll
            return poll
        self._idle_wait = min(max(poll, self.settings.idle_poll_interval), self._idle_wait * 2)
        return self._idle_wait

    async def close(self) -> None:
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close(timeout=2)
            self._conn = None
