"""Several real daemon processes share one account cap exactly, through the budget in PostgreSQL.

Every check is at the fake SES, on arrival time: the fake answers 429 past its per-second quota,
so a window over the cap would show twice (in the window count and as throttling).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections import Counter
from collections.abc import AsyncIterator

import asyncpg

from sender.config import Settings
from sender.demo.fakeses import FakeSES
from tests.helpers import add_campaign, add_contacts, add_template, recipient_counts, wait_for
from tests.processes import sender_cli, start_daemon

# Rows of a killed instance come back after 3 s without a heartbeat.
FAST_TAKEOVER_ENV = {"SENDER_SEND_TIMEOUT": "2", "SENDER_HEARTBEAT_INTERVAL": "0.2",
                     "SENDER_INSTANCE_TIMEOUT": "3", "SENDER_LEASE_SECONDS": "5"}


@contextlib.asynccontextmanager
async def instances(settings: Settings, count: int, **env: str) -> AsyncIterator[list[asyncio.subprocess.Process]]:
    procs = [await start_daemon(settings, SENDER_INSTANCE_ID=f"node-{i}", **env) for i in range(count)]
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGCONT)
                    proc.terminate()
        for proc in procs:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 30)
            if proc.returncode is None:
                proc.kill()


async def _live(db: asyncpg.Connection, n: int) -> bool:
    return await db.fetchval("SELECT count(*) FROM sender_instances WHERE heartbeat_at > now() - interval '2 s'") >= n


async def _sending_instances(db: asyncpg.Connection, campaign: int, n: int) -> bool:
    return await db.fetchval("SELECT count(*) FROM sender_instances WHERE send_rate > 0 AND $1 = ANY(campaigns)",
                             campaign) >= n


async def _sent(db: asyncpg.Connection, campaign: int) -> bool:
    return await db.fetchval("SELECT status FROM campaigns WHERE id = $1", campaign) == "sent"


async def _received(fake: FakeSES, n: int) -> bool:
    return len(fake.messages) >= n


def _assert_exact(fake: FakeSES, cap: int, recipients: int) -> None:
    per_address = Counter(m.to[0] for m in fake.messages)
    assert len(per_address) == recipients, "every recipient reached SES"
    assert max(per_address.values()) == 1, "none twice"
    assert fake.max_in_any_window() <= cap, "no one-second window over the cap, by arrival time"
    # the margin leaves ~15 ms for arrival jitter at the fake, which shares two busy cores with three
    # daemons and PostgreSQL here: at most one refused arrival (retried, never lost), not a pattern
    assert fake.throttled_count() <= 1, "no repeated 429s from our own overshoot"


async def _campaign(db: asyncpg.Connection, recipients: int, rate: float | None = None) -> int:
    await add_contacts(db, recipients)
    return await add_campaign(db, await add_template(db), status="draft", rate=rate)


async def _queue(db: asyncpg.Connection, campaign: int) -> None:
    await db.execute("UPDATE campaigns SET status = 'queued' WHERE id = $1", campaign)


async def _kill_first_and_finish(db: asyncpg.Connection, procs: list[asyncio.subprocess.Process],
                                 campaign: int) -> set[str]:
    """kill -9 node-0, then wait for the others to finish the campaign; the addresses it held."""
    procs[0].send_signal(signal.SIGKILL)
    await asyncio.wait_for(procs[0].wait(), 10)
    held = {r["email"] for r in await db.fetch(
        "SELECT email FROM campaign_recipients WHERE status = 'sending' AND claimed_by = 'node-0'")}
    await wait_for(lambda: _sent(db, campaign), timeout=120)
    return held


async def _assert_none_lost(db: asyncpg.Connection, fake: FakeSES, campaign: int, recipients: int,
                            held: set[str]) -> None:
    assert await recipient_counts(db, campaign) == {"sent": recipients}
    per_address = Counter(m.to[0] for m in fake.messages)
    assert len(per_address) == recipients, "nothing lost"
    assert {a for a, n in per_address.items() if n > 1} <= held, "only sends in flight at the kill may repeat"


async def test_three_instances_share_a_strict_cap_exactly(db: asyncpg.Connection, settings: Settings,
                                                          fake_ses: FakeSES) -> None:
    cap = 40
    fake_ses.account.max_send_rate = cap
    fake_ses.latency = 0.02
    campaign = await _campaign(db, 320)
    async with instances(settings, 3) as procs:
        await wait_for(lambda: _live(db, 3), timeout=60)
        await _queue(db, campaign)
        # the budget is shared, not held by one: every instance reports sends through its heartbeat
        await wait_for(lambda: _sending_instances(db, campaign, 3), timeout=60)
        code, out, _ = await sender_cli(settings.database_url or "", "campaign", "status", "--json")
        overview = json.loads(out)
        assert code == 0 and {i["id"] for i in overview["summary"]["instances"]} == {"node-0", "node-1", "node-2"}
        code, out, _ = await sender_cli(settings.database_url or "", "campaign", "status", str(campaign))
        assert code == 0 and "sending from: node-" in out, out
        await wait_for(lambda: _sent(db, campaign), timeout=120)
        assert all(p.returncode is None for p in procs)
    assert await recipient_counts(db, campaign) == {"sent": 320}
    _assert_exact(fake_ses, cap, 320)


async def test_more_instances_than_the_cap_never_send_two_in_one_second(
        db: asyncpg.Connection, settings: Settings, fake_ses: FakeSES) -> None:
    fake_ses.account.max_send_rate = 1
    campaign = await _campaign(db, 5)
    async with instances(settings, 3):
        await wait_for(lambda: _live(db, 3), timeout=60)
        await _queue(db, campaign)
        await wait_for(lambda: _sent(db, campaign), timeout=60)
    assert await recipient_counts(db, campaign) == {"sent": 5}
    _assert_exact(fake_ses, 1, 5)


async def test_a_stalled_instance_cannot_break_the_cap(db: asyncpg.Connection, settings: Settings,
                                                       fake_ses: FakeSES) -> None:
    """SIGSTOP one instance mid-campaign while it holds granted tokens: they expire, never bunch."""
    cap = 30
    fake_ses.account.max_send_rate = cap
    campaign = await _campaign(db, 240)
    async with instances(settings, 3) as procs:
        await wait_for(lambda: _live(db, 3), timeout=60)
        await _queue(db, campaign)
        await wait_for(lambda: _received(fake_ses, 40), timeout=60)
        procs[0].send_signal(signal.SIGSTOP)
        stalled_at = len(fake_ses.messages)
        await wait_for(lambda: _received(fake_ses, stalled_at + 45), timeout=60)  # the others go on
        procs[0].send_signal(signal.SIGCONT)
        await wait_for(lambda: _sent(db, campaign), timeout=120)
    assert await recipient_counts(db, campaign) == {"sent": 240}
    _assert_exact(fake_ses, cap, 240)


async def test_join_and_kill_keep_the_cap_and_lose_nothing(db: asyncpg.Connection, settings: Settings,
                                                           fake_ses: FakeSES) -> None:
    cap = 30
    fake_ses.account.max_send_rate = cap
    fake_ses.latency = 0.1  # sends in flight at the kill
    campaign = await _campaign(db, 300)
    async with instances(settings, 2, **FAST_TAKEOVER_ENV) as procs:
        await wait_for(lambda: _live(db, 2), timeout=60)
        await _queue(db, campaign)
        await wait_for(lambda: _received(fake_ses, 40), timeout=60)
        procs.append(await start_daemon(settings, SENDER_INSTANCE_ID="node-late", **FAST_TAKEOVER_ENV))
        await wait_for(lambda: _live(db, 3), timeout=60)
        await wait_for(lambda: _received(fake_ses, 120), timeout=60)
        held = await _kill_first_and_finish(db, procs, campaign)
    await _assert_none_lost(db, fake_ses, campaign, 300, held)
    assert fake_ses.max_in_any_window() <= cap
    assert fake_ses.throttled_count() == 0


async def test_a_rated_campaign_is_shared_by_every_instance_and_its_rate_holds_through_a_kill(
        db: asyncpg.Connection, settings: Settings, fake_ses: FakeSES) -> None:
    """A campaign's own rate is a budget every instance sending it shares (sender.campaign_share):
    three instances send it at once, no one-second window holds more than its rate, and when one
    is killed the others take its share over (after its hold and a window) and lose nothing."""
    rate = 12
    fake_ses.account.max_send_rate = 200
    fake_ses.latency = 0.05
    campaign = await _campaign(db, 150, rate=rate)
    async with instances(settings, 3, **FAST_TAKEOVER_ENV) as procs:
        await wait_for(lambda: _live(db, 3), timeout=60)
        await _queue(db, campaign)
        await wait_for(lambda: _sending_instances(db, campaign, 3), timeout=60)
        code, out, _ = await sender_cli(settings.database_url or "", "campaign", "status", str(campaign), "--json")
        shares = [i.get("rate_units", 0) for i in json.loads(out)[0]["instances"]]
        assert code == 0 and 0 < sum(shares) <= rate, out
        code, out, _ = await sender_cli(settings.database_url or "", "campaign", "status", str(campaign))
        assert "units of its rate" in out, out
        held = await _kill_first_and_finish(db, procs, campaign)
    await _assert_none_lost(db, fake_ses, campaign, 150, held)
    assert fake_ses.max_in_any_window() <= rate, "the campaign's rate held across instances, by arrival time"
