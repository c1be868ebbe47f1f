"""Attacks on shared campaign rates (migration 0006) and on shutdown around them.

Each test waits on observable conditions only; rates are judged at the fake SES, by arrival time.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import asyncpg

from sender.config import Settings
from sender.daemon import Daemon
from sender.demo.fakeses import FakeSES
from tests.helpers import add_campaign, add_contacts, add_template, recipient_counts, wait_for


async def test_a_tick_in_flight_at_shutdown_never_starts_a_runner_after_the_runners_stopped(
        db: asyncpg.Connection, settings: Settings, fake_ses: FakeSES) -> None:
    """The rare failure of test_sigterm_mid_campaign_drains_and_leaves_nothing_sending (22 received,
    20 recorded sent): a tick that read the overview before the stop resumes after shutdown stopped
    every runner, sees the sending campaign without one and starts a new runner. Nothing ever stops
    it: it claims and sends while the daemon drains (its deliveries are not in the drain), and its
    rows are handed back as pending (or its outcomes never flushed) after SES accepted them.

    Made deterministic here: the tick is held in its account-hold step (after it read the overview)
    until shutdown has stopped the runner."""
    fake_ses.latency = 0.05
    await add_contacts(db, 150)
    campaign = await add_campaign(db, await add_template(db), rate=30)
    daemon = Daemon(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        await wait_for(lambda: _received(fake_ses, 10), timeout=60)
        entered, resume = asyncio.Event(), asyncio.Event()
        real_sync_hold = daemon.account.sync_hold

        async def held_sync_hold(*args: Any) -> None:
            entered.set()
            await resume.wait()
            await real_sync_hold(*args)

        daemon.account.sync_hold = held_sync_hold  # type: ignore[method-assign]
        await wait_for(lambda: _is_set(entered), timeout=30)  # a tick read the overview: campaign sending
        stop.set()
        await wait_for(lambda: _no_runners(daemon), timeout=30)  # shutdown stopped the runner
        resume.set()
        await asyncio.wait_for(task, 60)
    finally:
        stop.set()
        if not task.done():
            task.cancel()
    assert not daemon.runners, "a runner started after shutdown stopped them all is left running"
    counts = await recipient_counts(db, campaign)
    assert "sending" not in counts
    assert counts["sent"] == len(fake_ses.messages), (counts, len(fake_ses.messages))


async def _received(fake: FakeSES, n: int) -> bool:
    return len(fake.messages) >= n


async def _is_set(event: asyncio.Event) -> bool:
    return event.is_set()


async def _no_runners(daemon: Daemon) -> bool:
    return not daemon.runners


def _per_address(fake: FakeSES) -> Counter[str]:
    return Counter(m.to[0] for m in fake.messages)
