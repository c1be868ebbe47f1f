"""Attacks on the shared claimer (sender.claims), the exhausted-campaign claimer loop, the
sending-campaign bound and the fair waiting room: pause/resume/cancel storms over many small
campaigns, two instances racing, connections cut mid-claim, the database away mid-claim, retries
bringing rows back to exhausted campaigns. Each asserts the delivery guarantees: every recipient
ends sent/failed/skipped, nobody is mailed twice, no row stays `sending`, and nothing leaks."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from sender.config import Settings
from sender.daemon import Daemon
from sender.demo.fakeses import FakeSES, Fault
from tests.helpers import add_contacts, add_template, running_daemon, wait_for
from tests.latency_proxy import LatencyProxy


async def _campaigns(db: asyncpg.Connection, count: int, per: int, *, rated_every: int = 0,
                     rate: float = 5.0) -> list[int]:
    """`count` campaigns of `per` recipients each, campaign n mailing contacts per*n .. per*n+per-1;
    every `rated_every`-th one has a rate of its own. Queued at once."""
    await add_contacts(db, count * per)
    template = await add_template(db)
    ids = [r["id"] for r in await db.fetch(
        "INSERT INTO campaigns (name, template_id, status, rate_per_sec) "
        "SELECT 'c' || g, $1, 'draft', CASE WHEN $3 > 0 AND g % $3 = 0 THEN $4::numeric END "
        "FROM generate_series(1, $2) g ORDER BY g RETURNING id", template, count, rated_every, rate)]
    await db.execute(
        "INSERT INTO campaign_recipients (campaign_id, contact_id, email) "
        "SELECT ($1::bigint[])[(row_number() OVER (ORDER BY id) - 1) / $2 + 1], id, email FROM contacts",
        sorted(ids), per)
    await db.execute("UPDATE campaigns SET status = 'queued' WHERE id = ANY($1::bigint[])", ids)
    return sorted(ids)


async def _unsettled(db: asyncpg.Connection, ids: list[int]) -> dict[str, Any]:
    """What is not finished yet: campaigns not sent/cancelled-and-finished, rows not terminal."""
    rows = await db.fetch(
        "SELECT status, count(*) AS n FROM campaign_recipients WHERE campaign_id = ANY($1::bigint[]) "
        "AND status NOT IN ('sent', 'failed', 'skipped') GROUP BY status", ids)
    campaigns = await db.fetch(
        "SELECT status, count(*) AS n FROM campaigns WHERE id = ANY($1::bigint[]) "
        "AND NOT (status = 'sent' OR (status = 'cancelled' AND finished_at IS NOT NULL)) GROUP BY status", ids)
    return {"rows": {r["status"]: r["n"] for r in rows}, "campaigns": {r["status"]: r["n"] for r in campaigns}}


async def _settled(db: asyncpg.Connection, ids: list[int]) -> bool:
    left = await _unsettled(db, ids)
    return not left["rows"] and not left["campaigns"]


async def _wait_settled(db: asyncpg.Connection, ids: list[int], timeout: float) -> None:
    try:
        await wait_for(lambda: _settled(db, ids), timeout=timeout, interval=0.1)
    except AssertionError:
        raise AssertionError(f"not settled within {timeout}s: {await _unsettled(db, ids)}") from None


def _mailed_at_most_once(fake: FakeSES) -> Counter[str]:
    per_address = Counter(m.to[0] for m in fake.messages if not m.to[0].startswith("success@simulator"))
    twice = sorted(a for a, n in per_address.items() if n > 1)
    assert not twice, f"mailed twice: {twice}"
    return per_address


async def _sent_rows_match_the_fake(db: asyncpg.Connection, fake: FakeSES, ids: list[int]) -> None:
    sent = {r["email"] for r in await db.fetch(
        "SELECT email FROM campaign_recipients WHERE campaign_id = ANY($1::bigint[]) AND status = 'sent'", ids)}
    mailed = set(_mailed_at_most_once(fake))
    assert sent == mailed, {"sent, never mailed": sorted(sent - mailed)[:5],
                            "mailed, not sent": sorted(mailed - sent)[:5]}


def _leak_state(daemon: Daemon) -> dict[str, int]:
    ctx = daemon.ctx
    return {"deliveries": len(ctx.deliveries), "inflight_free": ctx.inflight._value,
            "concurrency": ctx.concurrency, "room_pending": ctx.account_budget.room.pending}


async def _nothing_leaked(daemon: Daemon) -> bool:
    """Once every delivery ended: every in-flight slot and every waiting-room place is back."""
    ctx = daemon.ctx
    return not ctx.deliveries and ctx.inflight._value == ctx.concurrency and ctx.account_budget.room.pending == 0


async def _assert_nothing_leaked(daemon: Daemon) -> None:
    try:
        await wait_for(lambda: _nothing_leaked(daemon), timeout=10)
    except AssertionError:
        raise AssertionError(f"leaked: {_leak_state(daemon)}") from None


async def _storm(db: asyncpg.Connection, ids: list[int], *, rounds: int, seed: int,
                 cancel: list[int]) -> None:
    """Pause and resume random subsets at arbitrary moments; cancel `cancel` halfway; end with every
    campaign that is not cancelled back to sending."""
    rng = random.Random(seed)
    for n in range(rounds):
        some = rng.sample(ids, k=max(1, len(ids) // 3))
        await db.execute("UPDATE campaigns SET status = 'paused' WHERE id = ANY($1::bigint[]) AND status = 'sending'",
                         some)
        await asyncio.sleep(rng.uniform(0.0, 0.06))  # arbitrary moments: the point of the attack
        await db.execute("UPDATE campaigns SET status = 'sending' WHERE id = ANY($1::bigint[]) AND status = 'paused'",
                         some)
        await asyncio.sleep(rng.uniform(0.0, 0.06))
        if n == rounds // 2:
            await db.execute("UPDATE campaigns SET status = 'cancelled' WHERE id = ANY($1::bigint[]) "
                             "AND status IN ('sending', 'paused', 'queued')", cancel)
    await db.execute("UPDATE campaigns SET status = 'sending' WHERE id = ANY($1::bigint[]) AND status = 'paused'", ids)


async def _some_sent(fake: FakeSES, n: int) -> bool:
    return len(fake.messages) >= n


# -- 1. pause/resume/cancel storms while many small campaigns claim ------------------------------

async def test_pause_resume_cancel_storm_over_many_small_campaigns_loses_nothing_and_leaks_nothing(
        db: asyncpg.Connection, settings: Settings, fake_ses: FakeSES) -> None:
    """24 campaigns of 8 (every third rated at 5/s) under a 40/s cap, so dispatchers wait in the
    account's waiting room; 40 rounds of pausing and resuming a third of them, 3 cancelled halfway.
    Every row ends terminal, nobody twice, and every in-flight slot and room place comes back."""
    fake_ses.account.max_send_rate = 40.0
    fake_ses.latency = 0.05
    ids = await _campaigns(db, 24, 8, rated_every=3)
    cancel = ids[1:4]
    async with running_daemon(settings.with_overrides(poll_interval=0.05)) as daemon:
        await wait_for(lambda: _some_sent(fake_ses, 10), timeout=30)
        await _storm(db, ids, rounds=40, seed=1, cancel=cancel)
        await _wait_settled(db, ids, timeout=25)
        await _assert_nothing_leaked(daemon)
    await _sent_rows_match_the_fake(db, fake_ses, ids)
    assert fake_ses.max_in_any_window(1.0) <= 40


# -- 2. two instances racing on the same campaigns --------------------------------------------------

async def test_two_instances_racing_on_many_small_campaigns_through_a_pause_storm_send_each_once(
        db: asyncpg.Connection, settings: Settings, fake_ses: FakeSES) -> None:
    fake_ses.account.max_send_rate = 60.0
    fake_ses.latency = 0.03
    ids = await _campaigns(db, 30, 6, rated_every=4, rate=10.0)
    cancel = ids[5:7]
    fast = settings.with_overrides(poll_interval=0.05)
    async with running_daemon(fast.with_overrides(instance_id="attack-a")) as a, \
            running_daemon(fast.with_overrides(instance_id="attack-b")) as b:
        await wait_for(lambda: _some_sent(fake_ses, 10), timeout=30)
        await _storm(db, ids, rounds=30, seed=2, cancel=cancel)
        await _wait_settled(db, ids, timeout=25)
        await _assert_nothing_leaked(a)
        await _assert_nothing_leaked(b)
        served = (a.ctx.claims.requests, b.ctx.claims.requests)
    await _sent_rows_match_the_fake(db, fake_ses, ids)
    assert all(served), f"one instance never claimed: {served}"
    assert fake_ses.max_in_any_window(1.0) <= 60


# -- 3. the database connection cut mid-claim; the database away mid-claim ------------------------

class CuttingProxy(LatencyProxy):
    """A latency proxy that can cut every open connection (replies in transit are lost) and can stop
    accepting for a while, always on the same port."""

    def __init__(self, dsn: str, delay: float) -> None:
        super().__init__(dsn, delay)
        self.port = 0

    async def start(self) -> str:
        url = await super().start()
        assert self._server is not None
        self.port = self._server.sockets[0].getsockname()[1]
        return url

    async def cut(self) -> None:
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def away(self) -> None:
        """Refuse new connections and cut the open ones: the database is gone."""
        assert self._server is not None
        self._server.close()
        await self.cut()

    async def back(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)


async def _claims_in_flight(daemon: Daemon) -> bool:
    return not daemon.ctx.claims._idle.is_set()


async def _claims_idle(daemon: Daemon) -> bool:
    return daemon.ctx.claims._idle.is_set()


async def _claim_reply_in_transit(db: asyncpg.Connection, daemon: Daemon) -> bool:
    """A claim statement has committed on the server and its reply has not reached the daemon yet."""
    return await _claims_in_flight(daemon) and bool(await _held_unknowingly(db, daemon))


async def _held_unknowingly(db: asyncpg.Connection, daemon: Daemon) -> set[int]:
    """Rows the database says this instance holds that it does not know of (a lost claim reply)."""
    in_db = {r["id"] for r in await db.fetch(
        "SELECT id FROM campaign_recipients WHERE status = 'sending' AND claimed_by = $1",
        daemon.settings.instance_id)}
    return in_db - daemon.held_ids()


@contextlib.asynccontextmanager
async def _claim_reply_about_to_be_lost(db: asyncpg.Connection, db_url: str, settings: Settings,
                                        fake_ses: FakeSES) -> AsyncIterator[tuple[CuttingProxy, Daemon]]:
    """20 campaigns of 20 at 50/s, the daemon 40 ms each way from PostgreSQL (lease 60 s), stopped at
    the moment a claim statement has committed and its reply has not arrived yet."""
    fake_ses.account.max_send_rate = 50.0
    proxy = CuttingProxy(db_url, delay=0.04)
    slow_url = await proxy.start()
    try:
        async with running_daemon(settings.with_overrides(database_url=slow_url, poll_interval=0.05,
                                                          lease_seconds=60)) as daemon:
            await wait_for(lambda: _some_sent(fake_ses, 5), timeout=30)
            await wait_for(lambda: _claim_reply_in_transit(db, daemon), timeout=10, interval=0.002)
            yield proxy, daemon
    finally:
        await proxy.stop()


async def test_connections_cut_mid_claim_leave_no_row_behind(
        db: asyncpg.Connection, db_url: str, settings: Settings, fake_ses: FakeSES) -> None:
    """40 ms each way to PostgreSQL; every open connection is cut just after a claim statement
    committed, so claim replies are lost. The rows those claims took must come back at once (not
    after the 60 s lease): every campaign ends sent within 20 s, nobody twice."""
    ids = await _campaigns(db, 20, 20)
    async with _claim_reply_about_to_be_lost(db, db_url, settings, fake_ses) as (proxy, _):
        await proxy.cut()  # the claim committed; its reply is lost
        await _wait_settled(db, ids, timeout=20)
    await _sent_rows_match_the_fake(db, fake_ses, ids)


async def test_the_database_away_mid_claim_leaves_no_row_sending_until_the_lease(
        db: asyncpg.Connection, db_url: str, settings: Settings, fake_ses: FakeSES) -> None:
    """The database goes away (connections cut, new ones refused) just after a claim statement
    committed, and is back 1.5 s later. The lost claims' rows cannot be reconciled while it is away
    (release_unknown fails too); they must be once it is back, not 60 s later by the lease."""
    ids = await _campaigns(db, 20, 20)  # 400 rows at 50/s: claims keep taking rows for 8 s
    async with _claim_reply_about_to_be_lost(db, db_url, settings, fake_ses) as (proxy, daemon):
        await proxy.away()  # the claim committed; its reply is lost
        await wait_for(lambda: _claims_idle(daemon), timeout=5, interval=0.01)  # the claim failed
        unknown = len(await _held_unknowingly(db, daemon))
        await asyncio.sleep(1.5)  # the outage itself, not a synchronisation
        before = len(fake_ses.messages)
        await proxy.back()
        await wait_for(lambda: _some_sent(fake_ses, before + 1), timeout=15)  # sending resumed
        await _wait_settled(db, ids, timeout=20)
    assert unknown, "no claim reply was lost with rows taken: the attack did not happen"
    await _sent_rows_match_the_fake(db, fake_ses, ids)


# -- 4. retries bring rows back as due while campaigns are exhausted -----------------------------

async def test_retries_bring_rows_back_to_exhausted_campaigns_and_all_end_sent(
        db: asyncpg.Connection, settings: Settings, fake_ses: FakeSES) -> None:
    """30% of sends fail with a transient error: rows come back `pending` with a short backoff after
    their campaign claimed everything (exhausted, waiting for the tick's news). Mixed rated and
    unrated campaigns all end sent, each address accepted once."""
    fake_ses.account.max_send_rate = 100.0
    fake_ses.inject(Fault(code="InternalFailure", status=500, probability=0.3))
    ids = await _campaigns(db, 20, 5, rated_every=2, rate=20.0)
    async with running_daemon(settings.with_overrides(poll_interval=0.1, retry_base_seconds=0.05,
                                                      retry_max_seconds=0.3, max_attempts=12)) as daemon:
        await _wait_settled(db, ids, timeout=25)
        await _assert_nothing_leaked(daemon)
    assert fake_ses.rejections, "no fault was injected"
    failed = await db.fetchval("SELECT count(*) FROM campaign_recipients WHERE campaign_id = ANY($1::bigint[]) "
                               "AND status <> 'sent'", ids)
    assert failed == 0
    await _sent_rows_match_the_fake(db, fake_ses, ids)


async def test_rows_handed_back_by_a_pause_are_due_again_while_the_campaign_is_exhausted(
        db: asyncpg.Connection, settings: Settings, fake_ses: FakeSES) -> None:
    """A campaign whose rows are all claimed (exhausted) is paused while many sit in its queue: they go
    back `pending`, due. Resumed, a fresh runner must find them (the tick's news), not wait."""
    fake_ses.account.max_send_rate = 20.0
    ids = await _campaigns(db, 1, 40)
    async with running_daemon(settings.with_overrides(poll_interval=0.5)) as daemon:
        await wait_for(lambda: _some_sent(fake_ses, 3), timeout=30)
        await db.execute("UPDATE campaigns SET status = 'paused' WHERE id = $1", ids[0])
        await wait_for(lambda: _no_runner(daemon, ids[0]), timeout=10)
        handed_back = await wait_for(lambda: _handed_back(db, ids[0]), timeout=10)  # written back by the flush
        await db.execute("UPDATE campaigns SET status = 'sending' WHERE id = $1", ids[0])
        await _wait_settled(db, ids, timeout=15)
    assert handed_back > 0, "nothing was handed back: the attack did not happen"
    await _sent_rows_match_the_fake(db, fake_ses, ids)


async def _handed_back(db: asyncpg.Connection, campaign: int) -> int:
    return int(await db.fetchval("SELECT count(*) FROM campaign_recipients WHERE campaign_id = $1 "
                                 "AND status = 'pending' AND next_attempt_at IS NOT NULL", campaign))


async def _no_runner(daemon: Daemon, campaign: int) -> bool:
    return campaign not in daemon.runners


# -- 5. the sending-campaign bound with paused campaigns --------------------------------------------

async def test_the_sending_bound_with_paused_campaigns_strands_nobody(
        db: asyncpg.Connection, settings: Settings, fake_ses: FakeSES) -> None:
    """SENDER_MAX_SENDING_CAMPAIGNS=2, eight campaigns: the two sending ones are paused (queued ones
    take their places), then resumed; paused/resumed over and over. Every campaign ends sent."""
    fake_ses.account.max_send_rate = 20.0
    ids = await _campaigns(db, 8, 6)
    async with running_daemon(settings.with_overrides(max_sending_campaigns=2, poll_interval=0.05)):
        await wait_for(lambda: _some_sent(fake_ses, 2), timeout=30)
        rounds = 0
        while await db.fetchval("SELECT count(*) FROM campaigns WHERE id = ANY($1::bigint[]) AND status = 'queued'",
                                ids):
            sending = [r["id"] for r in await db.fetch(
                "UPDATE campaigns SET status = 'paused' WHERE id = ANY($1::bigint[]) AND status = 'sending' "
                "RETURNING id", ids)]
            await _wait_a_queued_one_takes_a_place(db, [cid for cid in ids if cid not in sending])
            await db.execute("UPDATE campaigns SET status = 'sending' WHERE id = ANY($1::bigint[])", sending)
            rounds += 1
        assert rounds >= 2, "the bound never held anything back: the attack did not happen"
        await _wait_settled(db, ids, timeout=25)
    await _sent_rows_match_the_fake(db, fake_ses, ids)


async def _wait_a_queued_one_takes_a_place(db: asyncpg.Connection, others: list[int]) -> None:
    await wait_for(lambda: _sending_count(db, others, 1), timeout=10)


async def _sending_count(db: asyncpg.Connection, ids: list[int], at_least: int) -> bool:
    n = await db.fetchval("SELECT count(*) FROM campaigns WHERE id = ANY($1::bigint[]) AND status IN "
                          "('sending', 'sent')", ids)
    return bool(n >= at_least)



# -- 6. a WaitingRoom cancellation while a place is being handed out ----------------------------

async def _dispatcher_waits_in_the_room(daemon: Daemon, campaign: int) -> bool:
    runner = daemon.runners.get(campaign)
    return runner is not None and runner._in_hand is not None and bool(daemon.ctx.account_budget.room._waiters)


async def test_a_pause_landing_as_another_campaigns_place_passes_on_hands_the_row_back_and_leaks_nothing(
        db: asyncpg.Connection, settings: Settings, fake_ses: FakeSES) -> None:
    """The account's waiting room is full (another campaign's two requests hold its places); this
    campaign's dispatcher waits there with a row in hand. It is paused, and in the same loop iteration
    one of the other campaign's requests passes the wire, handing its place on. The paused
    dispatcher must go back cleanly: its row handed back `pending`, its in-flight slot returned."""
    fake_ses.account.max_send_rate = 1.0  # the account's room keeps 2 places
    ids = await _campaigns(db, 1, 4)
    await db.execute("UPDATE campaigns SET status = 'draft' WHERE id = $1", ids[0])
    async with running_daemon(settings) as daemon:
        await wait_for(lambda: _ready_daemon(daemon), timeout=30)
        room = daemon.ctx.account_budget.room
        await room.acquire("other campaign", 1.0)
        await room.acquire("other campaign", 1.0)  # both places held: whoever comes next waits
        await db.execute("UPDATE campaigns SET status = 'queued' WHERE id = $1", ids[0])
        await wait_for(lambda: _dispatcher_waits_in_the_room(daemon, ids[0]), timeout=30)
        await db.execute("UPDATE campaigns SET status = 'paused' WHERE id = $1", ids[0])
        stop = asyncio.create_task(daemon.stop_runner(ids[0], "pause"))  # what the tick does on the pause
        asyncio.get_running_loop().call_soon(room.release)  # ... as the other campaign's request passes the wire
        await stop
        room.release()
        await _assert_nothing_leaked(daemon)
        try:
            await wait_for(lambda: _no_row_sending(db, ids[0]), timeout=10)
        except AssertionError:
            raise AssertionError(f"rows left sending: {await _row_states(db, ids[0])}") from None
    assert not fake_ses.messages


async def _ready_daemon(daemon: Daemon) -> bool:
    return daemon.ready.is_set()


async def _row_states(db: asyncpg.Connection, campaign: int) -> dict[str, int]:
    return {r["status"]: r["n"] for r in await db.fetch(
        "SELECT status, count(*) AS n FROM campaign_recipients WHERE campaign_id = $1 GROUP BY status", campaign)}


async def _no_row_sending(db: asyncpg.Connection, campaign: int) -> bool:
    return "sending" not in await _row_states(db, campaign)
