"""More attacks on shared campaign rates (migration 0006, sender.campaign_share), end to end with
real daemon processes and the strict in-process fake SES: pause/resume/cancel storms on rated
campaigns, an instance stopped (SIGSTOP) while it holds units, and slow rates (one unit).

Rates are judged at the fake SES by arrival time, per campaign; every test waits on observable
conditions (sleeps only as attack inputs: how long a state lasts, how long a process is stopped).
"""

from __future__ import annotations

import asyncio
import random
import signal
from collections import Counter
from functools import partial
from itertools import pairwise

import asyncpg
import pytest

from sender.campaign_share import CampaignShare
from sender.config import Settings
from sender.daemon import Daemon
from sender.demo.fakeses import FakeSES
from tests.e2e.test_scaleout import _live, _sent, instances
from tests.helpers import add_contacts, add_template, max_in_window, recipient_counts, running_daemon, wait_for

HEARTBEAT_ENV = {"SENDER_HEARTBEAT_INTERVAL": "0.2"}  # the campaigns each instance runs, seen quickly


async def _rated_campaigns(db: asyncpg.Connection, sizes_and_rates: list[tuple[int, float]]) -> list[int]:
    """One campaign per (recipients, rate), each mailing contacts of its own (no address shared), queued."""
    template = await add_template(db)
    ids: list[int] = []
    start = 0
    for size, rate in sizes_and_rates:
        contacts = await add_contacts(db, size, start=start)
        start += size
        campaign = int(await db.fetchval(
            "INSERT INTO campaigns (name, template_id, status, rate_per_sec) VALUES ('c', $1, 'draft', $2) "
            "RETURNING id", template, rate))
        await db.execute(
            "INSERT INTO campaign_recipients (campaign_id, contact_id, email) "
            "SELECT $1, id, email FROM contacts WHERE id = ANY($2::bigint[])", campaign, contacts)
        ids.append(campaign)
    return ids


async def _queue(db: asyncpg.Connection, ids: list[int]) -> None:
    await db.execute("UPDATE campaigns SET status = 'queued' WHERE id = ANY($1::bigint[])", ids)


async def _addresses(db: asyncpg.Connection, campaign: int) -> set[str]:
    return {r["email"] for r in await db.fetch("SELECT email FROM campaign_recipients WHERE campaign_id = $1",
                                               campaign)}


def _arrivals(fake: FakeSES, addresses: set[str]) -> list[float]:
    return sorted(m.received_at for m in fake.messages if m.to[0] in addresses)


def _no_duplicates(fake: FakeSES) -> Counter[str]:
    per_address = Counter(m.to[0] for m in fake.messages)
    twice = sorted(a for a, n in per_address.items() if n > 1)
    assert not twice, f"mailed twice: {twice}"
    return per_address


async def _received(fake: FakeSES, n: int) -> bool:
    return len(fake.messages) >= n


async def _run_by_none(db: asyncpg.Connection, campaign: int) -> bool:
    """No live instance reports a runner for the campaign (it stopped everywhere)."""
    return not await db.fetchval(
        "SELECT count(*) FROM sender_instances WHERE heartbeat_at > now() - interval '2 s' AND $1 = ANY(campaigns)",
        campaign)


async def _finished(db: asyncpg.Connection, campaign: int) -> bool:
    row = await db.fetchrow("SELECT status, finished_at FROM campaigns WHERE id = $1", campaign)
    return row["status"] == "sent" or (row["status"] == "cancelled" and row["finished_at"] is not None)


# -- 1. pause/resume/cancel storm on rated campaigns across three instances -----------------------

async def test_pause_resume_storm_on_a_rated_campaign_across_three_instances_keeps_its_rate(
        db: asyncpg.Connection, settings: Settings, fake_ses: FakeSES) -> None:
    """A 12/s campaign paused and resumed 14 times across 3 instances, at arbitrary moments and also
    each time only once every instance stopped it (so each resume starts fresh runners, with empty
    windows, right after the old ones gave their units up); a 6/s campaign beside it is cancelled
    halfway. The stormed campaign ends with everyone sent exactly once, and neither campaign's rate
    is exceeded in any window by arrival time: a runner started again must not reuse units its
    predecessor used in the last window."""
    fake_ses.account.max_send_rate = 200
    fake_ses.latency = 0.03
    stormed, cancelled = await _rated_campaigns(db, [(110, 12.0), (60, 6.0)])
    rng = random.Random(5)
    async with instances(settings, 3, **HEARTBEAT_ENV) as procs:
        await wait_for(lambda: _live(db, 3), timeout=60)
        await _queue(db, [stormed, cancelled])
        await wait_for(lambda: _received(fake_ses, 15), timeout=60)
        for n in range(14):
            await db.execute("UPDATE campaigns SET status = 'paused' WHERE id = ANY($1::bigint[]) "
                             "AND status = 'sending'", [stormed, cancelled])
            if n % 2:
                await wait_for(lambda: _run_by_none(db, stormed), timeout=20)
            else:
                await asyncio.sleep(rng.uniform(0.0, 0.3))  # arbitrary moments: the attack input
            await db.execute("UPDATE campaigns SET status = 'sending' WHERE id = ANY($1::bigint[]) "
                             "AND status = 'paused'", [stormed, cancelled])
            before = len(fake_ses.messages)
            if n % 3 == 0:  # sending again before the next pause: the resumed runners hold and use units
                await wait_for(partial(_received, fake_ses, before + 3), timeout=20)
            else:
                await asyncio.sleep(rng.uniform(0.0, 0.4))
            if n == 7:
                await db.execute("UPDATE campaigns SET status = 'cancelled' WHERE id = $1 "
                                 "AND status IN ('sending', 'paused', 'queued')", cancelled)
        await wait_for(lambda: _finished(db, stormed), timeout=60)
        await wait_for(lambda: _finished(db, cancelled), timeout=30)
        assert all(p.returncode is None for p in procs)
    assert await recipient_counts(db, stormed) == {"sent": 110}
    _no_duplicates(fake_ses)
    stormed_at = _arrivals(fake_ses, await _addresses(db, stormed))
    cancelled_at = _arrivals(fake_ses, await _addresses(db, cancelled))
    assert len(stormed_at) == 110
    assert max_in_window(stormed_at) <= 12, "the stormed campaign's rate held, by arrival time"
    assert max_in_window(cancelled_at) <= 6, "the cancelled campaign's rate held, by arrival time"
    counts = await recipient_counts(db, cancelled)
    assert set(counts) <= {"sent", "skipped"} and counts.get("sent", 0) == len(cancelled_at), counts


# -- 2. an instance stopped while it holds units ------------------------------------------------

async def _units(db: asyncpg.Connection, campaign: int) -> dict[str, int]:
    """Units held now (hold not run out) by each instance."""
    return {r["instance_id"]: r["units"] for r in await db.fetch(
        "SELECT instance_id, units FROM sender_campaign_shares WHERE campaign_id = $1 AND held_until > now()",
        campaign)}


async def _holds_units_and_sent(db: asyncpg.Connection, fake: FakeSES, campaign: int, node: str, n: int) -> bool:
    return len(fake.messages) >= n and (await _units(db, campaign)).get(node, 0) > 0


async def test_an_instance_stopped_while_holding_units_never_sends_them_again_after_the_others_took_them(
        db: asyncpg.Connection, settings: Settings, fake_ses: FakeSES) -> None:
    """SIGSTOP node-0 while it holds units of a 12/s campaign that 3 instances send; the others take
    its units over only once its hold and a window have passed; SIGCONT after ~5 s: node-0 must not
    use its lapsed units (nor stale ones), so no window by arrival holds more than 12, and nobody is
    mailed twice (the stall is shorter than the instance timeout: its rows are still its own)."""
    rate = 12
    fake_ses.account.max_send_rate = 200
    fake_ses.latency = 0.02
    (campaign,) = await _rated_campaigns(db, [(180, float(rate))])
    async with instances(settings, 3, **HEARTBEAT_ENV) as procs:
        await wait_for(lambda: _live(db, 3), timeout=60)
        await _queue(db, [campaign])
        await wait_for(lambda: _holds_units_and_sent(db, fake_ses, campaign, "node-0", 25), timeout=60)
        procs[0].send_signal(signal.SIGSTOP)
        stopped = await db.fetchrow(
            "SELECT units, held_until FROM sender_campaign_shares WHERE campaign_id = $1 AND instance_id = 'node-0'",
            campaign)
        others_before = sum(u for i, u in (await _units(db, campaign)).items() if i != "node-0")
        stall = asyncio.create_task(asyncio.sleep(5.0))  # the attack input: how long node-0 is stopped
        took_over = None
        while not stall.done():
            held = await db.fetch(
                "SELECT instance_id, units, held_until FROM sender_campaign_shares "
                "WHERE campaign_id = $1 AND instance_id <> 'node-0' AND held_until > now()", campaign)
            if took_over is None and sum(r["units"] for r in held) > others_before and stopped["units"] > 0:
                took_over = held  # the first renewal seen that grew into node-0's units
            await asyncio.sleep(0.02)
        procs[0].send_signal(signal.SIGCONT)
        assert took_over is not None, "the others never took node-0's units over while it was stopped"
        grown_at = max(r["held_until"] for r in took_over)  # its renewal set held_until = then + 3 s
        cool = 1.0 * (1 + settings.rate_headroom)
        # a renewal that grew set its held_until 3 s ahead: it happened only after node-0's hold and a window
        assert (grown_at - stopped["held_until"]).total_seconds() - 3.0 >= cool - 0.01, (took_over, stopped)
        await wait_for(lambda: _sent(db, campaign), timeout=60)
        assert all(p.returncode is None for p in procs)
    assert await recipient_counts(db, campaign) == {"sent": 180}
    assert len(_no_duplicates(fake_ses)) == 180
    assert fake_ses.max_in_any_window() <= rate, "the campaign's rate held through the stall, by arrival time"


# -- 3. slow rates: one unit among three instances ------------------------------------------------

async def test_slow_rated_campaigns_across_three_instances_keep_their_one_unit_and_finish(
        db: asyncpg.Connection, settings: Settings, fake_ses: FakeSES) -> None:
    """A 0.5/s and a 1.5/s campaign (one unit each) sent by 3 instances at once: never 2 sends of
    the first within 1.9 s, never 2 of the second within 1 s, by arrival; and both finish (the
    instances without the unit do not keep rows from the one holding it)."""
    fake_ses.account.max_send_rate = 200
    fake_ses.latency = 0.02
    slow, slowish = await _rated_campaigns(db, [(6, 0.5), (10, 1.5)])
    async with instances(settings, 3, **HEARTBEAT_ENV) as procs:
        await wait_for(lambda: _live(db, 3), timeout=60)
        await _queue(db, [slow, slowish])
        await wait_for(lambda: _sent(db, slowish), timeout=40)
        await wait_for(lambda: _sent(db, slow), timeout=40)
        assert all(p.returncode is None for p in procs)
    assert await recipient_counts(db, slow) == {"sent": 6}
    assert await recipient_counts(db, slowish) == {"sent": 10}
    assert len(_no_duplicates(fake_ses)) == 16
    slow_at = _arrivals(fake_ses, await _addresses(db, slow))
    slowish_at = _arrivals(fake_ses, await _addresses(db, slowish))
    assert max_in_window(slow_at, 1.9) <= 1, [round(b - a, 3) for a, b in pairwise(slow_at)]
    assert max_in_window(slowish_at, 1.0) <= 1, [round(b - a, 3) for a, b in pairwise(slowish_at)]


# -- 1b. a pause whose release of the share fails ------------------------------------------------

async def _no_runner(daemon: Daemon, campaign: int) -> bool:
    return campaign not in daemon.runners


async def _has_runner(daemon: Daemon, campaign: int) -> bool:
    return campaign in daemon.runners


async def test_a_runner_started_again_after_its_share_release_failed_does_not_reuse_the_units_just_used(
        db: asyncpg.Connection, settings: Settings, fake_ses: FakeSES, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pausing a 12/s campaign stops its runner and gives its units up: the ones used in the last
    window cool first (release_share). When that release fails (the connection drops just then: it
    is swallowed) and the campaign is resumed at once, the new runner's first renewal reports the
    units as unused (its window is new and empty), so the database hands them straight back, and it
    sends a fresh window's worth on top of the old runner's last one: over the campaign's rate."""
    fake_ses.account.max_send_rate = 200
    fake_ses.latency = 0.02
    (campaign,) = await _rated_campaigns(db, [(100, 12.0)])

    async def dropped(self: CampaignShare, cool: float, used: int) -> None:
        self._units, self._until = 0, 0.0
        raise ConnectionResetError("connection dropped while giving the share up")

    monkeypatch.setattr(CampaignShare, "release", dropped)
    async with running_daemon(settings) as daemon:
        await _queue(db, [campaign])
        for n in range(3):
            await wait_for(partial(_received, fake_ses, 15 + 20 * n), timeout=30)  # a full window sent
            await db.execute("UPDATE campaigns SET status = 'paused' WHERE id = $1", campaign)
            await wait_for(lambda: _no_runner(daemon, campaign), timeout=10)
            await db.execute("UPDATE campaigns SET status = 'sending' WHERE id = $1", campaign)
            await wait_for(lambda: _has_runner(daemon, campaign), timeout=10)
        await wait_for(lambda: _sent(db, campaign), timeout=60)
    assert await recipient_counts(db, campaign) == {"sent": 100}
    _no_duplicates(fake_ses)
    assert fake_ses.max_in_any_window() <= 12, "a resumed runner reused units its predecessor had just used"
