"""Nothing lost or doubled under faults, throttling, account-wide errors and stale leases (SPEC §5)."""

from __future__ import annotations

from collections import Counter

import asyncpg

from sender.config import Settings
from sender.db import QUERIES, create_pool
from sender.demo.fakeses import FakeSES, Fault
from sender.message import Outcome
from sender.metrics import Metrics
from sender.writeback import ResultBuffer
from tests.helpers import add_campaign, add_contacts, add_template, recipient_counts, running_daemon, wait_for


async def _status(db: asyncpg.Connection, campaign: int) -> str:
    return str(await db.fetchval("SELECT status FROM campaigns WHERE id = $1", campaign))


async def _sent(db: asyncpg.Connection, campaign: int) -> bool:
    return await _status(db, campaign) == "sent"


def _fast_retries(settings: Settings, **more: object) -> Settings:
    return settings.with_overrides(retry_base_seconds=0.05, retry_max_seconds=0.2, send_timeout=0.5, **more)


async def test_transient_faults_then_throttling_bursts_complete_without_wasted_attempts(
        db: asyncpg.Connection, settings: Settings, fake_ses: FakeSES) -> None:
    await add_contacts(db, 80)
    campaign = await add_campaign(db, await add_template(db))
    fake_ses.inject(Fault("InternalFailure", 500, probability=0.15),
                    Fault("ServiceUnavailable", 503, "Service unavailable", probability=0.1),
                    Fault("Hang", 500, probability=0.05, hang=1.0))
    async with running_daemon(_fast_retries(settings, max_attempts=20, max_rate=100.0)):
        await wait_for(lambda: _at_least(fake_ses, 40), timeout=60)
        fake_ses.clear_faults()
        fake_ses.inject(Fault("TooManyRequestsException", 429, "Maximum sending rate exceeded.",
                              probability=0.3, remaining=25))
        await wait_for(lambda: _sent(db, campaign), timeout=90)
    rows = await db.fetch("SELECT email, status, attempts FROM campaign_recipients WHERE campaign_id = $1", campaign)
    assert [r["status"] for r in rows] == ["sent"] * 80
    per_recipient = Counter(m.to[0] for m in fake_ses.messages)
    assert set(per_recipient.values()) == {1} and len(per_recipient) == 80
    throttles = [r for r in fake_ses.rejections if r.code == "TooManyRequestsException"]
    assert len(throttles) > 0
    failures = Counter(r.to for r in fake_ses.rejections if r.code != "TooManyRequestsException")
    assert sum(failures.values()) > 0
    for r in rows:  # throttling never costs an attempt; every 5xx/timeout costs exactly one
        assert r["attempts"] == 1 + failures[r["email"]], r["email"]


async def _at_least(fake: FakeSES, n: int) -> bool:
    return len(fake.messages) >= n


async def test_transient_errors_fail_recipient_after_max_attempts_with_last_error(
        db: asyncpg.Connection, settings: Settings, fake_ses: FakeSES) -> None:
    await add_contacts(db, 3)
    campaign = await add_campaign(db, await add_template(db))
    fake_ses.inject(Fault("ServiceUnavailable", 503, "try later"))
    async with running_daemon(_fast_retries(settings, max_attempts=3)):
        await wait_for(lambda: _sent(db, campaign), timeout=60)
    rows = await db.fetch("SELECT status, attempts, error_code, error FROM campaign_recipients")
    assert {(r["status"], r["attempts"], r["error_code"], r["error"]) for r in rows} == {
        ("failed", 3, "ServiceUnavailable", "gave up after 3 attempts: try later")}
    assert Counter(r.to for r in fake_ses.rejections) == {f"user{i}@example.org": 3 for i in range(3)}
    assert await db.fetchval("SELECT failed_count FROM campaigns WHERE id = $1", campaign) == 3


async def test_account_wide_error_stops_everything_then_resumes_when_cleared(
        db: asyncpg.Connection, settings: Settings, fake_ses: FakeSES) -> None:
    await add_contacts(db, 60)
    campaign = await add_campaign(db, await add_template(db), rate=30)
    async with running_daemon(settings) as daemon:
        await wait_for(lambda: _at_least(fake_ses, 15), timeout=30)
        fake_ses.account.sending_enabled = False
        await wait_for(lambda: _gate_closed(daemon), timeout=10)
        assert daemon.gate.code == "SendingPausedException"
        await wait_for(lambda: _nothing_sending(db), timeout=10)
        hold = await db.fetchrow("SELECT code, set_by FROM sender_account_hold")
        assert hold["code"] == "SendingPausedException"
        counts = await recipient_counts(db, campaign)
        assert "failed" not in counts
        assert counts["sent"] == len(fake_ses.messages) and counts["pending"] == 60 - counts["sent"]
        refused, probes = len(fake_ses.rejections), fake_ses.account_requests
        await wait_for(lambda: _probed(fake_ses, probes + 2), timeout=10)  # probes keep running...
        assert len(fake_ses.rejections) == refused, "...and no send is attempted while stopped"
        fake_ses.account.sending_enabled = True
        await wait_for(lambda: _sent(db, campaign), timeout=60)
        assert daemon.gate.is_open
    assert await recipient_counts(db, campaign) == {"sent": 60}
    assert len({m.to[0] for m in fake_ses.messages}) == 60 == len(fake_ses.messages)
    assert await db.fetchval("SELECT reason FROM sender_account_hold") is None


async def _probed(fake: FakeSES, n: int) -> bool:
    return fake.account_requests >= n


async def _gate_closed(daemon: object) -> bool:
    return not daemon.gate.is_open  # type: ignore[attr-defined]


async def _nothing_sending(db: asyncpg.Connection) -> bool:
    return not await db.fetchval("SELECT count(*) FROM campaign_recipients WHERE status = 'sending'")


async def test_account_stop_reaches_every_instance_within_a_second_or_two(
        db: asyncpg.Connection, settings: Settings, fake_ses: FakeSES) -> None:
    await add_contacts(db, 200)
    campaign = await add_campaign(db, await add_template(db), rate=40)
    fake_ses.inject(Fault("InvalidClientTokenId", 403, "The security token included in the request is invalid.",
                          operations=("SendEmail", "GetAccount"), remaining=0))
    async with running_daemon(settings.with_overrides(instance_id="a")) as a, \
            running_daemon(settings.with_overrides(instance_id="b")) as b:
        await wait_for(lambda: _at_least(fake_ses, 20), timeout=30)
        fake_ses.clear_faults()
        fake_ses.inject(Fault("InvalidClientTokenId", 403, "The security token included in the request is invalid.",
                              operations=("SendEmail", "GetAccount")))
        await wait_for(lambda: _both_closed(a, b), timeout=3)
        await wait_for(lambda: _nothing_sending(db), timeout=10)
        assert "failed" not in await recipient_counts(db, campaign)
        fake_ses.clear_faults()
        await wait_for(lambda: _sent(db, campaign), timeout=60)
    assert await recipient_counts(db, campaign) == {"sent": 200}
    assert len({m.to[0] for m in fake_ses.messages}) == 200 == len(fake_ses.messages)


async def _both_closed(a: object, b: object) -> bool:
    return not a.gate.is_open and not b.gate.is_open  # type: ignore[attr-defined]


async def test_daily_quota_exhaustion_pauses_and_resumes_by_itself(
        db: asyncpg.Connection, settings: Settings, fake_ses: FakeSES) -> None:
    fake_ses.account.max_24h = 25
    await add_contacts(db, 40)
    campaign = await add_campaign(db, await add_template(db))
    async with running_daemon(settings) as daemon:
        await wait_for(lambda: _at_least(fake_ses, 25), timeout=30)
        await wait_for(lambda: _gate_closed(daemon), timeout=10)
        assert daemon.gate.code in ("TooManyRequestsException", "DailyQuotaExhausted")
        await wait_for(lambda: _nothing_sending(db), timeout=10)
        assert await recipient_counts(db, campaign) == {"sent": 25, "pending": 15}
        fake_ses.account.max_24h = 1000  # the 24-hour window moved on
        await wait_for(lambda: _sent(db, campaign), timeout=60)
    assert await recipient_counts(db, campaign) == {"sent": 40}


async def test_unverified_campaign_from_fails_that_campaign_only(
        db: asyncpg.Connection, settings: Settings, fake_ses: FakeSES) -> None:
    await add_contacts(db, 10)
    template = await add_template(db)
    rogue = await add_campaign(db, template, from_email="promo@unverified.org")
    good = await add_campaign(db, template)
    async with running_daemon(settings):
        await wait_for(lambda: _sent(db, good), timeout=30)
        await wait_for(lambda: _failed(db, rogue), timeout=30)
        await wait_for(lambda: _nothing_sending(db), timeout=10)
    error = await db.fetchval("SELECT error FROM campaigns WHERE id = $1", rogue)
    assert error == "SenderNotVerified: From address promo@unverified.org is not verified in SES"
    assert await recipient_counts(db, rogue) == {"pending": 10}
    assert await recipient_counts(db, good) == {"sent": 10}


async def _failed(db: asyncpg.Connection, campaign: int) -> bool:
    return await _status(db, campaign) == "failed"


async def test_write_back_only_finishes_rows_the_instance_still_holds(db_url: str, db: asyncpg.Connection) -> None:
    await add_contacts(db, 5)
    campaign = await add_campaign(db, await add_template(db), status="sending")
    await db.execute("INSERT INTO campaign_recipients (campaign_id, contact_id, email) "
                     "SELECT $1, id, email FROM contacts", campaign)
    claimed_by_a = await db.fetch(QUERIES["claim_many"], [campaign], [0], [5], [False], "a", 30.0)
    # a's lease lapses (it stalled); recovery hands the rows to b
    await db.execute("UPDATE campaign_recipients SET lease_until = now() - interval '1 second'")
    assert len(await db.fetch(QUERIES["recover_orphans_retry"], 30.0, "b")) == 5
    claimed_by_b = await db.fetch(QUERIES["claim_many"], [campaign], [0], [5], [True], "b", 30.0)
    assert len(claimed_by_b) == 5
    pool = await create_pool(db_url)
    try:
        metrics = Metrics()
        late = ResultBuffer(pool, "a", size=100, interval=1, metrics=metrics)
        for r in claimed_by_a:
            late.add(Outcome(r["id"], "failed", 1, error_code="X", error="late result from a"))
        assert await late.flush() is True
        assert metrics.count("sender_lost_ownership") == 5
        assert await recipient_counts(db, campaign) == {"sending": 5}
        owner = ResultBuffer(pool, "b", size=100, interval=1, metrics=Metrics())
        for r in claimed_by_b:
            owner.add(Outcome(r["id"], "sent", 1, message_id=f"m{r['id']}"))
        await owner.flush()
    finally:
        await pool.close()
    assert await recipient_counts(db, campaign) == {"sent": 5}
    assert await db.fetchval("SELECT sent_count FROM campaigns WHERE id = $1", campaign) == 5
