"""The account cap and what each campaign may use of it (SPEC §5).

The one owner of the numbers: `cap` comes from SENDER_MAX_RATE or GetAccount, `sandbox` from
GetAccount, `instances` from the heartbeat (for display: instances no longer split the cap, they
share it through sender.shared_rate). The account cap is enforced, paced and cut on throttling in
sender.shared_rate; a campaign's own rate by CampaignWindow, on the one instance that holds the
campaign's lease (sender.campaign_lease).
"""

from __future__ import annotations

import math
import time
from collections import deque


class AccountRate:
    """The account cap, the sandbox flag, and the live instance count."""

    def __init__(self, cap: float) -> None:
        self.cap = cap
        self.instances = 1
        self.sandbox = False

    def campaign_rate(self, rate_per_sec: float | None) -> float | None:
        """A campaign's own shared budget (SPEC §5): min(rate_per_sec, cap), or None when it has none.

        A null rate means the whole cap (no budget of its own), except in the SES sandbox, where it
        means 1/s.
        """
        if rate_per_sec:
            return min(rate_per_sec, self.cap)
        return min(1.0, self.cap) if self.sandbox else None


class CampaignWindow:
    """A campaign's rate_per_sec on the instance that holds its lease: at most floor(rate) sends in
    any window of 1 s (plus the margin for arrival jitter); below 1/s, one per 1/rate seconds.

    Checked at the wire after the account's slot is taken, on the time the request really goes
    out, so a busy event loop can delay sends but never bunch them over the rate.
    """

    def __init__(self, rate: float, *, margin: float) -> None:
        self._margin = margin
        self._times: deque[float] = deque()
        self.rate = rate
        self.limit = 1
        self.span = 1.0
        self.set_rate(rate)

    def set_rate(self, rate: float) -> None:
        self.rate = rate = max(rate, 1e-3)
        if rate >= 1.0:
            self.limit, self.span = math.floor(rate), 1.0 + self._margin
        else:
            self.limit, self.span = 1, (1.0 / rate) * (1.0 + self._margin)

    def free_in(self, now: float) -> float:
        """Seconds until one more send fits (0: now)."""
        while self._times and now - self._times[0] >= self.span:
            self._times.popleft()
        if len(self._times) < self.limit:
            return 0.0
        return self._times[-self.limit] + self.span - now + 0.0005

    def try_admit(self) -> bool:
        now = time.monotonic()
        if self.free_in(now) > 0:
            return False
        self._times.append(now)
        return True
