"""Send-rate control: even pacing (aiolimiter) under a hard cap on any one-second window.

aiolimiter's bucket admits a whole bucket at once (FIELD-NOTES), so it runs with a bucket of a
few messages at slightly under the cap, and a sliding log of recent send times makes sure no
one-second window ever holds more than the cap, whatever the event loop's timing did.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque

from aiolimiter import AsyncLimiter


class SlidingWindow:
    """At most `rate` admissions in any window of 1 s plus a small margin (for network jitter)."""

    def __init__(self, rate: float, *, margin: float = 0.01) -> None:
        self._span = 1.0 + margin
        self._times: deque[float] = deque()
        self.limit = 1
        self.set_rate(rate)

    def set_rate(self, rate: float) -> None:
        self.limit = max(1, math.floor(rate))

    async def acquire(self) -> None:
        while True:
            now = time.monotonic()
            while self._times and now - self._times[0] >= self._span:
                self._times.popleft()
            if len(self._times) < self.limit:
                self._times.append(now)
                return
            await asyncio.sleep(self._times[0] + self._span - now + 0.0005)


class WindowRateLimiter:
    """Sends spread evenly just under `rate` (aiolimiter), optionally under a hard sliding window.

    The account limiter paces at dispatch without the window: its window is enforced at the wire
    (SesClient.gate_wire), after botocore has built and signed the request, so event-loop stalls
    between dispatch and the socket cannot bunch arrivals at SES.
    """

    def __init__(self, rate: float, *, headroom: float = 0.01, window: bool = True) -> None:
        self._headroom = headroom
        self.window = SlidingWindow(rate) if window else None
        self.rate = 0.0
        self._bucket = AsyncLimiter(1, 1)
        self.set_rate(rate)

    def set_rate(self, rate: float) -> None:
        rate = max(rate, 0.01)
        if self.window is not None:
            self.window.set_rate(rate)
        if math.isclose(rate, self.rate, rel_tol=1e-6):
            return
        self.rate = rate
        # a bucket of 2+ lets the pacer catch up after event-loop lateness; the window caps bursts
        burst = max(2, math.floor(rate * self._headroom))
        paced = rate * (1 - self._headroom)
        self._bucket = AsyncLimiter(burst, burst / paced)

    async def acquire(self) -> None:
        await self._bucket.acquire()
        if self.window is not None:
            await self.window.acquire()


class AdaptiveShare:
    """This instance's share of a cap, cut on throttling and regained gradually (AIMD)."""

    def __init__(self, cap: float, *, floor_fraction: float = 0.05) -> None:
        self.cap = cap
        self.instances = 1
        self.factor = 1.0
        self._floor = floor_fraction
        self._last_cut = -math.inf

    @property
    def rate(self) -> float:
        return self.cap / max(1, self.instances) * self.factor

    def on_throttle(self) -> bool:
        """Cut the rate, at most once a second; True when it was cut.

        A lone 429 while pacing at the cap is most likely jitter on the way to SES: cut 5%.
        Another within 10 s means real overload (another sender on the account, a lower quota):
        cut 20% each time until it stops.
        """
        now = time.monotonic()
        if now - self._last_cut < 1.0:
            return False
        repeated = now - self._last_cut < 10.0
        self._last_cut = now
        self.factor = max(self._floor, self.factor * (0.8 if repeated else 0.95))
        return True

    def recover(self) -> None:
        """Called once a second: after 2 s without throttling, regain 5% of the cap."""
        if time.monotonic() - self._last_cut >= 2.0:
            self.factor = min(1.0, self.factor + 0.05)
