"""The hot queries use their intended indexes on a realistic table (no silent seq scans)."""

from __future__ import annotations

import asyncpg
import pytest

from sender.campaigns import materialise_sql
from sender.db import QUERIES
from sender.db.queries import parse_queries


async def _plan(db: asyncpg.Connection, name: str, *args: object) -> str:
    rows = await db.fetch("EXPLAIN " + QUERIES[name], *args)
    return "\n".join(r[0] for r in rows)


@pytest.fixture
async def big_campaign(db: asyncpg.Connection) -> int:
    await db.execute("INSERT INTO templates (id, name) VALUES (1, 't')")
    for cid in (1, 2, 3):
        await db.execute("INSERT INTO campaigns (id, name, template_id, status) VALUES ($1, 'c', 1, 'sending')", cid)
        await db.execute(
            "INSERT INTO campaign_recipients (campaign_id, email, status) "
            "SELECT $1, 'u' || g || '@example.org', CASE WHEN g % 3 = 0 THEN 'sent' ELSE 'pending' END "
            "FROM generate_series(1, 20000) g", cid)
    await db.execute("UPDATE campaign_recipients SET next_attempt_at = now() WHERE id % 97 = 0 AND status = 'pending'")
    await db.execute("ANALYZE campaign_recipients")
    return 2


async def test_claim_uses_keyset_and_retry_partial_indexes(db: asyncpg.Connection, big_campaign: int) -> None:
    """One claim for three campaigns probes each one's fresh rows after its bound and its due rows."""
    plan = await _plan(db, "claim_many", [1, 2, 3], [5000, 0, 19000], [500, 500, 10], [True, False, True], "me", 60.0)
    assert "campaign_recipients_fresh_idx" in plan
    assert "campaign_recipients_retry_idx" in plan
    assert "Seq Scan on campaign_recipients" not in plan


async def test_write_back_and_recovery_avoid_seq_scans(db: asyncpg.Connection, big_campaign: int) -> None:
    ids = list(range(1, 501))
    n = len(ids)
    plan = await _plan(db, "write_back", "me", ids, ["sent"] * n, ["m"] * n, [None] * n, [None] * n,
                       [1] * n, [None] * n, [None] * n)
    assert "Seq Scan on campaign_recipients" not in plan
    for name in ("recover_orphans_retry", "recover_orphans_fail"):
        assert "Seq Scan on campaign_recipients" not in await _plan(db, name, 30.0, "me")
    assert "Seq Scan on campaign_recipients" not in await _plan(db, "release_unknown", "me", ids)


async def test_materialise_chunk_scans_contacts_by_keyset(db: asyncpg.Connection) -> None:
    await db.execute("INSERT INTO contacts (email) SELECT 'u' || g || '@example.org' FROM generate_series(1, 20000) g")
    await db.execute("ANALYZE contacts")
    sql, params = materialise_sql({"country": ["US"]})
    rows = await db.fetch("EXPLAIN " + sql, 1, 15000, 1000, "me", *params)
    plan = "\n".join(r[0] for r in rows)
    assert "contacts_subscribed_idx" in plan
    assert "Seq Scan on contacts" not in plan


async def test_completion_check_probes_partial_indexes_only(db: asyncpg.Connection, big_campaign: int) -> None:
    plan = await _plan(db, "complete_campaigns", True)
    assert "Seq Scan on campaign_recipients" not in plan
    assert "campaign_recipients_campaign_email_key" not in plan
    for index in ("campaign_recipients_fresh_idx", "campaign_recipients_retry_idx", "campaign_recipients_leased_idx"):
        assert index in plan


def test_query_file_parses_and_rejects_duplicates() -> None:
    assert {"claim_many", "write_back", "complete_campaigns"} <= set(QUERIES)
    with pytest.raises(ValueError, match="defined twice"):
        parse_queries("-- a --\nSELECT 1\n-- a --\nSELECT 2")
