"""Attacks on the delivery guarantees: hostile rows, a stalled tick, a slow database, pauses and
SIGTERM at the worst moment, a lapsed heartbeat, several instances under a tiny cap."""

from __future__ import annotations

import asyncio
import itertools
import signal
from collections import Counter

import asyncpg
import pytest

from sender.config import ConfigError, Settings
from sender.db import QUERIES, connect, create_pool
from sender.db.migrate import migrate
from sender.demo.fakeses import FakeSES
from sender.message import Outcome
from sender.metrics import Metrics
from sender.writeback import ResultBuffer
from tests.helpers import (
    add_campaign,
    add_contacts,
    add_template,
    campaign_status,
    recipient_counts,
    running_daemon,
    wait_for,
)
from tests.latency_proxy import LatencyProxy
from tests.processes import start_daemon


def _once_each(fake: FakeSES, expected: int) -> None:
    per_recipient = Counter(m.to[0] for m in fake.messages if not m.to[0].startswith("success@simulator"))
    assert len(per_recipient) == expected, f"{len(per_recipient)} of {expected} recipients got mail"
    assert max(per_recipient.values()) == 1, [to for to, n in per_recipient.items() if n > 1]


async def _status_is(db: asyncpg.Connection, campaign: int, status: str) -> bool:
    return await campaign_status(db, campaign) == status


async def _received(fake: FakeSES, n: int) -> bool:
    return len(fake.messages) >= n


# -- one bad campaign never stops housekeeping ----------------------------------------------------

async def test_hostile_campaign_rows_fail_alone_and_the_tick_carries_on(db: asyncpg.Connection, settings: Settings,
                                                                         fake_ses: FakeSES) -> None:
    await add_contacts(db, 6)
    template = await add_template(db)
    far_past = await add_campaign(db, template)
    await db.execute("UPDATE campaigns SET scheduled_at = '0001-01-01T00:00:00+14:00', "
                     "created_at = '0001-01-01T00:00:00+14:00' WHERE id = $1", far_past)
    nested_for = await add_campaign(db, await add_template(db, html="{% for a in x %}" * 25 + "x"
                                                          + "{% endfor %}" * 25))
    parens = await add_campaign(db, await add_template(db, html="{{ " + "(" * 300 + "1" + ")" * 300 + " }}"))
    nested_if = await add_campaign(db, await add_template(db, html="{% if 1 %}" * 200 + "x" + "{% endif %}" * 200))
    good = await add_campaign(db, template)
    other = await add_campaign(db, template, rate=1)
    async with running_daemon(settings) as daemon:
        await wait_for(lambda: _status_is(db, good, "sent"), timeout=60)
        await wait_for(lambda: _runner_started(daemon, other), timeout=30)
        await db.execute("UPDATE campaigns SET status = 'paused' WHERE id = $1", other)  # housekeeping still honoured
        await wait_for(lambda: _runner_gone(daemon, other), timeout=30)
        for bad in (nested_for, parens, nested_if):
            await wait_for(lambda bad=bad: _status_is(db, bad, "failed"), timeout=30)
        await wait_for(lambda: _status_is(db, far_past, "sent"), timeout=30)  # a strange date is still a date
    assert await recipient_counts(db, good) == {"sent": 6}
    for bad in (nested_for, parens, nested_if):
        assert await db.fetchval("SELECT error FROM campaigns WHERE id = $1", bad)
    assert "sending" not in await recipient_counts(db, other)


# -- rows never stuck, never resent after a pause -------------------------------------------------

async def test_pause_resume_storm_over_a_slow_database_leaves_no_row_sending(
        db: asyncpg.Connection, db_url: str, settings: Settings, fake_ses: FakeSES) -> None:
    """80 ms each way to PostgreSQL and 20 pause/resume cycles: claims cut short by a pause used to
    leave rows `sending` for good. Every recipient must end sent, exactly once."""
    proxy = LatencyProxy(db_url, delay=0.04)
    slow_url = await proxy.start()
    await add_contacts(db, 400)
    campaign = await add_campaign(db, await add_template(db), rate=200)
    try:
        async with running_daemon(settings.with_overrides(database_url=slow_url, poll_interval=0.05)):
            await wait_for(lambda: _received(fake_ses, 20), timeout=60)
            for _ in range(20):
                await db.execute("UPDATE campaigns SET status = 'paused' WHERE id = $1", campaign)
                await asyncio.sleep(0.05)  # pause/resume at arbitrary moments: the point of the attack
                await db.execute("UPDATE campaigns SET status = 'sending' WHERE id = $1", campaign)
                await asyncio.sleep(0.05)
            await wait_for(lambda: _status_is(db, campaign, "sent"), timeout=120)
    finally:
        await proxy.stop()
    assert await recipient_counts(db, campaign) == {"sent": 400}
    _once_each(fake_ses, 400)


async def test_paused_campaigns_in_flight_sends_are_not_resent_after_shutdown(
        db: asyncpg.Connection, settings: Settings, fake_ses: FakeSES) -> None:
    """Pause while sends are in flight, then shut down: the paused campaign's in-flight sends finish
    and are recorded (crash policy fail), never handed back to be sent again."""
    fake_ses.latency = 1.0
    await add_contacts(db, 30)
    campaign = await add_campaign(db, await add_template(db), rate=30)
    async with running_daemon(settings.with_overrides(crash_policy="fail", grace_seconds=10)) as daemon:
        await wait_for(lambda: _in_flight(daemon, 5), timeout=30)
        await db.execute("UPDATE campaigns SET status = 'paused' WHERE id = $1", campaign)
        await wait_for(lambda: _runner_gone(daemon, campaign), timeout=30)
        assert daemon.in_flight() > 0, "the paused campaign still has sends in flight"
    counts = await recipient_counts(db, campaign)
    assert "sending" not in counts
    async with running_daemon(settings):
        await db.execute("UPDATE campaigns SET status = 'sending' WHERE id = $1", campaign)
        await wait_for(lambda: _status_is(db, campaign, "sent"), timeout=60)
    _once_each(fake_ses, 30)


async def _in_flight(daemon: object, n: int) -> bool:
    return daemon.in_flight() >= n  # type: ignore[attr-defined,no-any-return]


async def _runner_started(daemon: object, campaign: int) -> bool:
    return campaign in daemon.runners  # type: ignore[attr-defined]


async def _runner_gone(daemon: object, campaign: int) -> bool:
    return campaign not in daemon.runners  # type: ignore[attr-defined]


# -- liveness does not wait on the tick; a lapsed heartbeat stops sending --------------------------

async def test_heartbeat_keeps_beating_while_the_tick_is_stuck(db: asyncpg.Connection, db_url: str,
                                                               settings: Settings) -> None:
    async with running_daemon(settings) as daemon:
        await wait_for(lambda: _ready(daemon))
        async with db.transaction():
            await db.execute("LOCK TABLE sender_account_hold IN ACCESS EXCLUSIVE MODE")  # the tick's overview waits
            ticks = daemon.tick.count
            first = await _beat_of(db_url, daemon.settings.instance_id)
            await wait_for(lambda: _beat_after(db_url, daemon.settings.instance_id, first), timeout=10)
            assert daemon.tick.count <= ticks + 1, "the tick was really stuck"
        await wait_for(lambda: _ticked_since(daemon, ticks + 1), timeout=10)


async def _ready(daemon: object) -> bool:
    return daemon.ready.is_set()  # type: ignore[attr-defined,no-any-return]


async def _ticked_since(daemon: object, count: int) -> bool:
    return daemon.tick.count > count  # type: ignore[attr-defined,no-any-return]


async def _beat_of(url: str, instance: str) -> object:
    conn = await connect(url)
    try:
        return await conn.fetchval("SELECT heartbeat_at FROM sender_instances WHERE id = $1", instance)
    finally:
        await conn.close()


async def _beat_after(url: str, instance: str, before: object) -> bool:
    return await _beat_of(url, instance) > before  # type: ignore[operator,no-any-return]


async def test_no_send_starts_once_the_heartbeat_has_lapsed(db: asyncpg.Connection, settings: Settings,
                                                            fake_ses: FakeSES) -> None:
    """While the heartbeat cannot be written, others may take this instance's rows over: it must stop
    sending them itself, and send each exactly once after the heartbeat is back."""
    fast = settings.with_overrides(send_timeout=1.0, heartbeat_interval=0.1, instance_timeout=2.0, lease_seconds=30)
    await add_contacts(db, 120)
    campaign = await add_campaign(db, await add_template(db), rate=20)
    async with running_daemon(fast) as daemon:
        await wait_for(lambda: _received(fake_ses, 10), timeout=30)
        async with db.transaction():
            await db.execute("LOCK TABLE sender_instances IN ACCESS EXCLUSIVE MODE")  # heartbeats block
            await wait_for(lambda: _lapsed(daemon), timeout=10)
            at_lapse = len(fake_ses.messages)
            await wait_for(lambda: _released_some(daemon), timeout=10)
            # sends already past the check may still land; nothing new starts
            assert len(fake_ses.messages) <= at_lapse + daemon.ctx.concurrency
            stalled = len(fake_ses.messages)
        await wait_for(lambda: _status_is(db, campaign, "sent"), timeout=60)
    assert stalled < 120
    _once_each(fake_ses, 120)


async def _lapsed(daemon: object) -> bool:
    return daemon.heartbeat.lapsed()  # type: ignore[attr-defined,no-any-return]


async def _released_some(daemon: object) -> bool:
    return daemon.metrics.count("sender_released") > 0  # type: ignore[attr-defined,no-any-return]


def test_config_refuses_a_lease_shorter_than_a_few_poll_intervals() -> None:
    with pytest.raises(ConfigError, match="SENDER_LEASE_SECONDS"):
        Settings(poll_interval=120, lease_seconds=30)
    with pytest.raises(ConfigError, match="SENDER_INSTANCE_TIMEOUT"):
        Settings(send_timeout=15, instance_timeout=10)


# -- shutdown and crash bounds --------------------------------------------------------------------

async def test_sigterm_with_the_database_down_exits_non_zero_and_says_how_many(
        own_postgres: object, fake_ses: FakeSES, settings: Settings) -> None:
    url: str = own_postgres.url  # type: ignore[attr-defined]
    conn = await connect(url)
    await migrate(conn)
    await add_contacts(conn, 200)
    await add_campaign(conn, await add_template(conn), rate=50)
    await conn.close()
    fake_ses.latency = 0.05
    proc = await start_daemon(settings.with_overrides(database_url=url), SENDER_GRACE_SECONDS="2",
                              SENDER_FLUSH_INTERVAL="5", SENDER_FLUSH_SIZE="1000")
    try:
        await wait_for(lambda: _received(fake_ses, 20), timeout=60)
        await asyncio.to_thread(own_postgres.stop)  # type: ignore[attr-defined]
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
    assert proc.returncode == 1, stderr.decode()[-2000:]
    lines = [line for line in stderr.decode().splitlines() if "shutdown_results_unwritten" in line]
    assert lines and '"rows":' in lines[0]


async def test_kill_9_duplicates_stay_within_the_documented_bound(db: asyncpg.Connection, settings: Settings,
                                                                  fake_ses: FakeSES) -> None:
    """Duplicates after kill -9 <= sends accepted within the last (flush interval + SES latency +
    one write-back) before the kill: at 200/s, 0.1 s and 50 ms, about 30 (README)."""
    rate, flush, latency = 200.0, 0.1, 0.05
    fake_ses.latency = latency
    await add_contacts(db, 1200)
    campaign = await add_campaign(db, await add_template(db), rate=rate)
    fast = {"SENDER_SEND_TIMEOUT": "2", "SENDER_HEARTBEAT_INTERVAL": "0.2", "SENDER_INSTANCE_TIMEOUT": "3",
            "SENDER_LEASE_SECONDS": "5", "SENDER_FLUSH_INTERVAL": str(flush)}
    proc = await start_daemon(settings, **fast)
    try:
        await wait_for(lambda: _received(fake_ses, 400), timeout=60)
        proc.send_signal(signal.SIGKILL)
        await asyncio.wait_for(proc.wait(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
    takeover = settings.with_overrides(send_timeout=2, heartbeat_interval=0.2, instance_timeout=3, lease_seconds=5)
    async with running_daemon(takeover):
        await wait_for(lambda: _status_is(db, campaign, "sent"), timeout=120)
    per_recipient = Counter(m.to[0] for m in fake_ses.messages)
    duplicates = sum(n - 1 for n in per_recipient.values())
    assert len(per_recipient) == 1200
    write_back = 0.1  # one write-back round trip on a busy machine
    assert duplicates <= rate * (flush + latency + write_back), duplicates


# -- rates ---------------------------------------------------------------------------------------

async def test_campaign_rate_is_a_hard_cap_at_the_wire(db: asyncpg.Connection, settings: Settings,
                                                       fake_ses: FakeSES) -> None:
    fake_ses.enforce_rate = False
    fake_ses.account.max_send_rate = 1000
    await add_contacts(db, 300)
    campaign = await add_campaign(db, await add_template(db), rate=120)
    async with running_daemon(settings):
        await wait_for(lambda: _status_is(db, campaign, "sent"), timeout=60)
    assert fake_ses.max_in_any_window(1.0) <= 120


async def test_a_campaign_rate_below_one_per_second_sends_once_per_interval(
        db: asyncpg.Connection, settings: Settings, fake_ses: FakeSES) -> None:
    """rate_per_sec 0.5 must mean one send every 2 s, never two in one second (the account's cap, shared
    by any number of instances, is covered in test_scaleout)."""
    fake_ses.enforce_rate = False
    await add_contacts(db, 4)
    async with running_daemon(settings):
        campaign = await add_campaign(db, await add_template(db), rate=0.5)
        await wait_for(lambda: _received(fake_ses, 4), timeout=60)
        await db.execute("UPDATE campaigns SET status = 'paused' WHERE id = $1", campaign)
    times = sorted(m.received_at for m in fake_ses.messages)
    assert len(times) == 4
    assert fake_ses.max_in_any_window(1.9) == 1, [round(b - a, 3) for a, b in itertools.pairwise(times)]


# -- smaller holes -------------------------------------------------------------------------------

async def test_a_contact_deleted_before_its_send_is_skipped(db: asyncpg.Connection, settings: Settings,
                                                            fake_ses: FakeSES) -> None:
    ids = await add_contacts(db, 4)
    campaign = await add_campaign(db, await add_template(db), status="sending")
    await db.execute("INSERT INTO campaign_recipients (campaign_id, contact_id, email) "
                     "SELECT $1, id, email FROM contacts", campaign)
    await db.execute("UPDATE campaigns SET total_count = 4, materialised_at = now() WHERE id = $1", campaign)
    await db.execute("DELETE FROM contacts WHERE id = $1", ids[0])
    async with running_daemon(settings):
        await wait_for(lambda: _status_is(db, campaign, "sent"), timeout=30)
    rows = await db.fetch("SELECT contact_id, status, error_code FROM campaign_recipients ORDER BY contact_id")
    assert [(r["status"], r["error_code"]) for r in rows] == [("skipped", "ContactDeleted")] + [("sent", None)] * 3
    assert len(fake_ses.messages) == 3


async def test_a_hold_clears_only_by_a_probe_that_can_see_its_cause(db: asyncpg.Connection, settings: Settings,
                                                                   fake_ses: FakeSES) -> None:
    """An unverified default From stops the account; GetAccount cannot see that, so its success must
    not reopen sending: only a real (simulator) send that succeeds does, once the From is verified."""
    fake_ses.identities.clear()
    await add_contacts(db, 3)
    campaign = await add_campaign(db, await add_template(db))
    async with running_daemon(settings) as daemon:
        await wait_for(lambda: _stopped_by(daemon, "SenderNotVerified"), timeout=30)
        await wait_for(lambda: _counts_are(db, campaign, {"pending": 3}), timeout=30)  # all handed back
        probes = len(fake_ses.rejections)
        await wait_for(lambda: _more_rejections(fake_ses, probes + 2), timeout=30)  # probed twice, still failing
        assert not daemon.gate.is_open, "GetAccount answering is not enough to reopen"
        assert await recipient_counts(db, campaign) == {"pending": 3}
        fake_ses.add_identity("example.com")
        await wait_for(lambda: _status_is(db, campaign, "sent"), timeout=30)
    simulator = [m for m in fake_ses.messages if m.to[0].startswith("success@simulator")]
    assert simulator, "the hold was cleared by a real send to the simulator"


async def _counts_are(db: asyncpg.Connection, campaign: int, counts: dict[str, int]) -> bool:
    return await recipient_counts(db, campaign) == counts


async def _stopped_by(daemon: object, code: str) -> bool:
    return daemon.gate.code == code  # type: ignore[attr-defined,no-any-return]


async def _more_rejections(fake: FakeSES, n: int) -> bool:
    return len(fake.rejections) >= n


async def test_per_campaign_metric_series_are_removed_when_the_campaign_ends(
        db: asyncpg.Connection, settings: Settings, fake_ses: FakeSES) -> None:
    await add_contacts(db, 3)
    campaigns = [await add_campaign(db, await add_template(db)) for _ in range(3)]
    async with running_daemon(settings) as daemon:
        for campaign in campaigns:
            await wait_for(lambda campaign=campaign: _status_is(db, campaign, "sent"), timeout=30)
        await wait_for(lambda: _no_runners(daemon), timeout=30)
        text = daemon.metrics.render().decode()
    assert 'sender_messages_total{campaign_id=' not in text
    assert 'sender_outcomes_total{outcome="sent"} 9.0' in text


async def _no_runners(daemon: object) -> bool:
    return not daemon.runners  # type: ignore[attr-defined]


async def test_write_back_claims_and_recovery_never_deadlock(db_url: str, db: asyncpg.Connection) -> None:
    """Two instances writing back interleaved batches while claims and recovery run: rows are locked
    in one order everywhere, so no DeadlockDetectedError (which the retry used to hide)."""
    await add_contacts(db, 2000)
    campaign = await add_campaign(db, await add_template(db), status="sending")
    await db.execute("INSERT INTO campaign_recipients (campaign_id, contact_id, email) "
                     "SELECT $1, id, email FROM contacts", campaign)
    pool = await create_pool(db_url, min_size=4, max_size=8)
    errors: list[BaseException] = []

    async def instance(me: str) -> None:
        buffer = ResultBuffer(pool, me, size=10_000, interval=60, metrics=Metrics())
        for _ in range(10):
            rows = await pool.fetch(QUERIES["claim_many"], [campaign], [0], [100], [False], me, 30.0)
            for r in reversed(rows):  # outcomes arrive in any order
                buffer.add(Outcome(r["id"], "sent", 1, message_id="m"))
            try:
                await buffer._write(buffer._items)
                buffer._items.clear()
            except asyncpg.DeadlockDetectedError as exc:
                errors.append(exc)
            await pool.fetch(QUERIES["recover_orphans_retry"], 30.0, me)

    try:
        await asyncio.gather(*(instance(f"i{n}") for n in range(4)))
    finally:
        await pool.close()
    assert errors == []
    assert (await recipient_counts(db, campaign)).get("sent", 0) > 0


async def test_recipients_materialise_in_chunks_off_the_tick(db: asyncpg.Connection, settings: Settings,
                                                             fake_ses: FakeSES) -> None:
    """Materialisation runs in short keyset chunks (here 50 contacts per statement), saving its cursor;
    the campaign sends while it materialises and completes only once every chunk is in."""
    await add_contacts(db, 400, country="US")
    await add_contacts(db, 100, start=400, country="FR")
    campaign = await add_campaign(db, await add_template(db), rules={"country": ["US"]})
    async with running_daemon(settings.with_overrides(materialise_chunk=50)):
        await wait_for(lambda: _status_is(db, campaign, "sent"), timeout=60)
    row = await db.fetchrow("SELECT total_count, materialise_cursor, materialised_at FROM campaigns WHERE id = $1",
                            campaign)
    assert row["total_count"] == 400 and row["materialised_at"] is not None
    assert row["materialise_cursor"] == await db.fetchval("SELECT max(id) FROM contacts")
    assert await recipient_counts(db, campaign) == {"sent": 400}
    _once_each(fake_ses, 400)


async def test_a_contact_unsubscribed_mid_campaign_is_skipped_at_a_slow_rate(
        db: asyncpg.Connection, settings: Settings, fake_ses: FakeSES) -> None:
    """At 2/s a claim holds about two seconds of sending, so a status read at claim time is fresh: a
    contact who unsubscribes while the campaign runs is skipped, not mailed from a stale claim."""
    await add_contacts(db, 8)
    campaign = await add_campaign(db, await add_template(db), rate=2)
    async with running_daemon(settings):
        await wait_for(lambda: _received(fake_ses, 1), timeout=30)
        await db.execute("UPDATE contacts SET status = 'unsubscribed' WHERE email = 'user7@example.org'")
        await wait_for(lambda: _status_is(db, campaign, "sent"), timeout=60)
    row = await db.fetchrow("SELECT status, error_code FROM campaign_recipients WHERE email = 'user7@example.org'")
    assert (row["status"], row["error_code"]) == ("skipped", "ContactUnsubscribed")
    assert "user7@example.org" not in {m.to[0] for m in fake_ses.messages}
