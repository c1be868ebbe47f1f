"""The account cap and what each campaign may use of it (SPEC §5).

The one owner of the numbers: `cap` comes from SENDER_MAX_RATE or GetAccount, `sandbox` from
GetAccount, `instances` from the heartbeat (for display: instances no longer split the cap, they
share it through sender.shared_rate). The account cap is enforced, paced and cut on throttling in
sender.shared_rate; a campaign's own rate by CampaignWindow, on each instance for its share of the
rate (sender.campaign_share).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Hashable

WAITING_SECONDS = 0.05  # requests kept waiting at the wire: about 50 ms of sending
CREDIT = 4  # places a flow that briefly had nothing waiting may catch up on (sender.ratelimit.WaitingRoom)
RUN_SECONDS = 0.1  # a campaign's window may send this far ahead of its even schedule, or catch up on this
# much of it after a gap: account slots reach an instance in runs of about this length (its grants) ...
RUN_SENDS = 4  # ... but never more than this many sends each way: a burst stays within the jitter margin


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


class WaitingRoom:
    """Requests dispatched towards a rate but not yet past it, kept to about WAITING_SECONDS of
    sending: a pause withdraws only those, and no herd wakes for every free slot.

    Places go out by self-clocked fair queueing over flows (campaigns): each request is tagged
    max(the room's clock, its flow's last tag) + 1/weight, and a free place goes to the smallest tag.
    Flows that always wait therefore get places in proportion to their weights (a campaign's
    rate_per_sec, or an equal share of the cap when it has none), one with few requests takes what
    it needs, and within a flow requests keep their order. A flow that waits for one request to pass
    before it asks again (a rated campaign's own window) would lose its turn every time it was away,
    and with it its share: it keeps up to CREDIT places of lag instead. One flow (the default) is
    plain FIFO.
    """

    def __init__(self, rate: Callable[[], float], *, at_least: int = 2, seconds: float = WAITING_SECONDS) -> None:
        self._rate = rate
        self._at_least = at_least
        self._seconds = seconds
        self.pending = 0
        self._waiters: list[tuple[float, int, asyncio.Future[None]]] = []  # a heap by (tag, arrival)
        self._tags: dict[Hashable, tuple[float, float]] = {}  # each flow's last tag, and the lag it may keep
        self._now = 0.0  # the tag of the last place given: the room's virtual clock
        self._arrival = itertools.count()

    def has_room(self) -> bool:
        return self.pending < max(self._at_least, math.ceil(self._rate() * self._seconds))

    async def acquire(self, flow: Hashable = None, weight: float = 1.0) -> None:
        """A place for one more request of `flow`, given by fair share among the flows waiting: a
        busy campaign's dispatcher cannot take every place that frees while a small campaign's waits."""
        step = 1.0 / max(weight, 1e-6)
        last = self._tags.get(flow)
        tag = (self._now if last is None else max(self._now - CREDIT * step, last[0])) + step
        self._tags[flow] = (tag, CREDIT * step)
        if self.has_room() and not self._waiters:
            self.pending += 1
            self._now = max(self._now, tag)
            return
        place: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (tag, next(self._arrival), place)
        heapq.heappush(self._waiters, entry)
        try:
            await place
        except asyncio.CancelledError:
            if place.done() and not place.cancelled():
                self.release()  # it was given to us just as we were cancelled: pass it on
            elif entry in self._waiters:  # a release in between may already have dropped it, unserved
                self._waiters.remove(entry)
                heapq.heapify(self._waiters)
            raise

    def release(self) -> None:
        """That request passed, or will never get here: its place goes to the smallest tag waiting."""
        self.pending -= 1
        while self._waiters and self.has_room():
            tag, _, place = heapq.heappop(self._waiters)
            if not place.done():
                self.pending += 1
                self._now = max(self._now, tag)
                place.set_result(None)
        if len(self._tags) > 2 * len(self._waiters) + 64:  # flows quiet for long start afresh at the clock
            self._tags = {flow: last for flow, last in self._tags.items() if last[0] > self._now - last[1]}


class CampaignWindow:
    """A campaign's rate_per_sec, as far as this instance's share of it goes: at most `units` sends
    in any window of `period` seconds (plus the margin, for arrival jitter): the guarantee. Within
    it, sends follow an even schedule, loosely: a send may go up to a run (RUN_SECONDS, at most
    RUN_SENDS sends) ahead of it, and after a gap the schedule catches up on up to a run. Account
    slots reach an instance in runs (its grants, between other instances' runs); a strict pace
    would lose every send that fell outside its own runs. Bursts stay short (2 * RUN_SENDS) so that
    their spread on the way to SES stays within the margin.

    The rate is cut into `total` units: floor(rate) sends per second, or below 1/s one send per
    1/rate seconds. Alone, an instance holds them all; with several, each holds its share
    (sender.campaign_share), so their windows together never hold more than the rate. A request
    waits for the window to open before it asks for an account slot (so it neither holds nor wastes
    one meanwhile), then is counted on the time it really goes out, after the slot: a busy event
    loop can delay sends but never bunch them over the rate.
    """

    def __init__(self, rate: float, *, margin: float) -> None:
        self._margin = margin
        self._times: deque[float] = deque()
        self._next = -math.inf  # the even schedule: the next send is due then (none yet: now)
        self.rate = rate
        self.total = 1
        self.units = 1
        self.period = 1.0
        self.set_rate(rate)
        self.units = self.total
        # requests past the dispatcher, not yet sent: enough for a run of account slots
        self.room = WaitingRoom(lambda: max(self.share_rate, 1e-3), at_least=1, seconds=WAITING_SECONDS + RUN_SECONDS)

    def set_rate(self, rate: float) -> None:
        """The campaign's rate (its units may shrink with it at once; growth comes with the share)."""
        self.rate = rate = max(rate, 1e-3)
        before = self.total
        self.total, self.period = (math.floor(rate), 1.0) if rate >= 1.0 else (1, 1.0 / rate)
        self.units = self.scaled(self.units, before)

    def scaled(self, units: int, total: int) -> int:
        """`units` of a rate of `total` units, as a share of the current rate: in proportion when it
        is smaller, so the shares of every instance still add up to no more than it (clamping each
        to the new total let N instances send N times the lower rate until their next renewal)."""
        if self.total < total:
            units = units * self.total // max(total, 1)
        return max(0, min(units, self.total))

    def set_units(self, units: int) -> None:
        """This instance's share of the units, from sender.campaign_share."""
        self.units = max(0, min(units, self.total))

    @property
    def span(self) -> float:
        """The window the units are counted in: the period and the margin."""
        return self.period * (1.0 + self._margin)

    @property
    def share_rate(self) -> float:
        """What this instance may send of the campaign, per second."""
        return self.units / self.period

    def free_in(self, now: float) -> float:
        """Seconds until one more send fits (0: now)."""
        if self.units < 1:
            return self.period  # no share here (for now): look again later
        span = self.span
        while self._times and now - self._times[0] >= span:
            self._times.popleft()
        paced = max(0.0, self._schedule(now) - self._run() - now)
        if len(self._times) < self.units:
            return paced
        return max(paced, self._times[-self.units] + span - now + 0.0005)

    def used(self, now: float | None = None) -> int:
        """Sends counted in the window that ends now."""
        now = time.monotonic() if now is None else now
        return sum(1 for t in self._times if now - t < self.span)

    async def wait_open(self, give_up: Callable[[], bool]) -> bool:
        """Until the window would let one more send through (True), or `give_up` says to stop waiting
        (False; asked on every wake-up, at least every half second)."""
        while True:
            wait = self.free_in(time.monotonic())
            if wait <= 0:
                return True
            await asyncio.sleep(min(wait, 0.5))
            if give_up():
                return False

    def try_admit(self, now: float | None = None) -> bool:
        """Count one send now if it fits (`now`: time.monotonic(), unless given)."""
        now = time.monotonic() if now is None else now
        if self.free_in(now) > 0:
            return False
        self._times.append(now)
        self._next = self._schedule(now) + self._spacing()
        return True

    def sendable_within(self, seconds: float, now: float | None = None) -> int:
        """How many sends the window lets through in the next `seconds`, by its schedule: what to ask
        account slots for (more would only expire, and keep them from the other instances)."""
        now = time.monotonic() if now is None else now
        if self.units < 1:
            return 0
        ahead = now + seconds + self._run() - self._schedule(now)
        return max(0, min(self.units, math.floor(ahead / self._spacing()) + 1))

    def _schedule(self, now: float) -> float:
        """When the next send is due on the even schedule, no further behind now than a run."""
        return max(self._next, now - self._run()) if self._next > -math.inf else now

    def _run(self) -> float:
        """How far a send may go ahead of the schedule, or the schedule catch up after a gap."""
        return min(RUN_SECONDS, RUN_SENDS * self._spacing())

    def _spacing(self) -> float:
        return self.period / (max(self.units, 1) * (1 - self._margin))
