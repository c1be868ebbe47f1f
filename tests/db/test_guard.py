"""The account guard: bounce and complaint rates pause a campaign (or all of them) with a reason
that `campaign status`, the admin API and /readyz show; resuming is the operator's call."""

from __future__ import annotations

import io
import json

import aiohttp
import asyncpg
from prometheus_client import CollectorRegistry

from sender.config import Settings
from sender.db import create_pool
from sender.demo.fakeses import FakeSES
from sender.event_metrics import EventMetrics
from sender.events import apply_effects, parse_event
from sender.guard import AccountGuard
from tests import ses_events as ev
from tests.helpers import add_campaign, add_contacts, add_template, campaign_status, running_daemon, wait_for


async def campaign_with(db: asyncpg.Connection, *, sent: int, bounced: int = 0, complained: int = 0,
                        status: str = "sending") -> int:
    campaign = await add_campaign(db, await add_template(db), status=status)
    await db.execute("UPDATE campaigns SET sent_count = $2, hard_bounced_count = $3, complained_count = $4, "
                     "started_at = now() WHERE id = $1", campaign, sent, bounced, complained)
    return campaign


async def check(db_url: str, **overrides: object) -> tuple[list[int], AccountGuard]:
    pool = await create_pool(db_url, min_size=1, max_size=1)
    try:
        settings = Settings(database_url=db_url, guard_min_sample=100, account_guard_window=100_000,
                            max_bounce_rate=0.04, max_complaint_rate=0.0008).with_overrides(**overrides)
        guard = AccountGuard(settings, pool, EventMetrics(CollectorRegistry()))
        return await guard.check(), guard
    finally:
        await pool.close()


async def test_campaign_over_a_rate_is_paused_with_its_reason(db: asyncpg.Connection, db_url: str) -> None:
    bouncing = await campaign_with(db, sent=1000, bounced=50)
    complaining = await campaign_with(db, sent=10_000, complained=9)
    healthy = await campaign_with(db, sent=1000, bounced=40, complained=0)
    too_small = await campaign_with(db, sent=99, bounced=99)
    paused, guard = await check(db_url, account_guard_window=1)  # account-wide: just the newest campaign
    assert sorted(paused) == [bouncing, complaining]
    reasons = dict(await db.fetch("SELECT id, paused_reason FROM campaigns WHERE status = 'paused'"))
    assert reasons[bouncing] == ("guard: bounce rate 5.00% over SENDER_MAX_BOUNCE_RATE 4.00% "
                                 "(50 hard bounces in 1000 sends)")
    assert reasons[complaining].startswith("guard: complaint rate 0.090% over SENDER_MAX_COMPLAINT_RATE 0.080%")
    assert await campaign_status(db, healthy) == "sending" and await campaign_status(db, too_small) == "sending"
    assert [g["id"] for g in guard.paused] == [bouncing, complaining]


async def test_an_operator_resume_is_not_overridden(db: asyncpg.Connection, db_url: str) -> None:
    campaign = await campaign_with(db, sent=1000, bounced=100)
    paused, _ = await check(db_url, account_guard_window=1)
    assert paused == [campaign]
    await db.execute("UPDATE campaigns SET status = 'sending' WHERE id = $1", campaign)  # `campaign resume`
    paused, _ = await check(db_url, account_guard_window=1)
    assert paused == [] and await campaign_status(db, campaign) == "sending"


async def test_account_wide_rate_pauses_every_active_campaign(db: asyncpg.Connection, db_url: str) -> None:
    # each campaign alone is under its sample or the limit; together the account is at 4.5%
    old = await campaign_with(db, sent=2000, bounced=150, status="sent")
    small = await campaign_with(db, sent=50, bounced=0)
    queued = await add_campaign(db, await add_template(db), status="queued")
    paused, _ = await check(db_url, guard_min_sample=3000)
    assert paused == [] and await campaign_status(db, small) == "sending"
    paused, _ = await check(db_url, guard_min_sample=1000)
    assert sorted(paused) == sorted([small, queued])
    reason = await db.fetchval("SELECT paused_reason FROM campaigns WHERE id = $1", queued)
    assert reason.startswith("account guard: bounce rate 7.32%")
    assert await campaign_status(db, old) == "sent"


async def test_daemon_pauses_a_bouncing_campaign_and_shows_why(db: asyncpg.Connection, settings: Settings,
                                                               fake_ses: FakeSES) -> None:
    """End to end: sends, SES bounce events for them, the guard pauses, status/readyz/admin say why."""
    await add_contacts(db, 400)
    campaign = await add_campaign(db, await add_template(db), rate=40)
    configured = settings.with_overrides(guard_min_sample=20, guard_interval=0.1, admin_token="t0ken")
    async with running_daemon(configured) as daemon:
        async def sent_some() -> int:
            return int(await db.fetchval("SELECT count(*) FROM campaign_recipients WHERE message_id IS NOT NULL"))

        await wait_for(lambda: _at_least(sent_some(), 30))
        rows = await db.fetch("SELECT message_id, email FROM campaign_recipients WHERE message_id IS NOT NULL "
                              "ORDER BY id LIMIT 10")
        effects = [e for r in rows for e in parse_event(ev.bounce(r["message_id"], r["email"]))]
        await apply_effects(db, effects)
        await wait_for(lambda: _is(campaign_status(db, campaign), "paused"), timeout=30)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{daemon.ops.port}/readyz") as resp:
                ready = await resp.json()
            async with http.get(f"http://127.0.0.1:{daemon.ops.port}/campaigns/{campaign}",
                                headers={"Authorization": "Bearer t0ken"}) as resp:
                summary = await resp.json()
            metrics = await (await http.get(f"http://127.0.0.1:{daemon.ops.port}/metrics")).text()
    assert ready["ready"] is True and ready["guard_paused"][0]["id"] == campaign
    assert "bounce rate" in ready["guard_paused"][0]["paused_reason"]
    # the campaign guard or the account-wide one, whichever evaluates first once the sample is large enough
    assert summary["hard_bounced"] == 10
    assert summary["paused_reason"].startswith(("guard: bounce rate", "account guard: bounce rate"))
    assert 'sender_guard_paused_total{scope="campaign"} 1.0' in metrics
    from sender.admin_cli import campaign_command
    from sender.cli import _parser

    out = io.StringIO()
    assert await campaign_command(configured, _parser().parse_args(["campaign", "status", str(campaign)]), out) == 0
    assert "bounced=10+0 soft" in out.getvalue() and "paused: guard: bounce rate" in out.getvalue()
    out = io.StringIO()
    await campaign_command(configured, _parser().parse_args(["campaign", "status", str(campaign), "--json"]), out)
    assert json.loads(out.getvalue())[0]["hard_bounced"] == 10


async def _at_least(awaitable: object, n: int) -> bool:
    return await awaitable >= n  # type: ignore[misc, operator]


async def _is(awaitable: object, value: str) -> bool:
    return await awaitable == value  # type: ignore[misc]
