"""A campaign's rate shared by several instances (migration 0006, sender.campaign_share), against a
real PostgreSQL: units are split evenly among the instances that want them, change hands only after
they have cooled, and never add up to more than the rate's, whatever the instances do."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from sender.campaign_share import CampaignShare
from sender.db import QUERIES
from tests.helpers import add_campaign, add_template

COOL = 1.0  # long enough that nothing here cools by itself: tests move the clock instead


@pytest.fixture
async def campaign(db: asyncpg.Connection) -> int:
    return await add_campaign(db, await add_template(db), status="sending", rate=10)


async def _renew(db: asyncpg.Connection, campaign: int, instance: str, *, enforcing: int, want: int,
                 total: int = 10, used: int | None = None) -> int:
    """One renewal; unless told otherwise, the instance sent all it held in its last window."""
    used = total if used is None else used
    row = await db.fetchrow(QUERIES["campaign_share"], campaign, instance, total, enforcing, used, want, 3.0, COOL)
    assert row["granted"] <= row["fair"] or row["granted"] <= enforcing, "never grown past the fair share"
    return int(row["granted"])


async def _cooled(db: asyncpg.Connection) -> None:
    """One window later: every unit given up has cooled."""
    await db.execute("UPDATE sender_campaign_shares SET cooling_until = cooling_until - interval '10 seconds'")


async def _accounted(db: asyncpg.Connection, campaign: int) -> int:
    """Units the database counts as somebody's (held, or cooling)."""
    return int(await db.fetchval(
        "SELECT coalesce(sum(CASE WHEN held_until + make_interval(secs => $2) > clock_timestamp() THEN units END), 0)"
        "     + coalesce(sum(CASE WHEN cooling_until > clock_timestamp() THEN cooling END), 0)"
        "  FROM sender_campaign_shares WHERE campaign_id = $1", campaign, COOL))


async def test_one_instance_alone_gets_the_whole_rate(db: asyncpg.Connection, campaign: int) -> None:
    assert await _renew(db, campaign, "a", enforcing=0, want=10) == 10
    assert await _renew(db, campaign, "a", enforcing=10, want=10) == 10, "renewing keeps it"


async def test_a_second_instance_gets_half_only_after_the_first_gave_it_up_and_it_cooled(
        db: asyncpg.Connection, campaign: int) -> None:
    assert await _renew(db, campaign, "a", enforcing=0, want=10) == 10
    assert await _renew(db, campaign, "b", enforcing=0, want=10) == 0, "nothing is free yet"
    assert await _renew(db, campaign, "a", enforcing=10, want=10) == 5, "a is told to give half up"
    assert await _renew(db, campaign, "b", enforcing=0, want=10) == 0, "a has not said it did: still a's"
    assert await _renew(db, campaign, "a", enforcing=5, want=10) == 5, "a says it enforces 5 now"
    assert await _renew(db, campaign, "b", enforcing=0, want=10) == 0, "the 5 are cooling"
    assert await _accounted(db, campaign) == 10
    await _cooled(db)
    assert await _renew(db, campaign, "b", enforcing=0, want=10) == 5
    assert await _renew(db, campaign, "a", enforcing=5, want=10) == 5, "and it stays even"
    assert await _accounted(db, campaign) == 10


async def test_units_given_up_unused_in_the_last_window_go_at_once(db: asyncpg.Connection, campaign: int) -> None:
    """A new campaign: the first instance holds every unit but has sent 2 when the second asks."""
    await _renew(db, campaign, "a", enforcing=0, want=10)
    assert await _renew(db, campaign, "b", enforcing=0, want=10) == 0
    assert await _renew(db, campaign, "a", enforcing=10, want=10, used=2) == 5
    assert await _renew(db, campaign, "a", enforcing=5, want=10, used=3) == 5, "a enforces 5, sent 3"
    assert await _renew(db, campaign, "b", enforcing=0, want=10) == 5, "none of the 5 was used: no cooling"
    assert await _accounted(db, campaign) == 10
    await _renew(db, campaign, "b", enforcing=5, want=0, used=5)
    assert await _renew(db, campaign, "b", enforcing=0, want=0, used=4) == 0
    assert await _renew(db, campaign, "a", enforcing=5, want=10) == 6, "b used 4 of its 5: the fifth goes at once"
    assert await _accounted(db, campaign) == 10, "the 4 cool"


async def test_an_instance_that_runs_out_leaves_the_whole_rate_to_the_one_with_the_tail(
        db: asyncpg.Connection, campaign: int) -> None:
    await _renew(db, campaign, "a", enforcing=0, want=10)
    await _renew(db, campaign, "b", enforcing=0, want=10)
    await _renew(db, campaign, "a", enforcing=10, want=10)
    await _renew(db, campaign, "a", enforcing=5, want=10)
    await _cooled(db)
    assert await _renew(db, campaign, "b", enforcing=0, want=10) == 5
    assert await _renew(db, campaign, "b", enforcing=5, want=0) == 0, "b ran out: it wants nothing"
    assert await _renew(db, campaign, "a", enforcing=5, want=10) == 5, "b has not confirmed yet"
    assert await _renew(db, campaign, "b", enforcing=0, want=0) == 0
    assert await _renew(db, campaign, "a", enforcing=5, want=10) == 5, "b's units are cooling"
    await _cooled(db)
    assert await _renew(db, campaign, "a", enforcing=5, want=10) == 10


async def test_a_dead_instances_units_come_back_only_after_its_hold_and_a_window(
        db: asyncpg.Connection, campaign: int) -> None:
    await _renew(db, campaign, "a", enforcing=0, want=10)
    assert await _renew(db, campaign, "b", enforcing=0, want=10) == 0
    # a dies: its hold (3 s) runs out; it stopped using it half a second before, by its own clock
    await db.execute("UPDATE sender_campaign_shares SET held_until = clock_timestamp() - interval '0.5 seconds'"
                     " WHERE instance_id = 'a'")
    assert await _renew(db, campaign, "b", enforcing=0, want=10) == 0, "within a window of its end: still a's"
    await db.execute("UPDATE sender_campaign_shares SET held_until = held_until - interval '1 second'"
                     " WHERE instance_id = 'a'")
    assert await _renew(db, campaign, "b", enforcing=0, want=10) == 10
    assert await db.fetchval("SELECT count(*) FROM sender_campaign_shares WHERE instance_id = 'a'") == 0, \
        "the dead instance's row is gone"


async def test_a_slow_rate_is_one_unit_kept_by_its_holder(db: asyncpg.Connection, campaign: int) -> None:
    """Below two units a second, instances do not trade the unit back and forth: the holder keeps it."""
    assert await _renew(db, campaign, "b", enforcing=0, want=1, total=1) == 1
    assert await _renew(db, campaign, "a", enforcing=0, want=1, total=1) == 0
    assert await _renew(db, campaign, "b", enforcing=1, want=1, total=1) == 1, "no churn to the smaller name"
    assert await _renew(db, campaign, "a", enforcing=0, want=1, total=1) == 0


async def test_three_instances_split_unevenly_rates_evenly_and_one_probing_takes_one(
        db: asyncpg.Connection, campaign: int) -> None:
    for name in "abc":
        await _renew(db, campaign, name, enforcing=0, want=10)
    assert await _renew(db, campaign, "a", enforcing=10, want=10) == 4, "10 over 3: the holder gets the odd one"
    await _renew(db, campaign, "a", enforcing=4, want=10)
    await _cooled(db)
    assert await _renew(db, campaign, "b", enforcing=0, want=10) == 3
    assert await _renew(db, campaign, "c", enforcing=0, want=10) == 3
    assert await _accounted(db, campaign) == 10
    # c ran out and looks again with one unit: the others keep their shares, less what it needs
    assert await _renew(db, campaign, "c", enforcing=3, want=1) == 1
    assert await _renew(db, campaign, "a", enforcing=4, want=10) == 4, "a's fair share is 5 now, but none is free"
    await _renew(db, campaign, "c", enforcing=1, want=1)
    await _cooled(db)
    assert await _renew(db, campaign, "a", enforcing=4, want=10) == 5
    assert await _renew(db, campaign, "b", enforcing=3, want=10) == 4
    assert await _accounted(db, campaign) == 10


async def test_a_lower_rate_shrinks_every_share_and_the_units_never_exceed_it(
        db: asyncpg.Connection, campaign: int) -> None:
    await _renew(db, campaign, "a", enforcing=0, want=10)
    assert await _renew(db, campaign, "a", enforcing=10, want=4, total=4) == 4
    assert await _renew(db, campaign, "b", enforcing=0, want=4, total=4) == 0, "a's old units are still its own"
    await _renew(db, campaign, "a", enforcing=4, want=4, total=4)
    await _cooled(db)
    assert await _renew(db, campaign, "b", enforcing=0, want=4, total=4) == 0, "a holds all 4 of the new rate"
    assert await _renew(db, campaign, "a", enforcing=4, want=4, total=4) == 2


@pytest.fixture
async def pools(db_url: str) -> AsyncIterator[list[asyncpg.Pool]]:
    opened = [await asyncpg.create_pool(db_url, min_size=1, max_size=1) for _ in range(4)]
    yield opened
    for pool in opened:
        await pool.close()


async def test_instances_racing_with_random_wants_and_stalls_never_hold_more_than_the_rate(
        db: asyncpg.Connection, campaign: int, pools: list[asyncpg.Pool]) -> None:
    """Four instances renew as fast as they can, on their own connections, with random wants,
    random stalls (their hold runs out) and releases. What each may use is what its CampaignShare
    says at that moment; an instance counts its sends over a window (`cool`), so in any window the
    largest share each had in it, added up over the instances, must stay within the rate."""
    total, cool, hold, margin = 10, 0.05, 0.3, 0.1
    started = time.monotonic()
    until = started + 4.0
    timelines: dict[str, list[tuple[float, float, int]]] = {}  # (from, to, units) while in force
    rng = random.Random(7)

    def sent_within(spans: list[tuple[float, float, int]], now: float) -> int:
        """What the instance may have sent in its last window: the most it held there (as the check
        below assumes)."""
        held = [units for start, stop, units in spans if stop > now - cool]
        return max(held, default=0)

    async def instance(name: str, pool: asyncpg.Pool) -> None:
        share = CampaignShare(pool, campaign, name, hold=hold, margin=margin)
        spans = timelines.setdefault(name, [])
        want = total
        while time.monotonic() < until:
            roll = rng.random()
            if roll < 0.005:
                used = sent_within(spans, time.monotonic())
                spans.append((time.monotonic(), 0.0, 0))  # it stops using its units before it says so
                await share.release(cool, used)
            elif roll < 0.01:
                await asyncio.sleep(rng.uniform(0.1, 0.5))  # stalled: the hold runs out meanwhile
            else:
                if rng.random() < 0.02:  # it ran out, looks again, finds rows
                    want = rng.choice([0, 1, total])
                units = await share.renew(total, want, cool, sent_within(spans, time.monotonic()))
                now = time.monotonic()
                # in force from now until the next answer or the end of the hold, whichever first
                spans.append((now, share.valid_until(), units))
            await asyncio.sleep(0)

    await asyncio.gather(*(instance(f"i{n}", pool) for n, pool in enumerate(pools)))
    ended = time.monotonic()

    def in_force(name: str) -> list[tuple[float, float, int]]:
        """(from, to, units): what the instance could use, from each answer until the next one or the
        end of its hold, whichever comes first."""
        spans = timelines[name]
        return [(start, min(stop, spans[i + 1][0] if i + 1 < len(spans) else ended), units)
                for i, (start, stop, units) in enumerate(spans) if units]

    pieces = {name: in_force(name) for name in timelines}

    def peak(name: str, at: float) -> int:
        """The most units the instance could use in the window (at - cool, at]."""
        return max((units for start, stop, units in pieces[name] if start <= at and stop > at - cool), default=0)

    moments = sorted({start for spans in pieces.values() for start, _, _ in spans})
    worst = max(sum(peak(name, at) for name in pieces) for at in moments)
    together = max(sum(1 for name in pieces if peak(name, at) > 0) for at in moments)
    used = sum((stop - start) * units for spans in pieces.values() for start, stop, units in spans) / (ended - started)
    assert worst <= total, f"{worst} units in use within one window"
    assert together >= 2, "instances really shared the rate"
    assert used >= 0.3 * total, f"and used it ({used:.1f} units on average), not just refused it"
