"""The real daemon against a real PostgreSQL and the fake SES over HTTP."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import asyncpg

from sender.config import Settings
from sender.demo.fakeses import FakeSES
from tests.helpers import (
    add_campaign,
    add_contacts,
    add_template,
    campaign_status,
    recipient_counts,
    running_daemon,
    wait_for,
)


async def test_campaign_sends_exact_bodies_once_per_recipient(db: asyncpg.Connection, settings: Settings,
                                                              fake_ses: FakeSES) -> None:
    await add_contacts(db, 40, country="US")
    await db.execute("UPDATE contacts SET first_name = '<b>Eve & \"Co\"</b>' WHERE email = 'user3@example.org'")
    await add_contacts(db, 5, start=100, country="FR")
    template = await add_template(db, subject="Hello {{ first_name }}",
                                  html="<p>Hi {{ first_name }} from {{ country }}</p>")
    campaign = await add_campaign(db, template, rules={"country": ["US"]}, reply_to="help@example.com")

    async with running_daemon(settings):
        await wait_for(lambda: _is(db, campaign, "sent"), timeout=60)

    rows = await db.fetch("SELECT email, status, message_id, sent_at, attempts FROM campaign_recipients "
                          "WHERE campaign_id = $1", campaign)
    assert len(rows) == 40
    assert all(r["status"] == "sent" and r["message_id"] and r["sent_at"] and r["attempts"] == 1 for r in rows)
    by_to = {m.to[0]: m for m in fake_ses.messages}
    assert len(fake_ses.messages) == 40 == len(by_to), "exactly one message per recipient"
    assert {r["message_id"] for r in rows} == {m.message_id for m in fake_ses.messages}
    plain = by_to["user7@example.org"]
    assert plain.subject == "Hello First7"
    assert plain.html == "<p>Hi First7 from US</p>"
    assert plain.text == "Hi First7 from US"
    assert plain.from_email == "news@example.com"
    assert plain.reply_to == ["help@example.com"]
    hostile = by_to["user3@example.org"]
    assert hostile.html == "<p>Hi &lt;b&gt;Eve &amp; &#34;Co&#34;&lt;/b&gt; from US</p>"
    assert hostile.subject == 'Hello <b>Eve & "Co"</b>'
    summary = await db.fetchrow("SELECT status, total_count, sent_count, failed_count, finished_at "
                                "FROM campaigns WHERE id = $1", campaign)
    assert dict(summary) | {"finished_at": None} == {
        "status": "sent", "total_count": 40, "sent_count": 40, "failed_count": 0, "finished_at": None}
    assert summary["finished_at"] is not None


async def _is(db: asyncpg.Connection, campaign: int, status: str) -> bool:
    return await campaign_status(db, campaign) == status


async def test_rate_cap_holds_in_every_one_second_window(db: asyncpg.Connection, settings: Settings,
                                                         fake_ses: FakeSES) -> None:
    fake_ses.account.max_send_rate = 1000  # the fake does not enforce here: we measure our own cap
    fake_ses.enforce_rate = False
    await add_contacts(db, 90)
    campaign = await add_campaign(db, await add_template(db))
    async with running_daemon(settings.with_overrides(max_rate=40.0)):
        await wait_for(lambda: _is(db, campaign, "sent"), timeout=60)
    assert len(fake_ses.messages) == 90
    assert fake_ses.max_in_any_window(1.0) <= 40
    assert fake_ses.throttled_count() == 0


async def test_campaign_rate_per_sec_limits_below_account_cap(db: asyncpg.Connection, settings: Settings,
                                                              fake_ses: FakeSES) -> None:
    fake_ses.enforce_rate = False
    await add_contacts(db, 30)
    campaign = await add_campaign(db, await add_template(db), rate=10)
    async with running_daemon(settings.with_overrides(max_rate=200.0)):
        await wait_for(lambda: _is(db, campaign, "sent"), timeout=60)
    assert fake_ses.max_in_any_window(1.0) <= 10


async def test_sandbox_account_defaults_campaign_rate_to_one_per_second(db: asyncpg.Connection,
                                                                         settings: Settings,
                                                                         fake_ses: FakeSES) -> None:
    fake_ses.account.production = False
    fake_ses.verified_recipients = {f"user{i}@example.org" for i in range(4)}
    await add_contacts(db, 4)
    campaign = await add_campaign(db, await add_template(db))
    async with running_daemon(settings) as daemon:
        await wait_for(lambda: _is(db, campaign, "sent"), timeout=60)
        assert daemon.rate.campaign_rate(None) == 1.0
    times = sorted(m.received_at for m in fake_ses.messages)
    assert len(times) == 4
    assert fake_ses.max_in_any_window(1.0) == 1
    assert min(b - a for a, b in itertools.pairwise(times)) > 0.9, "spaced about a second apart, not bunched"


async def test_pause_stops_sending_and_resume_finishes(db: asyncpg.Connection, settings: Settings,
                                                       fake_ses: FakeSES) -> None:
    await add_contacts(db, 60)
    campaign = await add_campaign(db, await add_template(db), rate=20)
    async with running_daemon(settings):
        await wait_for(lambda: _sent_at_least(fake_ses, 10), timeout=30)
        await db.execute("UPDATE campaigns SET status = 'paused' WHERE id = $1", campaign)
        # once the pause is honoured nothing is in flight and nothing more goes out
        await wait_for(lambda: _no_row_sending(db, campaign), timeout=5)
        sent_at_pause = len(fake_ses.messages)
        counts = await recipient_counts(db, campaign)
        assert counts.get("sent", 0) == sent_at_pause
        assert counts.get("pending", 0) == 60 - sent_at_pause > 0
        await db.execute("UPDATE campaigns SET status = 'sending' WHERE id = $1", campaign)
        await wait_for(lambda: _is(db, campaign, "sent"), timeout=60)
    assert len(fake_ses.messages) == 60
    assert len({m.to[0] for m in fake_ses.messages}) == 60


async def _sent_at_least(fake: FakeSES, n: int) -> bool:
    return len(fake.messages) >= n


async def _no_row_sending(db: asyncpg.Connection, campaign: int) -> bool:
    return not await db.fetchval("SELECT count(*) FROM campaign_recipients WHERE campaign_id = $1 "
                                 "AND status = 'sending'", campaign)


async def test_cancel_mid_campaign_skips_pending(db: asyncpg.Connection, settings: Settings,
                                                 fake_ses: FakeSES) -> None:
    await add_contacts(db, 60)
    campaign = await add_campaign(db, await add_template(db), rate=20)
    async with running_daemon(settings) as daemon:
        await wait_for(lambda: _sent_at_least(fake_ses, 10), timeout=30)
        await db.execute("UPDATE campaigns SET status = 'cancelled' WHERE id = $1", campaign)
        await wait_for(lambda: db.fetchval("SELECT finished_at IS NOT NULL FROM campaigns WHERE id = $1",
                                           campaign), timeout=10)
    counts = await recipient_counts(db, campaign)
    # rows skipped by the runner and by the set-based cancel statement are all counted in /metrics
    assert daemon.metrics.total("skipped") == counts["skipped"]
    assert daemon.metrics.total("sent") == counts["sent"]
    assert counts.get("sent", 0) == len(fake_ses.messages)
    assert counts.get("skipped", 0) == 60 - len(fake_ses.messages) > 0
    assert set(counts) <= {"sent", "skipped"}
    row = await db.fetchrow("SELECT status, sent_count, skipped_count FROM campaigns WHERE id = $1", campaign)
    assert (row["status"], row["sent_count"], row["skipped_count"]) == (
        "cancelled", counts["sent"], counts["skipped"])
    reasons = await db.fetch("SELECT DISTINCT error_code FROM campaign_recipients WHERE status = 'skipped'")
    assert [r["error_code"] for r in reasons] == ["CampaignCancelled"]


async def test_scheduled_campaign_waits_until_due(db: asyncpg.Connection, settings: Settings,
                                                  fake_ses: FakeSES) -> None:
    await add_contacts(db, 3)
    template = await add_template(db)
    later = await add_campaign(db, template, scheduled_at=datetime.now(UTC) + timedelta(hours=1))
    now = await add_campaign(db, template, scheduled_at=datetime.now(UTC) - timedelta(seconds=1))
    async with running_daemon(settings):
        await wait_for(lambda: _is(db, now, "sent"), timeout=30)
        assert await campaign_status(db, later) == "queued"
    assert len(fake_ses.messages) == 3


async def test_contacts_unsubscribed_after_materialising_are_skipped(db: asyncpg.Connection,
                                                                     settings: Settings,
                                                                     fake_ses: FakeSES) -> None:
    await add_contacts(db, 5)
    campaign = await add_campaign(db, await add_template(db), status="draft")
    # the main app supplied the list itself (target_rules null), including a now-unsubscribed contact
    await db.execute("UPDATE campaigns SET target_rules = NULL, status = 'queued' WHERE id = $1", campaign)
    await db.execute("INSERT INTO campaign_recipients (campaign_id, contact_id, email) "
                     "SELECT $1, id, email FROM contacts", campaign)
    await db.execute("INSERT INTO campaign_recipients (campaign_id, email) VALUES ($1, 'not an address')", campaign)
    await db.execute("UPDATE contacts SET status = 'unsubscribed' WHERE email = 'user2@example.org'")
    async with running_daemon(settings):
        await wait_for(lambda: _is(db, campaign, "sent"), timeout=30)
    rows = {r["email"]: r for r in await db.fetch(
        "SELECT email, status, error_code, error FROM campaign_recipients WHERE campaign_id = $1", campaign)}
    assert rows["user2@example.org"]["status"] == "skipped"
    assert rows["user2@example.org"]["error_code"] == "ContactUnsubscribed"
    assert rows["not an address"]["status"] == "failed"
    assert rows["not an address"]["error_code"] == "InvalidAddress"
    assert sorted(m.to[0] for m in fake_ses.messages) == sorted(
        f"user{i}@example.org" for i in (0, 1, 3, 4))


async def test_unsubscribe_headers_and_configuration_set_tags(db: asyncpg.Connection, settings: Settings,
                                                              fake_ses: FakeSES) -> None:
    from sender.tokens import verify_unsubscribe_token

    await add_contacts(db, 3)
    campaign = await add_campaign(db, await add_template(db, html='<p><a href="{{ unsubscribe_url }}">stop</a></p>'))
    configured = settings.with_overrides(unsubscribe_url="https://app.example.com/u/{token}",
                                         unsubscribe_secret="k3y", configuration_set="events")
    async with running_daemon(configured):
        await wait_for(lambda: _is(db, campaign, "sent"), timeout=30)
    ids = {r["email"]: r["id"] for r in await db.fetch("SELECT id, email FROM campaign_recipients")}
    assert len(fake_ses.messages) == 3
    for m in fake_ses.messages:
        recipient = ids[m.to[0]]
        link = m.headers["List-Unsubscribe"]
        assert link.startswith("<https://app.example.com/u/") and link.endswith(">")
        token = link[len("<https://app.example.com/u/"):-1]
        assert verify_unsubscribe_token("k3y", token) == (campaign, recipient)
        assert m.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert f'href="https://app.example.com/u/{token}"' in m.html
        assert m.configuration_set == "events"
        assert m.tags == {"campaign_id": str(campaign), "recipient_id": str(recipient)}


async def test_without_unsubscribe_or_configuration_set_no_extras(db: asyncpg.Connection, settings: Settings,
                                                                  fake_ses: FakeSES) -> None:
    await add_contacts(db, 1)
    campaign = await add_campaign(db, await add_template(db))
    async with running_daemon(settings):
        await wait_for(lambda: _is(db, campaign, "sent"), timeout=30)
    [m] = fake_ses.messages
    assert (m.headers, m.tags, m.configuration_set) == ({}, {}, None)
