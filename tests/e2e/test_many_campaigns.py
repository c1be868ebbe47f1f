"""Many small campaigns through the real daemon and the fake SES over HTTP: every one ends sent,
each address gets its message once, the account cap holds across all of them, bad ones fail
alone, and /metrics keeps per-campaign series for a bounded number of campaigns."""

from __future__ import annotations

import re
from collections import Counter

import aiohttp
import asyncpg

from sender.config import Settings
from sender.daemon import Daemon
from sender.demo.fakeses import FakeSES
from sender.metrics import CAMPAIGN_SERIES_LIMIT
from tests.helpers import add_campaign, add_contacts, add_template, max_in_window, running_daemon, wait_for

_CAMPAIGN_LABEL = re.compile(r'campaign_id="(\d+)"')


async def _one_recipient_campaigns(db: asyncpg.Connection, count: int, template: int, *, start: int = 0,
                                   status: str = "queued") -> list[int]:
    """`count` campaigns to one address each (user{start+i}@example.org), the list supplied by the main app."""
    ids = [r["id"] for r in await db.fetch(
        "INSERT INTO campaigns (name, template_id, status) SELECT 'small ' || g, $1, 'draft' "
        "FROM generate_series(1, $2) g RETURNING id", template, count)]
    await db.execute(
        "INSERT INTO campaign_recipients (campaign_id, contact_id, email) "
        "SELECT c.id, ct.id, ct.email FROM unnest($1::bigint[]) WITH ORDINALITY AS c(id, n) "
        "JOIN contacts ct ON ct.email = 'user' || ($2 + c.n - 1) || '@example.org'", ids, start)
    await db.execute("UPDATE campaigns SET status = $2 WHERE id = ANY($1::bigint[])", ids, status)
    return ids


async def _count_in(db: asyncpg.Connection, ids: list[int], status: str) -> int:
    return int(await db.fetchval("SELECT count(*) FROM campaigns WHERE id = ANY($1::bigint[]) AND status = $2",
                                 ids, status))


def _once_each(fake: FakeSES, addresses: set[str]) -> None:
    per_address = Counter(m.to[0] for m in fake.messages)
    assert set(per_address) == addresses, set(per_address) ^ addresses
    assert max(per_address.values()) == 1, [a for a, n in per_address.items() if n > 1]


def _campaign_labels(text: str) -> set[str]:
    return {m.group(1) for line in text.splitlines() if not line.startswith("#")
            for m in [_CAMPAIGN_LABEL.search(line)] if m}


async def _scrape(daemon: Daemon) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{daemon.ops.port}/metrics") as r:
        assert r.status == 200
        return await r.text()


async def test_two_hundred_one_recipient_campaigns_all_end_sent_under_the_account_cap(
        db: asyncpg.Connection, settings: Settings, fake_ses: FakeSES) -> None:
    fake_ses.account.max_send_rate = 50.0  # 200 messages take at least 4 s: the cap has to hold across campaigns
    await add_contacts(db, 200)
    campaigns = await _one_recipient_campaigns(db, 200, await add_template(db))
    async with running_daemon(settings):
        await wait_for(lambda: _count_in(db, campaigns, "sent"), timeout=120)
        await wait_for(lambda: _all_sent(db, campaigns), timeout=120)
    _once_each(fake_ses, {f"user{i}@example.org" for i in range(200)})
    assert fake_ses.max_in_any_window(1.0) <= 50
    assert fake_ses.throttled_count() == 0
    counts = await db.fetchrow("SELECT sum(sent_count) AS sent, sum(total_count) AS total FROM campaigns "
                               "WHERE id = ANY($1::bigint[])", campaigns)
    assert (counts["sent"], counts["total"]) == (200, 200)


async def _all_sent(db: asyncpg.Connection, ids: list[int]) -> bool:
    return await _count_in(db, ids, "sent") == len(ids)


async def test_bad_campaigns_in_a_batch_fail_alone_and_the_rest_send(db: asyncpg.Connection, settings: Settings,
                                                                     fake_ses: FakeSES) -> None:
    await add_contacts(db, 40)
    template = await add_template(db)
    goods = await _one_recipient_campaigns(db, 30, template, status="draft")
    bad_template = await add_template(db, html="{{ unclosed")
    bads = await _one_recipient_campaigns(db, 3, template, start=30, status="draft")
    await db.execute("UPDATE campaigns SET template_id = $2 WHERE id = $1", bads[0], bad_template)
    await db.execute("UPDATE campaigns SET target_rules = '{\"field\": \"salary\", \"op\": \"gt\", \"value\": 1}' "
                     "WHERE id = $1", bads[1])
    await db.execute("UPDATE campaigns SET template_id = NULL WHERE id = $1", bads[2])
    mixed = sorted([*goods, *bads])
    await db.execute("UPDATE campaigns SET status = 'queued' WHERE id = ANY($1::bigint[])", mixed)  # one batch
    async with running_daemon(settings):
        await wait_for(lambda: _all_sent(db, goods), timeout=60)
    errors = {r["id"]: (r["status"], r["error"]) for r in await db.fetch(
        "SELECT id, status, error FROM campaigns WHERE id = ANY($1::bigint[])", bads)}
    assert errors[bads[0]][0] == "failed" and "content_html" in errors[bads[0]][1]
    assert errors[bads[1]][0] == "failed" and "salary" in errors[bads[1]][1]
    assert errors[bads[2]] == ("failed", "campaign has no template_id")
    _once_each(fake_ses, {f"user{i}@example.org" for i in range(30)})  # nothing to the bad campaigns' addresses


async def test_per_campaign_series_stay_within_the_bound_over_five_hundred_campaigns(
        db: asyncpg.Connection, settings: Settings, fake_ses: FakeSES) -> None:
    await add_contacts(db, 500)
    template = await add_template(db)
    campaigns = await _one_recipient_campaigns(db, 500, template)
    most = {"labels": 0, "sending": 0}
    async with running_daemon(settings) as daemon:

        async def sent_while_scraping() -> bool:
            text = await _scrape(daemon)
            most["labels"] = max(most["labels"], len(_campaign_labels(text)))
            most["sending"] = max(most["sending"], _gauge(text, "sender_sending_campaigns"))
            return await _count_in(db, campaigns, "sent") == len(campaigns)

        async def settled() -> str | None:
            text = await _scrape(daemon)
            return text if not daemon.runners and _gauge(text, "sender_sending_campaigns") == 0 else None

        await wait_for(lambda: _ready(daemon), timeout=30)
        await wait_for(sent_while_scraping, timeout=120)
        text = await wait_for(settled, timeout=60)
    assert most["sending"] > CAMPAIGN_SERIES_LIMIT, f"the bound was never tested: {most}"
    assert most["labels"] <= CAMPAIGN_SERIES_LIMIT, most
    assert len(_campaign_labels(text)) <= CAMPAIGN_SERIES_LIMIT
    assert _gauge(text, 'sender_outcomes_total{outcome="sent"}') == 500  # the aggregate counts every campaign
    assert _gauge(text, "sender_backlog_recipients") == 0


async def _ready(daemon: Daemon) -> bool:
    return daemon.ready.is_set()


def _gauge(text: str, sample: str) -> float:
    found = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
    assert found is not None, sample
    return float(found.group(1))




async def test_a_big_campaign_and_a_hundred_small_ones_share_the_cap_and_none_is_starved(
        db: asyncpg.Connection, settings: Settings, fake_ses: FakeSES) -> None:
    """The fairness rule: campaigns take account slots in turn. Small campaigns queued while a big one
    sends at the cap all finish while the big one is still sending; a rated one keeps its rate."""
    fake_ses.account.max_send_rate = 50.0
    await add_contacts(db, 406)
    template = await add_template(db)
    # the big one mails user0..user299 (country US); the small and rated ones have the others
    await db.execute("UPDATE contacts SET country = 'CA' WHERE email ~ '^user(3[0-9][0-9]|40[0-5])@'")
    big = int(await db.fetchval(
        "INSERT INTO campaigns (name, template_id, target_rules, status) VALUES ('big', $1, $2, 'queued') "
        "RETURNING id", template, {"field": "country", "op": "eq", "value": "US"}))
    rated_addresses = {f"user{i}@example.org" for i in range(400, 406)}
    async with running_daemon(settings):
        await wait_for(lambda: _received_at_least(fake_ses, 20), timeout=60)
        small = await _one_recipient_campaigns(db, 100, template, start=300)
        rated = int(await db.fetchval(
            "INSERT INTO campaigns (name, template_id, status, rate_per_sec) VALUES ('rated', $1, 'draft', 2) "
            "RETURNING id", template))
        await db.execute("INSERT INTO campaign_recipients (campaign_id, contact_id, email) "
                         "SELECT $1, id, email FROM contacts WHERE email = ANY($2::text[])", rated,
                         sorted(rated_addresses))
        await db.execute("UPDATE campaigns SET status = 'queued' WHERE id = $1", rated)
        await wait_for(lambda: _all_in(db, small, "sent"), timeout=60)
        big_status = await db.fetchval("SELECT status FROM campaigns WHERE id = $1", big)
        await wait_for(lambda: _all_in(db, [big, rated], "sent"), timeout=120)
    assert big_status == "sending", "the small ones finished while the big one was still sending"
    assert fake_ses.max_in_any_window() <= 50 and fake_ses.throttled_count() == 0
    rated_times = sorted(m.received_at for m in fake_ses.messages if m.to[0] in rated_addresses)
    assert len(rated_times) == 6 and max_in_window(rated_times) <= 2, "the rated campaign kept its 2/s"
    _once_each(fake_ses, {f"user{i}@example.org" for i in range(406)})


async def _received_at_least(fake: FakeSES, n: int) -> bool:
    return len(fake.messages) >= n


async def _all_in(db: asyncpg.Connection, ids: list[int], status: str) -> bool:
    return await _count_in(db, ids, status) == len(ids)



async def test_claims_of_many_campaigns_share_statements(db: asyncpg.Connection, settings: Settings,
                                                         fake_ses: FakeSES) -> None:
    """Sixty campaigns of ten sending at once: rows are claimed for many campaigns per statement (a
    claim loop per campaign cost at least two statements each), and each address gets one message."""
    fake_ses.account.max_send_rate = 100.0
    await add_contacts(db, 600)
    template = await add_template(db)
    ids = [r["id"] for r in await db.fetch(
        "INSERT INTO campaigns (name, template_id, status) SELECT 'ten ' || g, $1, 'draft' "
        "FROM generate_series(1, 60) g RETURNING id", template)]
    await db.execute(  # campaign n gets contacts 10n .. 10n+9 (in id order)
        "INSERT INTO campaign_recipients (campaign_id, contact_id, email) "
        "SELECT ($1::bigint[])[(row_number() OVER (ORDER BY id) - 1) / 10 + 1], id, email FROM contacts", ids)
    await db.execute("UPDATE campaigns SET status = 'queued' WHERE id = ANY($1::bigint[])", ids)
    async with running_daemon(settings) as daemon:
        await wait_for(lambda: _all_sent(db, ids), timeout=120)
        claims = daemon.ctx.claims
        statements, requests = claims.statements, claims.requests
    _once_each(fake_ses, {f"user{i}@example.org" for i in range(600)})
    assert fake_ses.max_in_any_window(1.0) <= 100
    print(f"claim statements {statements}, requests {requests}")
    assert statements <= len(ids), (statements, requests)
    assert requests >= 3 * statements, (statements, requests)  # each statement served several campaigns


async def test_at_most_the_bound_of_campaigns_send_at_once_and_the_queued_rest_follow(
        db: asyncpg.Connection, db_url: str, settings: Settings, fake_ses: FakeSES) -> None:
    """SENDER_MAX_SENDING_CAMPAIGNS=5 with 40 campaigns queued at once: never more than 5 `sending`
    (watched all along), and every one of the 40 ends sent, its address mailed once."""
    import asyncio
    import dataclasses

    fake_ses.account.max_send_rate = 20.0
    await add_contacts(db, 40)
    campaigns = await _one_recipient_campaigns(db, 40, await add_template(db))
    most = 0
    watching = await asyncpg.connect(db_url)

    async def watch() -> None:
        nonlocal most
        while True:
            most = max(most, await _count_in(watching, campaigns, "sending"))
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch())
    try:
        async with running_daemon(dataclasses.replace(settings, max_sending_campaigns=5)) as daemon:
            await wait_for(lambda: _all_sent(db, campaigns), timeout=120)
            assert len(daemon.runners) <= 5
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await watching.close()
    assert 1 <= most <= 5
    _once_each(fake_ses, {f"user{i}@example.org" for i in range(40)})


async def test_campaigns_share_the_cap_in_proportion_to_their_rates(
        db: asyncpg.Connection, settings: Settings, fake_ses: FakeSES) -> None:
    """Cap 60/s, campaigns at 50/s and 25/s (together over the cap): they get about 40 and 20 (2:1),
    not 30 each, and the cap holds."""
    fake_ses.account.max_send_rate = 60.0
    await add_contacts(db, 400)
    template = await add_template(db)
    fast = await add_campaign(db, template, rate=50, status="draft")
    slow = await add_campaign(db, template, rate=25, status="draft")
    await db.execute(  # 200 contacts each, supplied by the main app
        "INSERT INTO campaign_recipients (campaign_id, contact_id, email) "
        "SELECT CASE WHEN row_number() OVER (ORDER BY id) <= 200 THEN $1::bigint ELSE $2::bigint END, id, email "
        "FROM contacts", fast, slow)
    await db.execute("UPDATE campaigns SET target_rules = NULL, status = 'queued' WHERE id = ANY($1::bigint[])",
                     [fast, slow])  # the lists above, nothing materialised
    async with running_daemon(settings):
        await wait_for(lambda: _accepted(fake_ses, 180), timeout=60)
    first = [m for m in sorted(fake_ses.messages, key=lambda m: m.received_at)][:180]
    share = Counter("fast" if int(m.to[0].split("@")[0].removeprefix("user")) < 200 else "slow" for m in first)
    assert 1.6 <= share["fast"] / share["slow"] <= 2.5, share  # 2:1 by rate; an even split would be 1:1
    assert fake_ses.max_in_any_window(1.0) <= 60


async def _accepted(fake: FakeSES, n: int) -> bool:
    return len(fake.messages) >= n


async def test_a_rated_campaign_next_to_many_without_a_rate_still_gets_about_its_rate(
        db: asyncpg.Connection, settings: Settings, fake_ses: FakeSES) -> None:
    """Cap 60/s, one campaign at 10/s among 20 without a rate: those weigh an equal share of the cap
    (3/s each), so the rated one gets about 10/60 of the first messages (weighing them as the whole cap
    would leave it under 1%, an even split 1/21)."""
    fake_ses.account.max_send_rate = 60.0
    await add_contacts(db, 420)
    template = await add_template(db)
    rated = await add_campaign(db, template, rate=10, status="draft")
    others = [await add_campaign(db, template, status="draft") for _ in range(20)]
    await db.execute(  # the rated campaign gets contacts user0..user19, each other one 20 more
        "INSERT INTO campaign_recipients (campaign_id, contact_id, email) "
        "SELECT ($1::bigint[])[(row_number() OVER (ORDER BY id) - 1) / 20 + 1], id, email FROM contacts",
        [rated, *others])
    await db.execute("UPDATE campaigns SET target_rules = NULL, status = 'queued' WHERE id = ANY($1::bigint[])",
                     [rated, *others])  # the lists above, nothing materialised
    async with running_daemon(settings):
        await wait_for(lambda: _accepted(fake_ses, 120), timeout=60)
    ordered = sorted(fake_ses.messages, key=lambda m: m.received_at)
    first = ordered[:120]
    mine = sum(1 for m in first if int(m.to[0].split("@")[0].removeprefix("user")) < 20)
    assert 12 <= mine <= 22, mine  # about 10/70 of 120 = 17 by weight (its window allows at most 10/s)
    assert fake_ses.max_in_any_window(1.0) <= 60
