"""Send rates: what each campaign may use, even pacing, and hard caps on every one-second window.

Everything about the account cap lives here: the cap itself (SENDER_MAX_RATE or GetAccount), the
sandbox default, the division among live instances, and the cut-and-recover reaction to
throttling. Pacing (aiolimiter) spreads sends evenly just under a rate; SlidingWindow is the hard
cap, applied at the wire for the account and for each campaign (SesClient's before-send hook),
because aiolimiter alone admits a whole bucket at once (FIELD-NOTES).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque

from aiolimiter import AsyncLimiter


class SlidingWindow:
    """At most `limit` admissions in any window of `span` seconds (plus a margin for jitter).

    A rate of 1/s or more allows floor(rate) per second. A rate below 1/s allows one admission per
    1/rate seconds, so a 0.5/s share never sends two in one second.
    """

    def __init__(self, rate: float, *, margin: float = 0.03) -> None:
        self._margin = margin
        self._times: deque[float] = deque()
        self.limit = 1
        self.span = 1.0
        self.set_rate(rate)

    def set_rate(self, rate: float) -> None:
        rate = max(rate, 1e-3)
        if rate >= 1.0:
            self.limit, self.span = math.floor(rate), 1.0 + self._margin
        else:
            self.limit, self.span = 1, (1.0 / rate) * (1.0 + self._margin)

    def _wait_time(self, now: float) -> float:
        while self._times and now - self._times[0] >= self.span:
            self._times.popleft()
        if len(self._times) < self.limit:
            return 0.0
        return self._times[-self.limit] + self.span - now + 0.0005

    async def acquire(self) -> None:
        while True:
            now = time.monotonic()
            wait = self._wait_time(now)
            if wait <= 0:
                self._times.append(now)
                return
            await asyncio.sleep(wait)


class Pacer:
    """Sends spread evenly just under `rate`; no hard window (that is SlidingWindow's job).

    A bucket of two or more lets the pacer catch up after event-loop lateness without bursting.
    """

    def __init__(self, rate: float, *, headroom: float = 0.01) -> None:
        self._headroom = headroom
        self.rate = 0.0
        self._bucket = AsyncLimiter(1, 1)
        self.set_rate(rate)

    def set_rate(self, rate: float) -> None:
        rate = max(rate, 1e-3)
        if math.isclose(rate, self.rate, rel_tol=1e-6):
            return
        self.rate = rate
        burst = max(2, math.floor(rate * self._headroom)) if rate >= 2 else 1
        paced = rate * (1 - self._headroom)
        self._bucket = AsyncLimiter(burst, burst / paced)

    async def acquire(self) -> None:
        await self._bucket.acquire()


class CampaignLimit:
    """One campaign's rate on this instance: paced at dispatch, hard-capped at the wire."""

    def __init__(self, rate: float, *, headroom: float) -> None:
        self.pacer = Pacer(rate, headroom=headroom)
        self.window = SlidingWindow(rate)

    @property
    def rate(self) -> float:
        return self.pacer.rate

    def set_rate(self, rate: float) -> None:
        self.pacer.set_rate(rate)
        self.window.set_rate(rate)


class AccountRate:
    """The account cap and this instance's share of it, cut on throttling and regained (AIMD).

    The one owner of the cap: `cap` comes from SENDER_MAX_RATE or GetAccount, `instances` from
    the heartbeat, and every campaign's rate is derived here.
    """

    RECOVERY_PER_SECOND = 0.05  # of the share, once throttling has been quiet for QUIET_SECONDS
    QUIET_SECONDS = 2.0

    def __init__(self, cap: float, *, floor_fraction: float = 0.05) -> None:
        self.cap = cap
        self.instances = 1
        self.sandbox = False
        self.factor = 1.0
        self._floor = floor_fraction
        self._last_cut = -math.inf

    @property
    def share(self) -> float:
        """This instance's account rate: an even split among live instances, after throttling cuts."""
        return self.cap / max(1, self.instances) * self.factor

    def campaign_rate(self, rate_per_sec: float | None) -> float:
        """A campaign's rate on this instance (SPEC §5): min(rate_per_sec, cap), split like the cap.

        A null rate means 1/s in the SES sandbox and the whole cap otherwise.
        """
        wanted = rate_per_sec if rate_per_sec else (1.0 if self.sandbox else self.cap)
        return min(wanted, self.cap) / max(1, self.instances)

    def on_throttle(self) -> bool:
        """Cut the share, at most once a second; True when it was cut.

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

    def recover(self, elapsed: float) -> None:
        """Regain RECOVERY_PER_SECOND of the share per second of `elapsed`, once throttling is quiet."""
        if time.monotonic() - self._last_cut >= self.QUIET_SECONDS:
            self.factor = min(1.0, self.factor + self.RECOVERY_PER_SECOND * max(0.0, elapsed))
