"""Many campaigns at once, against real PostgreSQL: batched starts in a fixed number of statements,
bad campaigns failing alone inside a batch, fair materialisation, set-based completion."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import asyncpg

from sender.campaigns import materialise_step, start_queued
from sender.config import Settings
from sender.db import QUERIES
from sender.tick import STARTS_PER_TICK, Tick
from tests.helpers import add_campaign, add_contacts, add_template


class CountingPool:
    """One connection behind the pool interface, counting every statement sent on it (asyncpg's own
    one-off type introspection, run the first time a connection meets a type, left out)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.statements: list[str] = []
        conn.add_query_logger(self._log)

    def _log(self, record: Any) -> None:
        if "pg_catalog.pg_type" not in record.query and "set_config('jit'" not in record.query:
            self.statements.append(record.query)

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        yield self.conn

    async def execute(self, sql: str, *args: Any, **kwargs: Any) -> str:
        return str(await self.conn.execute(sql, *args, **kwargs))


def _settings() -> Settings:
    return Settings(from_email="news@example.com", instance_id="me")


async def _statuses(db: asyncpg.Connection, ids: list[int]) -> dict[int, tuple[str, str | None]]:
    rows = await db.fetch("SELECT id, status, error FROM campaigns WHERE id = ANY($1::bigint[])", ids)
    return {r["id"]: (r["status"], r["error"]) for r in rows}


async def _tick_starts(db_url: str, settings: Settings) -> tuple[CountingPool, SimpleNamespace]:
    """Tick._start_queued over a counting connection, with the daemon reduced to what the step uses."""
    from sender.db import connect

    pool = CountingPool(await connect(db_url))
    woken = SimpleNamespace(materialiser=0, again=False)
    materialiser = SimpleNamespace(wake=lambda: setattr(woken, "materialiser", woken.materialiser + 1))
    daemon = SimpleNamespace(pool=pool, settings=settings, materialiser=materialiser)
    tick = Tick(daemon)  # type: ignore[arg-type]
    await tick._start_queued()
    woken.again = tick.again
    await pool.conn.close()
    return pool, woken


async def test_one_tick_starts_fifty_due_campaigns_in_two_statements(db: asyncpg.Connection, db_url: str) -> None:
    await add_contacts(db, 3)
    template = await add_template(db)
    campaigns = [await add_campaign(db, template) for _ in range(50)]
    later = await add_campaign(db, template, scheduled_at=await db.fetchval("SELECT now() + interval '1 hour'"))

    pool, woken = await _tick_starts(db_url, _settings())

    # one transaction: take, then start, whatever the count
    assert pool.statements == ["BEGIN;", QUERIES["queued_take"], QUERIES["campaigns_start_checked"], "COMMIT;"]
    statuses = await _statuses(db, [*campaigns, later])
    assert {statuses[c] for c in campaigns} == {("sending", None)}
    assert statuses[later] == ("queued", None)  # not due yet
    assert woken.materialiser == 1 and woken.again  # the next tick follows at once, for their runners


async def test_the_statement_count_does_not_grow_with_the_batch(db: asyncpg.Connection, db_url: str) -> None:
    template = await add_template(db)
    for _ in range(3):
        await add_campaign(db, template)
    few, _ = await _tick_starts(db_url, _settings())
    for _ in range(120):
        await add_campaign(db, template)
    many, _ = await _tick_starts(db_url, _settings())
    assert len(few.statements) == len(many.statements) == 4
    assert await db.fetchval("SELECT count(*) FROM campaigns WHERE status = 'sending'") == 123


async def test_a_tick_starts_at_most_its_bound_and_the_next_one_the_rest(db: asyncpg.Connection,
                                                                        db_url: str) -> None:
    template = await add_template(db)
    await db.execute("INSERT INTO campaigns (name, template_id, target_rules, status) "
                     "SELECT 'c', $1, '{}', 'queued' FROM generate_series(1, $2)", template, STARTS_PER_TICK + 7)
    first, woken = await _tick_starts(db_url, _settings())
    assert woken.again and len(first.statements) == 4
    assert await db.fetchval("SELECT count(*) FROM campaigns WHERE status = 'queued'") == 7
    second, _ = await _tick_starts(db_url, _settings())
    assert len(second.statements) == 4
    assert await db.fetchval("SELECT count(*) FROM campaigns WHERE status = 'queued'") == 0


async def test_bad_campaigns_in_a_batch_fail_alone_with_their_reason(db: asyncpg.Connection, db_url: str) -> None:
    await add_contacts(db, 4)
    good_template = await add_template(db)
    goods = [await add_campaign(db, good_template) for _ in range(5)]
    bad_template = await add_campaign(db, await add_template(db, html="{% for x in %}broken"))
    bad_rules = await add_campaign(db, good_template, rules={"field": "password", "op": "eq", "value": "x"})
    missing = await add_campaign(db, good_template)
    await db.execute("UPDATE campaigns SET template_id = NULL WHERE id = $1", missing)
    deleted = await add_campaign(db, await add_template(db))
    await db.execute("DELETE FROM templates WHERE id = (SELECT template_id FROM campaigns WHERE id = $1)", deleted)
    goods.append(await add_campaign(db, good_template))

    pool, _ = await _tick_starts(db_url, _settings())

    assert len(pool.statements) == 4
    statuses = await _statuses(db, [*goods, bad_template, bad_rules, missing, deleted])
    assert {statuses[c] for c in goods} == {("sending", None)}
    assert statuses[bad_template][0] == "failed" and "content_html" in (statuses[bad_template][1] or "")
    assert statuses[bad_rules][0] == "failed" and "password" in (statuses[bad_rules][1] or "")
    assert statuses[missing] == ("failed", "campaign has no template_id")
    assert statuses[deleted][0] == "failed" and "does not exist" in (statuses[deleted][1] or "")
    finished = await db.fetchval("SELECT count(*) FROM campaigns WHERE status = 'failed' AND finished_at IS NOT NULL")
    assert finished == 4


async def test_a_started_campaign_with_its_own_list_needs_no_materialising(db: asyncpg.Connection,
                                                                            db_url: str) -> None:
    """target_rules null: the main app supplied the recipients; the start counts them, in the same statement."""
    template = await add_template(db)
    campaign = await db.fetchval("INSERT INTO campaigns (name, template_id, status) VALUES ('c', $1, 'queued') "
                                 "RETURNING id", template)
    await db.execute("INSERT INTO campaign_recipients (campaign_id, email) "
                     "SELECT $1, 'r' || g || '@example.org' FROM generate_series(1, 7) g", campaign)
    from sender.db import create_pool

    pool = await create_pool(db_url, min_size=1, max_size=1)
    try:
        [result] = await start_queued(pool, _settings())
    finally:
        await pool.close()
    assert result.started and result.plan is not None and result.plan.id == campaign
    row = await db.fetchrow("SELECT status, total_count, materialised_at FROM campaigns WHERE id = $1", campaign)
    assert (row["status"], row["total_count"]) == ("sending", 7) and row["materialised_at"] is not None


async def test_a_campaign_started_behind_a_big_one_materialises_at_once(db: asyncpg.Connection,
                                                                        db_url: str) -> None:
    """Least advanced first: a campaign started while a big one is mid-way gets the next chunk (and
    starts sending) instead of waiting for the big one's last chunk (ordered by id, it waited)."""
    await add_contacts(db, 500)
    template = await add_template(db)
    big = await add_campaign(db, template, status="sending")
    await db.execute("UPDATE campaigns SET materialise_cursor = 0, materialising_by = 'me' WHERE id = $1", big)
    from sender.db import create_pool

    pool = await create_pool(db_url, min_size=1, max_size=1)
    try:
        for _ in range(2):
            step = await materialise_step(pool, _settings(), chunk=100)
            assert step is not None and step.campaign_id == big and not step.done
        small = await add_campaign(db, template, rules={"email": ["user5@example.org"]}, status="sending")
        await db.execute("UPDATE campaigns SET materialise_cursor = 0, materialising_by = 'me' WHERE id = $1", small)
        step = await materialise_step(pool, _settings(), chunk=100)
        assert step is not None and (step.campaign_id, step.added) == (small, 1)
    finally:
        await pool.close()
    assert await db.fetchval("SELECT materialised_at FROM campaigns WHERE id = $1", big) is None


async def test_completion_is_one_statement_for_a_thousand_sending_campaigns(db: asyncpg.Connection) -> None:
    """complete_campaigns ends every finished campaign in one statement, and the plan probes
    recipients by index per campaign rather than scanning the table."""
    template = await add_template(db)
    await db.execute(
        "INSERT INTO campaigns (name, template_id, status, materialised_at, total_count, sent_count) "
        "SELECT 'c', $1, 'sending', now(), 1, CASE WHEN g % 10 = 0 THEN 0 ELSE 1 END FROM generate_series(1, 1000) g",
        template)
    await db.execute("INSERT INTO campaign_recipients (campaign_id, email, status) "
                     "SELECT id, 'x' || id || '@example.org', CASE WHEN sent_count = 1 THEN 'sent' ELSE 'pending' END "
                     "FROM campaigns")
    await db.execute("ANALYZE campaigns; ANALYZE campaign_recipients")
    plan = "\n".join(r[0] for r in await db.fetch("EXPLAIN " + QUERIES["complete_campaigns"], False))
    assert "Seq Scan on campaign_recipients" not in plan, plan
    completed = await db.fetch(QUERIES["complete_campaigns"], False)
    assert len(completed) == 900
    assert await db.fetchval("SELECT count(*) FROM campaigns WHERE status = 'sending'") == 100


async def _status(settings: Settings, *argv: str) -> tuple[int, str]:
    import io

    from sender.admin_cli import campaign_command
    from sender.cli import _parser

    out = io.StringIO()
    code = await campaign_command(settings, _parser().parse_args(["campaign", "status", *argv]), out=out)
    return code, out.getvalue()


async def test_status_without_an_id_stays_readable_with_a_thousand_campaigns(db: asyncpg.Connection,
                                                                            db_url: str) -> None:
    template = await add_template(db)
    await db.execute(
        "INSERT INTO campaigns (name, template_id, status, total_count, sent_count, started_at, finished_at) "
        "SELECT 'c' || g, $1, (ARRAY['sending', 'queued', 'sent', 'failed'])[1 + g % 4], 10, "
        "CASE WHEN g % 4 = 0 THEN 4 WHEN g % 4 = 2 THEN 10 ELSE 0 END, now() - interval '10 s', "
        "CASE WHEN g % 4 IN (2, 3) THEN now() END FROM generate_series(1, 1000) g", template)
    settings = Settings(database_url=db_url)

    code, out = await _status(settings)
    lines = out.splitlines()
    assert code == 0
    assert lines[0] == "1000 campaigns: failed 250, queued 250, sending 250, sent 250"
    assert lines[1].startswith("sending: 250 campaigns, 1000/2500 done, sent=1000 failed=0 skipped=0, ")
    assert "/s together" in lines[1]
    assert lines[2] == "active (20 of 500; --limit N or --all for the other 480):"
    progress = [line for line in lines if line.startswith("#")]
    assert len(progress) == 20 + 5  # the first 20 active (sending first), then 5 recently finished
    assert all(" sending " in line for line in progress[:20])
    assert "recently finished:" in lines

    code, out = await _status(settings, "--limit", "3", "--json")
    data = json.loads(out)
    assert code == 0 and data["summary"]["by_status"] == {"sending": 250, "queued": 250, "sent": 250, "failed": 250}
    assert (len(data["active"]), data["active_total"], len(data["recent"])) == (3, 500, 5)
    assert data["summary"]["rate"] > 0 and data["summary"]["sending"]["sent"] == 1000

    code, out = await _status(settings, "--all", "--json")
    data = json.loads(out)
    assert len(data["active"]) + len(data["recent"]) == 1000


async def test_starts_stop_at_the_bound_on_sending_campaigns_oldest_first(db: asyncpg.Connection,
                                                                          db_url: str) -> None:
    """With room for 20 more sending campaigns, a tick starts the 20 oldest due ones; the rest stay
    queued until sending ones finish."""
    await add_contacts(db, 3)
    template = await add_template(db)
    campaigns = [await add_campaign(db, template) for _ in range(50)]
    from sender.db import connect

    pool = CountingPool(await connect(db_url))
    materialiser = SimpleNamespace(wake=lambda: None)
    tick = Tick(SimpleNamespace(pool=pool, settings=_settings(), materialiser=materialiser))  # type: ignore[arg-type]
    tick.again = False
    await tick._start_queued(room=20)
    await pool.conn.close()
    statuses = await _statuses(db, campaigns)
    assert [c for c in campaigns if statuses[c][0] == "sending"] == campaigns[:20]
    assert {statuses[c][0] for c in campaigns[20:]} == {"queued"}
    assert tick.again  # the started campaigns' runners start in the next tick ...
    assert len([q for q in pool.statements if q == QUERIES["campaigns_start_checked"]]) == 1  # ... in one batch
