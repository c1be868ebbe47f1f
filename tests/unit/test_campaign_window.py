"""CampaignWindow: a campaign's rate cut into units, of which this instance enforces its share."""

from __future__ import annotations

import pytest

from sender.ratelimit import RUN_SENDS, CampaignWindow


@pytest.mark.parametrize(("rate", "total", "period"), [(10.0, 10, 1.0), (2.5, 2, 1.0), (1.0, 1, 1.0), (0.25, 1, 4.0)])
def test_a_rate_is_cut_into_whole_sends_per_period(rate: float, total: int, period: float) -> None:
    window = CampaignWindow(rate, margin=0.025)
    assert (window.total, window.period) == (total, period)
    assert window.units == total, "alone, an instance holds every unit"
    assert window.span == pytest.approx(period * 1.025)


def test_a_share_admits_only_its_units_in_any_window() -> None:
    window = CampaignWindow(10.0, margin=0.025)
    window.set_units(3)
    assert window.share_rate == 3.0
    admitted, now = [], 100.0
    for step in range(400):  # 4 s, asking every 10 ms, on the window's own clock
        now = 100.0 + step * 0.01
        if window.try_admit(now):
            admitted.append(now)
    assert all(sum(1 for t in admitted if start <= t < start + 1.0) <= 3 for start in admitted)
    assert len(admitted) >= 11, "and does use them: about 3 a second"


def test_no_share_admits_nothing_and_a_lower_rate_shrinks_the_share_at_once() -> None:
    window = CampaignWindow(10.0, margin=0.025)
    window.set_units(0)
    assert window.free_in(0.0) == window.period
    window.set_units(50)
    assert window.units == 10, "never more than the rate's units"
    window.set_rate(4.0)
    assert (window.total, window.units) == (4, 4)


def test_after_a_gap_the_window_catches_up_a_little_and_never_past_its_count() -> None:
    """Account slots come in runs: the window may send ahead of its pace and catch up after a gap,
    by a few sends each way, so a run of slots is used; the count per window still holds."""
    window = CampaignWindow(50.0, margin=0.025)
    assert window.try_admit(10.0)
    burst = 0
    while window.try_admit(11.0):  # one second later, slots arrive at once
        burst += 1
    spacing = 1 / (50 * 0.975)
    assert burst == 2 * RUN_SENDS + 1, "a short burst, no more"
    assert abs(window.sendable_within(0.1, 11.0) - 0.1 / spacing) <= 1, "what its pace lets through next"
    assert window.sendable_within(0.1, 11.0) < window.units
    sends = [10.0] + [11.0] * burst
    now = 11.0
    while now < 14.0:  # then it keeps asking every millisecond
        now += 0.001
        if window.try_admit(now):
            sends.append(now)
    assert max(sum(1 for t in sends if start <= t < start + 1.0) for start in sends) <= 50


def test_attack_a_lower_rate_shrinks_this_instances_units_in_proportion() -> None:
    """Three instances hold 4 units each of 12/s; the rate drops to 3/s. Clamping each to the new
    total (3) let the cluster send 9/s until every instance's next renewal answered; in proportion,
    the shares still add up to no more than the new rate at once."""
    windows = [CampaignWindow(12, margin=0.025) for _ in range(3)]
    for window in windows:
        window.set_units(4)
        window.set_rate(3)
    assert sum(w.units for w in windows) <= 3
    one = CampaignWindow(12, margin=0.025)  # alone it keeps the whole of the lower rate
    one.set_rate(3)
    assert one.units == 3
    one.set_rate(12)
    assert one.units == 3, "a higher rate grows only with the share"
