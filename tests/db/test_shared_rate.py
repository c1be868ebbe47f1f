"""The shared send budget (migration 0005, sender.shared_rate) against a real PostgreSQL.

Several SharedRate objects on one key stand for several instances: each has its own pool, so the
grants really race in the database.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from sender.db import QUERIES
from sender.ratelimit import CampaignWindow
from sender.shared_rate import (
    ACCOUNT,
    LATE,
    QUIET_SECONDS,
    RECOVERY_PER_SECOND,
    GrantLine,
    SharedRate,
    WirePass,
    Withdrawn,
)
from tests.helpers import max_in_window

MARGIN = 0.025


Pools = Callable[[], Awaitable[GrantLine]]


@pytest.fixture
async def pools(db_url: str) -> AsyncIterator[Pools]:
    """A pool of its own for each simulated instance."""
    opened: list[asyncpg.Pool] = []

    async def line() -> GrantLine:
        pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
        opened.append(pool)
        return GrantLine(pool)

    yield line
    for pool in opened:
        await pool.close()


async def _spend(budget: SharedRate, n: int) -> list[float]:
    """Take n tokens one after another, as one busy instance would; the times they were spent."""
    spent = []
    for _ in range(n):
        await WirePass(budget).spend()
        spent.append(time.monotonic())
    return spent


async def test_three_instances_together_never_exceed_the_rate_in_any_second(
        pools: Pools) -> None:
    rate = 50.0
    budgets = []
    for _ in range(3):
        pool = await pools()
        budgets.append(SharedRate(pool, ACCOUNT, rate, demand=lambda: 100, margin=MARGIN))
    results = await asyncio.gather(*(_spend(b, 60) for b in budgets))
    times = sorted(itertools.chain.from_iterable(results))
    assert len(times) == 180
    assert max_in_window(times) <= rate, "the three together stay under the cap"
    # the budget is shared, not split: together they run at about the whole rate
    assert (len(times) - 1) / (times[-1] - times[0]) > rate * 0.9
    assert all(len(r) == 60 for r in results) and all(b.counters.grants >= 1 for b in budgets)


async def test_a_rate_of_one_per_second_shared_by_three_never_sends_two_in_a_second(
        pools: Pools) -> None:
    budgets = []
    for _ in range(3):
        pool = await pools()
        budgets.append(SharedRate(pool, ACCOUNT, 1.0, demand=lambda: 1, margin=MARGIN))
    results = await asyncio.gather(*(_spend(b, 1) for b in budgets))
    times = sorted(itertools.chain.from_iterable(results))
    assert max_in_window(times) == 1
    assert min(b - a for a, b in itertools.pairwise(times)) >= 1.0
    assert sum(b.counters.refused for b in budgets) >= 1, "the third was told to come back later"


async def test_slots_of_a_stalled_instance_expire_and_are_never_used_late(pools: Pools) -> None:
    pool = await pools()
    budget = SharedRate(pool, ACCOUNT, 100.0, demand=lambda: 10, margin=MARGIN)
    first = await budget.take()
    held = budget.holding()
    assert held >= 1, "a grant covers about 100 ms: several slots"
    time.sleep(0.15)  # a blocked event loop: every slot it holds is now stale
    late = time.monotonic()
    slot = await budget.take()
    assert budget.counters.expired >= held
    assert slot >= late - LATE, "no stale slot is handed out"
    assert slot > first


async def test_a_dead_instances_tokens_are_not_handed_out_again(pools: Pools) -> None:
    pool_a, pool_b = await pools(), await pools()
    dead = SharedRate(pool_a, ACCOUNT, 20.0, demand=lambda: 2, margin=MARGIN)
    await dead.take()
    last_of_dead = dead._slots[-1]  # granted, never used: the instance "dies" here
    alive = SharedRate(pool_b, ACCOUNT, 20.0, demand=lambda: 2, margin=MARGIN)
    slot = await alive.take()
    assert slot >= last_of_dead + 1 / (20.0 * (1 - MARGIN)) - 0.002


async def test_a_throttle_cuts_the_shared_rate_for_everyone_and_it_recovers(db: asyncpg.Connection) -> None:
    args = (ACCOUNT, RECOVERY_PER_SECOND, QUIET_SECONDS)
    await db.fetchrow(QUERIES["rate_grant"], ACCOUNT, 100.0, 1, 0.0, 0.5, *args[1:])
    assert await db.fetchval(QUERIES["rate_throttle"], *args) == pytest.approx(0.95), "a lone 429: 5%"
    assert await db.fetchval(QUERIES["rate_throttle"], *args) == pytest.approx(0.95), "at most one cut a second"
    await db.execute("UPDATE sender_rate_budgets SET cut_at = cut_at - interval '1 second'")
    assert await db.fetchval(QUERIES["rate_throttle"], *args) == pytest.approx(0.95 * 0.8, rel=0.02), \
        "another within 10 s: real overload, 20%"
    row = await db.fetchrow(QUERIES["rate_grant"], ACCOUNT, 100.0, 1, 0.0, 0.5, *args[1:])
    assert 1 / row["spacing"] == pytest.approx(76.0, rel=0.02), "every grant after the cut is slower"
    # two seconds after the cut (one past the quiet second), it has worn off by 0.1
    await db.execute("UPDATE sender_rate_budgets SET cut_at = cut_at - interval '2 seconds'")
    row = await db.fetchrow(QUERIES["rate_grant"], ACCOUNT, 100.0, 1, 0.0, 0.5, *args[1:])
    assert 1 / row["spacing"] == pytest.approx(86.0, rel=0.02)
    await db.execute("UPDATE sender_rate_budgets SET cut_at = cut_at - interval '1 minute'")
    row = await db.fetchrow(QUERIES["rate_grant"], ACCOUNT, 100.0, 1, 0.0, 0.5, *args[1:])
    assert 1 / row["spacing"] == pytest.approx(100.0)


async def test_a_campaign_window_inside_the_account_budget_holds_its_rate(pools: Pools) -> None:
    account = SharedRate(await pools(), ACCOUNT, 100.0, demand=lambda: 5, margin=MARGIN)
    window = CampaignWindow(10.0, margin=MARGIN)
    times = []
    for _ in range(25):
        await WirePass(account, window).spend()
        times.append(time.monotonic())
    assert max_in_window(times) <= 10, "the campaign's rate holds"
    assert (len(times) - 1) / (times[-1] - times[0]) > 8, "and is used"
    assert account.counters.granted >= 25, "each send also took an account slot"


async def test_a_request_waiting_at_the_wire_is_withdrawn_when_its_campaign_stops(pools: Pools) -> None:
    pool = await pools()
    account = SharedRate(pool, ACCOUNT, 1.0, demand=lambda: 1, margin=MARGIN)
    await WirePass(account).spend()  # the next slot is a second away
    stopped = False
    waiting = asyncio.create_task(WirePass(account, withdrawn=lambda: stopped).spend())
    await asyncio.sleep(0)
    stopped = True
    with pytest.raises(Withdrawn):
        await waiting


async def test_a_bug_in_the_slot_hand_out_reaches_the_waiting_requests(pools: Pools) -> None:
    """A `withdrawn` check that raises kills the hand-out loop: the requests waiting on it fail with
    the error (and go back through the delivery's error path) instead of waiting forever."""
    pool = await pools()
    account = SharedRate(pool, ACCOUNT, 1.0, demand=lambda: 1, margin=MARGIN)
    await WirePass(account).spend()  # the next slot is a second away: the loop sleeps, then sweeps

    def broken() -> bool:
        raise KeyError("bug")

    waiting = asyncio.create_task(account.take(broken))
    with pytest.raises(RuntimeError, match="hand-out failed"):
        await asyncio.wait_for(waiting, 10)
    assert account.waiting == 0
    await WirePass(account).spend()  # and the next request starts a new loop


async def test_the_dispatcher_keeps_only_a_few_requests_waiting(pools: Pools) -> None:
    pool = await pools()
    account = SharedRate(pool, ACCOUNT, 100.0, demand=lambda: 0, margin=MARGIN)
    passes = []
    while account.room.has_room():
        await account.room.acquire()
        passes.append(WirePass(account, reserved=True))
    assert len(passes) == 5, "about 50 ms of sending at 98/s"
    await passes[0].spend()
    assert account.room.has_room(), "a request that passed gives its room back"
    passes[1].release()
    passes[1].release()
    assert account.room.pending == 3, "released once, whatever happens"
    while account.room.has_room():
        await account.room.acquire()
    late = asyncio.create_task(account.room.acquire())
    later = asyncio.create_task(account.room.acquire())
    await asyncio.sleep(0)
    assert not late.done() and not later.done()
    passes[2].release()
    await late
    assert not later.done(), "a freed place goes to the longest waiter, not to whoever asks next"
    later.cancel()


async def test_grants_never_look_ahead_past_the_horizon(db: asyncpg.Connection) -> None:
    """Many instances asking at once: later ones are told when to come back, not booked far ahead."""
    rows = [await db.fetchrow(QUERIES["rate_grant"], ACCOUNT, 10.0, 5, 0.0, 0.5, RECOVERY_PER_SECOND, QUIET_SECONDS)
            for _ in range(4)]
    assert rows[0]["granted"] == 5, "five slots 0.1 s apart fit in the half-second horizon"
    assert rows[1]["start_in"] == pytest.approx(0.5, abs=0.02) and rows[1]["granted"] <= 1
    refused = rows[3]
    assert refused["granted"] == 0
    assert refused["retry_in"] > 0
    assert refused["retry_in"] == pytest.approx(refused["start_in"] - 0.5 + 0.001, abs=1e-6)
