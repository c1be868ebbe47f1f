"""Batched, ownership-guarded write-back: every outcome of every campaign goes through one buffer.

One `UPDATE … FROM unnest(…)` per batch changes only rows this instance still holds and moves
the campaign counters by exactly the rows that changed. A failed write keeps the results in
memory and retries; normal operation and shutdown share the one flush path.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg

from sender.backoff import Backoff
from sender.db import DB_ERRORS, QUERIES, db_error_text
from sender.logs import get_logger
from sender.message import Outcome
from sender.metrics import Metrics

log = get_logger("sender.writeback")

class ResultBuffer:
    """Collects outcomes and writes them in batches on size or time."""

    def __init__(self, pool: asyncpg.Pool, instance_id: str, *, size: int, interval: float,
                 metrics: Metrics) -> None:
        self._pool = pool
        self._me = instance_id
        self._size = size
        self._interval = interval
        self._items: list[Outcome] = []
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._metrics = metrics
        self.flushes = 0

    def __len__(self) -> int:
        return len(self._items)

    def ids(self) -> set[int]:
        """Rows whose outcome is known here but not yet written (they are still `sending` in the database)."""
        return {o.id for o in self._items}

    def add(self, outcome: Outcome) -> None:
        self._items.append(outcome)
        if len(self._items) >= self._size:
            self._wake.set()

    async def run(self) -> None:
        """Flush every `interval`, or as soon as a batch is full; failures keep results in memory."""
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self._interval)
            except TimeoutError:
                pass
            self._wake.clear()
            await self.flush(drain=False)

    async def flush(self, *, give_up_after: float | None = None, drain: bool = True) -> bool:
        """Write what is buffered; True when nothing that was buffered is left.

        `drain=False` writes only what was there when the flush began: rows that arrive during the
        write wait for the next size-or-time trigger instead of going out in a trickle of tiny batches.
        """
        deadline = None if give_up_after is None else time.monotonic() + give_up_after
        backoff = Backoff(initial=0.1, cap=1.0)
        async with self._lock:
            owed = len(self._items)
            while self._items and (drain or owed > 0):
                batch = self._items[: self._size * 4 if drain else min(owed, self._size * 4)]
                started = time.monotonic()
                try:
                    written = await self._write(batch)
                except DB_ERRORS as exc:
                    delay = backoff.next()
                    log.warning("write_back_failed", rows=len(batch), error=db_error_text(exc), retry_in=delay)
                    if deadline is not None and time.monotonic() + delay > deadline:
                        return False
                    await asyncio.sleep(delay)
                    continue
                backoff.reset()
                del self._items[: len(batch)]
                owed -= len(batch)
                self.flushes += 1
                self._record(len(batch), written, time.monotonic() - started)
        return True

    def _record(self, rows: int, written: int, seconds: float) -> None:
        m = self._metrics
        m.write_back_rows.inc(rows)
        m.write_back_latency.observe(seconds)
        if written < rows:
            # another instance recovered these rows after this one lost them; it owns them now
            m.lost_ownership.inc(rows - written)
            log.warning("write_back_rows_not_held", rows=rows - written)

    async def _write(self, batch: list[Outcome]) -> int:
        columns: tuple[list[Any], ...] = ([], [], [], [], [], [], [], [])
        # rows are locked in id order, as every other statement that locks several of them does
        for o in sorted(batch, key=lambda item: item.id):
            for column, value in zip(columns, (o.id, o.status, o.message_id, o.error_code, o.error,
                                               o.attempts, o.retry_in, o.sent_at), strict=True):
                column.append(value)
        async with self._pool.acquire() as conn:
            written = await conn.fetchval(QUERIES["write_back"], self._me, *columns, timeout=30)
        return int(written)
