"""One exponential backoff for every loop that retries the database (write-back, claims, ticks, connects)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass


@dataclass
class Backoff:
    """Delays that double from `initial` up to `cap`; `reset()` after a success.

    The cap is small on purpose: once the database answers again, sending resumes within about a
    second instead of waiting out a long sleep (the hardening issue measured 5 s with a 5 s cap).
    """

    initial: float = 0.1
    cap: float = 1.0
    factor: float = 2.0
    current: float = 0.0

    def next(self) -> float:
        """The delay to wait now; the following one is longer."""
        self.current = self.initial if self.current <= 0 else min(self.cap, self.current * self.factor)
        return self.current

    def reset(self) -> None:
        self.current = 0.0

    async def wait(self, stop: asyncio.Event | None = None) -> float:
        """Sleep the next delay (returning early when `stop` is set); returns the delay."""
        delay = self.next()
        if stop is None:
            await asyncio.sleep(delay)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
        return delay
