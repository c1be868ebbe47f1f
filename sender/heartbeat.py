"""This instance's heartbeat: one row in sender_instances, beaten on its own task and connection.

Rows an instance claims stay valid while its heartbeat is fresh, so no tick rewrites them; a slow
tick (a big materialisation, a slow query) can never make a live instance look dead. The other
side of that promise is here too: when this instance cannot beat, it stops starting sends on rows
that others may already be taking over (`may_send`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from sender.backoff import Backoff
from sender.config import Settings
from sender.db import DB_ERRORS, QUERIES, db_error_text
from sender.db.pool import open_dedicated
from sender.logs import get_logger
from sender.metrics import Metrics

log = get_logger("sender.heartbeat")


@dataclass(frozen=True)
class InstanceReport:
    """A live instance as its heartbeat describes it."""

    id: str
    send_rate: float
    campaigns: tuple[int, ...]


class Heartbeat:
    def __init__(self, settings: Settings, metrics: Metrics, *, on_live: Callable[[list[InstanceReport]], None],
                 report: Callable[[], tuple[float, list[int]]]) -> None:
        self.settings = settings
        self._metrics = metrics
        self._on_live = on_live
        self._report = report
        self._conn: asyncpg.Connection | None = None
        self.last_ok = -float("inf")  # monotonic start of the last heartbeat that committed
        self._lapsed_at = -float("inf")
        self.live = 1

    async def beat(self) -> None:
        """One heartbeat; raises the database's error."""
        s = self.settings
        if self._conn is None or self._conn.is_closed():
            self._conn = await open_dedicated(s)
        started = time.monotonic()
        rate, campaigns = self._report()
        rows = await self._conn.fetch(QUERIES["instance_heartbeat"], s.instance_id, s.instance_timeout,
                                      rate, campaigns, timeout=max(1.0, s.heartbeat_interval * 5))
        self.last_ok = started
        self.live = len(rows)
        self._on_live([InstanceReport(r["id"], float(r["send_rate"]), tuple(r["campaigns"])) for r in rows])

    async def run(self, stop: asyncio.Event) -> None:
        """Beat every heartbeat_interval until stopped; failures are logged and retried at once-ish."""
        backoff = Backoff(initial=0.05, cap=self.settings.heartbeat_interval)
        failing = False
        while not stop.is_set():
            try:
                await self.beat()
            except DB_ERRORS as exc:
                await self._drop_connection()
                if not failing:
                    log.warning("heartbeat_failed", error=db_error_text(exc))
                failing = True
                self.lapsed()
                await backoff.wait(stop)
                continue
            if failing:
                log.info("heartbeat_restored")
            failing = False
            backoff.reset()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.heartbeat_interval)

    def age(self) -> float:
        return time.monotonic() - self.last_ok

    def may_send(self, claimed_at: float) -> bool:
        """Whether a send may start now on a row claimed (by this instance) at `claimed_at`.

        No: when the heartbeat is so old that, before this send could time out, other instances
        may take the row over; when the heartbeat lapsed after the row was claimed (others may
        have taken it already); or when the row's hard lease bound could pass during the send.
        """
        s = self.settings
        now = time.monotonic()
        if self.lapsed():
            return False
        return claimed_at > self._lapsed_at and now + s.send_timeout < claimed_at + s.lease_seconds

    def lapsed(self) -> bool:
        """True (and remembered) once the heartbeat is too old for a send to finish before takeover."""
        s = self.settings
        now = time.monotonic()
        if now + s.send_timeout >= self.last_ok + s.instance_timeout - s.heartbeat_interval:
            self._lapsed_at = now
            return True
        return False

    async def _drop_connection(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 1.0)

    async def close(self) -> None:
        await self._drop_connection()
