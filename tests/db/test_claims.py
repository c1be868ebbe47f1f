"""The one claim statement every campaign of an instance shares (`claim_many`) and the batcher
around it (`sender.claims.Claims`), against real PostgreSQL."""

from __future__ import annotations

import asyncio

import asyncpg

from sender.claims import Claims
from sender.config import Settings
from sender.db import QUERIES
from sender.db.pool import create_pool
from sender.message import Claimed
from tests.helpers import add_campaign, add_contacts, add_template


async def _campaign_with(db: asyncpg.Connection, template: int, contacts: list[int]) -> int:
    campaign = await add_campaign(db, template, status="sending")
    await db.execute("INSERT INTO campaign_recipients (campaign_id, contact_id, email) "
                     "SELECT $1, id, email FROM contacts WHERE id = ANY($2::bigint[]) ORDER BY id", campaign, contacts)
    return campaign


async def _claim(db: asyncpg.Connection, wanted: list[tuple[int, int, int, bool]],
                 me: str = "me") -> list[asyncpg.Record]:
    ids, after, n, due = (list(column) for column in zip(*wanted, strict=True))
    return await db.fetch(QUERIES["claim_many"], ids, after, n, due, me, 30.0)


async def test_one_statement_claims_for_several_campaigns_each_within_its_count(db: asyncpg.Connection) -> None:
    await add_contacts(db, 30)
    template = await add_template(db)
    contacts = [r["id"] for r in await db.fetch("SELECT id FROM contacts ORDER BY id")]
    a = await _campaign_with(db, template, contacts[:10])
    b = await _campaign_with(db, template, contacts[10:20])
    c = await _campaign_with(db, template, contacts[20:])
    first_b = await db.fetchval("SELECT min(id) FROM campaign_recipients WHERE campaign_id = $1", b)
    # two rows of a came back for a retry (due now): they go first when a asks for due rows
    retried = [r["id"] for r in await db.fetch(
        "UPDATE campaign_recipients SET next_attempt_at = now() - interval '1 second' WHERE id IN "
        "(SELECT id FROM campaign_recipients WHERE campaign_id = $1 ORDER BY id DESC LIMIT 2) RETURNING id", a)]

    rows = await _claim(db, [(a, 0, 3, True), (b, first_b + 4, 100, False), (c, 0, 0, False)])

    by_campaign: dict[int, list[asyncpg.Record]] = {}
    for r in rows:
        by_campaign.setdefault(r["campaign_id"], []).append(r)
    assert set(by_campaign) == {a, b}  # c asked for none
    assert len(by_campaign[a]) == 3 and {r["id"] for r in by_campaign[a] if not r["fresh"]} == set(retried)
    assert [r["id"] for r in by_campaign[b]] == list(range(first_b + 5, first_b + 10))  # after the bound only
    assert all(r["fresh"] for r in by_campaign[b])
    held = await db.fetchval("SELECT count(*) FROM campaign_recipients WHERE status = 'sending' AND claimed_by = 'me'")
    assert held == len(rows) == 8
    # a second instance asking for everything gets only what is left
    rest = await _claim(db, [(a, 0, 100, True), (b, 0, 100, True), (c, 0, 100, True)], me="other")
    assert len(rest) == 30 - 8 and not {r["id"] for r in rest} & {r["id"] for r in rows}


async def test_the_batcher_answers_concurrent_campaigns_in_one_statement_and_hands_rows_over_at_once(
        db: asyncpg.Connection, db_url: str) -> None:
    await add_contacts(db, 40)
    template = await add_template(db)
    contacts = [r["id"] for r in await db.fetch("SELECT id FROM contacts ORDER BY id")]
    campaigns = [await _campaign_with(db, template, contacts[i * 4:(i + 1) * 4]) for i in range(10)]
    pool = await create_pool(db_url)
    claims = Claims(pool, Settings(from_email="news@example.com", instance_id="me"), held_ids=set)
    runner = asyncio.create_task(claims.run())
    got: dict[int, list[Claimed]] = {}
    try:
        # nine ask without hurrying; the tenth hurries: one statement serves all ten
        replies = [claims.claim(cid, 0, lambda: 3, due=False, urgent=cid == campaigns[-1],
                                deliver=lambda rows, cid=cid: got.setdefault(cid, rows))
                   for cid in campaigns]
        answers = await asyncio.gather(*replies)
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await pool.close()
    assert answers == [(3, 3)] * 10
    assert claims.statements == 1 and claims.requests == 10
    assert {cid: len(rows) for cid, rows in got.items()} == dict.fromkeys(campaigns, 3)
    assert await db.fetchval("SELECT count(*) FROM campaign_recipients WHERE status = 'sending'") == 30


async def test_one_runner_failing_to_take_its_rows_does_not_stop_the_others(
        db: asyncpg.Connection, db_url: str) -> None:
    await add_contacts(db, 8)
    template = await add_template(db)
    contacts = [r["id"] for r in await db.fetch("SELECT id FROM contacts ORDER BY id")]
    broken, fine = (await _campaign_with(db, template, contacts[:4]), await _campaign_with(db, template, contacts[4:]))
    pool = await create_pool(db_url)
    claims = Claims(pool, Settings(from_email="news@example.com", instance_id="me"), held_ids=set)
    runner = asyncio.create_task(claims.run())
    got: list[Claimed] = []

    def refuse(rows: list[Claimed]) -> None:
        raise RuntimeError("a runner bug")

    try:
        failing = claims.claim(broken, 0, lambda: 4, due=False, urgent=False, deliver=refuse)
        working = claims.claim(fine, 0, lambda: 4, due=False, urgent=True, deliver=got.extend)
        assert await working == (4, 4) and len(got) == 4
        try:
            await failing
        except RuntimeError as exc:
            assert str(exc) == "a runner bug"
        else:
            raise AssertionError("the failing runner was told nothing")
        assert not runner.done()  # the claimer carries on for everyone else
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await pool.close()
