"""Deliverability's hot queries use their indexes on a realistic table: events match recipients
by message id, the claim's suppression check is a key lookup."""

from __future__ import annotations

import asyncpg

from sender.db import QUERIES


async def _plan(db: asyncpg.Connection, name: str, *args: object) -> str:
    return "\n".join(r[0] for r in await db.fetch("EXPLAIN " + QUERIES[name], *args))


async def test_event_batches_match_by_message_id_index(db: asyncpg.Connection) -> None:
    await db.execute("INSERT INTO campaigns (id, name, status) VALUES (1, 'c', 'sent')")
    await db.execute("INSERT INTO campaign_recipients (campaign_id, email, status, message_id) "
                     "SELECT 1, 'u' || g || '@example.org', 'sent', 'm-' || g FROM generate_series(1, 60000) g")
    await db.execute("INSERT INTO suppressions (email, reason, source) "
                     "SELECT 'u' || g || '@example.org', 'bounced', 'test' FROM generate_series(1, 20000, 7) g")
    await db.execute("INSERT INTO ses_events (event_key, event_type, email) "
                     "SELECT 'k' || g, CASE WHEN g % 5 = 0 THEN 'soft_bounce' ELSE 'hard_bounce' END, "
                     "'u' || g || '@example.org' FROM generate_series(1, 20000) g")
    await db.execute("ANALYZE campaign_recipients; ANALYZE suppressions; ANALYZE ses_events")
    n = 500
    plan = await _plan(db, "events_apply_recipients", ["delivered"] * n, [f"m-{i}" for i in range(n)], [1] * n,
                       [i for i in range(n)], [None] * n, [None] * n, [f"u{i}@example.org" for i in range(n)])
    assert "campaign_recipients_message_id_idx" in plan, plan
    assert "Seq Scan on campaign_recipients" not in plan
    plan = await _plan(db, "events_soft_bounces_over", [f"u{i}@example.org" for i in range(50)], 30.0, 3)
    assert "Seq Scan on ses_events" not in plan
    await db.execute("UPDATE campaigns SET status = 'sending' WHERE id = 1")
    await db.execute("UPDATE campaign_recipients SET status = 'pending', message_id = NULL WHERE id > 50000")
    await db.execute("ANALYZE campaign_recipients")
    plan = await _plan(db, "claim_many", [1], [50000], [500], [False], "me", 60.0)
    assert "suppressions_pkey" in plan and "Seq Scan on suppressions" not in plan, plan
