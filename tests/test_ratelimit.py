"""The pacer never lets more than the cap through in any one-second window, and keeps up with it."""

from __future__ import annotations

import time

from sender.fakeses import max_in_window
from sender.ratelimit import AdaptiveShare, WindowRateLimiter


async def test_no_window_exceeds_cap_even_after_a_stall() -> None:
    limiter = WindowRateLimiter(50)
    times: list[float] = []
    for i in range(120):
        await limiter.acquire()
        times.append(time.monotonic())
        if i == 30:
            time.sleep(0.3)  # a blocked event loop: the pacer may catch up, never burst past the cap
    assert max_in_window(times) <= 50
    assert len(times) == 120


async def test_fractional_rates_space_calls_out() -> None:
    limiter = WindowRateLimiter(4)
    times = []
    for _ in range(6):
        await limiter.acquire()
        times.append(time.monotonic())
    assert max_in_window(times) <= 4


def test_adaptive_share_cuts_on_throttle_and_recovers() -> None:
    share = AdaptiveShare(100)
    share.instances = 2
    assert share.rate == 50
    assert share.on_throttle() is True
    assert share.rate == 47.5, "a lone throttle is most likely jitter: a small cut"
    assert share.on_throttle() is False, "at most one cut a second"
    share._last_cut -= 1.5  # another throttle 1.5 s later: real overload
    assert share.on_throttle() is True
    assert round(share.rate, 6) == 38.0
    share._last_cut -= 3  # three seconds without throttling
    share.recover()
    assert round(share.rate, 6) == 40.5
    for _ in range(20):
        share.recover()
    assert share.rate == 50
    share._last_cut -= 60  # a minute later, a lone throttle is small again
    share.on_throttle()
    assert share.rate == 47.5
