"""Pacing and hard caps: no one-second window over the cap, fractional rates spaced out, AIMD share."""

from __future__ import annotations

import itertools
import time

from sender.ratelimit import AccountRate, CampaignLimit, SlidingWindow
from tests.helpers import max_in_window


async def _acquire_all(limit: CampaignLimit, n: int, *, stall_at: int | None = None) -> list[float]:
    times: list[float] = []
    for i in range(n):
        await limit.pacer.acquire()
        await limit.window.acquire()
        times.append(time.monotonic())
        if i == stall_at:
            time.sleep(0.3)  # a blocked event loop: the pacer may catch up, never burst past the cap
    return times


async def test_no_window_exceeds_cap_even_after_a_stall() -> None:
    times = await _acquire_all(CampaignLimit(50, headroom=0.01), 120, stall_at=30)
    assert max_in_window(times) <= 50
    assert len(times) == 120


async def test_whole_rates_space_calls_evenly() -> None:
    times = await _acquire_all(CampaignLimit(4, headroom=0.01), 9)
    assert max_in_window(times) <= 4
    # paced, not bunched: beyond the 2-message catch-up bucket, admissions come 1/rate apart
    assert times[-1] - times[0] >= (len(times) - 2) / 4 * 0.99


async def test_a_share_below_one_per_second_sends_once_per_interval() -> None:
    window = SlidingWindow(0.5)  # e.g. a 1/s sandbox cap shared by two instances
    times = []
    for _ in range(3):
        await window.acquire()
        times.append(time.monotonic())
    assert window.limit == 1 and window.span >= 2.0
    assert min(b - a for a, b in itertools.pairwise(times)) >= 2.0
    assert max_in_window(times, 1.99) == 1


def test_account_rate_divides_cuts_on_throttle_and_recovers_per_second() -> None:
    rate = AccountRate(100)
    rate.instances = 2
    assert rate.share == 50
    assert rate.campaign_rate(None) == 50 and rate.campaign_rate(10) == 5
    rate.sandbox = True
    assert rate.campaign_rate(None) == 0.5, "sandbox default 1/s, split between the two instances"
    assert rate.on_throttle() is True
    assert rate.share == 47.5, "a lone throttle is most likely jitter: a small cut"
    assert rate.on_throttle() is False, "at most one cut a second"
    rate._last_cut -= 1.5  # another throttle 1.5 s later: real overload
    assert rate.on_throttle() is True
    assert round(rate.share, 6) == 38.0
    rate._last_cut -= 3  # three quiet seconds
    rate.recover(1.0)
    assert round(rate.share, 6) == 40.5, "5% of the share per second of elapsed time"
    rate.recover(0.25)
    assert round(rate.share, 6) == 41.125, "a quarter second regains a quarter of that, whatever the tick rate"
    rate.recover(60)
    assert rate.share == 50
    rate._last_cut -= 60  # a minute later, a lone throttle is small again
    rate.on_throttle()
    assert rate.share == 47.5
