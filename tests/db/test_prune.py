"""`sender prune`: removes recipient rows of campaigns that finished before AGE, and nothing else."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
import pytest

from sender.config import Settings
from sender.demo.fakeses import FakeSES
from sender.prune import AgeError, parse_age, prune
from tests.helpers import add_campaign, add_contacts, add_template, recipient_counts, running_daemon, wait_for
from tests.processes import sender_cli


def test_parse_age_takes_units_and_refuses_anything_else() -> None:
    assert parse_age("30d") == timedelta(days=30)
    assert parse_age("12h") == timedelta(hours=12)
    assert parse_age("90m") == timedelta(minutes=90)
    assert parse_age("2w") == timedelta(weeks=2)
    assert parse_age("45 seconds") == timedelta(seconds=45)
    assert parse_age("1.5d") == timedelta(hours=36)
    for bad in ("", "30", "d", "-3d", "3 fortnights", "30d; DROP TABLE", "1e9d", "99999999w"):
        with pytest.raises(AgeError, match=r"30d|100 years"):
            parse_age(bad)


async def _finished_campaign(db: asyncpg.Connection, template: int, status: str, days_ago: float,
                             row_status: str, contacts: int = 40) -> int:
    """A campaign the main app supplied recipients for, already ended `days_ago` days ago."""
    campaign = await add_campaign(db, template, rules=None, status="draft")
    await db.execute("INSERT INTO campaign_recipients (campaign_id, contact_id, email, status, sent_at, "
                     "message_id) SELECT $1, id, email, $2, CASE WHEN $2 = 'sent' THEN now() END, "
                     "CASE WHEN $2 = 'sent' THEN 'm-' || id END FROM contacts ORDER BY id LIMIT $3",
                     campaign, row_status, contacts)
    await db.execute("UPDATE campaigns SET status = $2, total_count = $3, sent_count = $4, skipped_count = $5, "
                     "started_at = now() - make_interval(days => $6::int + 1), "
                     "finished_at = now() - make_interval(secs => $6 * 86400) WHERE id = $1",
                     campaign, status, contacts, contacts if row_status == "sent" else 0,
                     contacts if row_status == "skipped" else 0, days_ago)
    return campaign


async def _counters(db: asyncpg.Connection, campaign: int) -> tuple[str, int, int, int]:
    row = await db.fetchrow("SELECT status, total_count, sent_count, skipped_count FROM campaigns WHERE id = $1",
                            campaign)
    return row["status"], row["total_count"], row["sent_count"], row["skipped_count"]


async def test_prune_while_a_campaign_sends_removes_only_campaigns_finished_before_age(
        db: asyncpg.Connection, settings: Settings, fake_ses: FakeSES) -> None:
    await add_contacts(db, 120)
    template = await add_template(db)
    old_sent = await _finished_campaign(db, template, "sent", 40, "sent")
    old_cancelled = await _finished_campaign(db, template, "cancelled", 35, "skipped")
    old_failed = await _finished_campaign(db, template, "failed", 40, "pending")  # resumable: kept
    recent = await _finished_campaign(db, template, "sent", 2, "sent")
    before = {c: await _counters(db, c) for c in (old_sent, old_cancelled, old_failed, recent)}
    sending = await add_campaign(db, template, rate=40)
    async with running_daemon(settings):
        await wait_for(lambda: _sent_some(db, sending))
        removed = await prune(db, timedelta(days=30), chunk=7)
        assert await db.fetchval("SELECT status FROM campaigns WHERE id = $1", sending) == "sending"
        await wait_for(lambda: _status(db, sending, "sent"), timeout=60)
    assert {(p.campaign_id, p.rows) for p in removed} == {(old_sent, 40), (old_cancelled, 40)}
    assert await recipient_counts(db, old_sent) == {} and await recipient_counts(db, old_cancelled) == {}
    assert await recipient_counts(db, old_failed) == {"pending": 40}
    assert await recipient_counts(db, recent) == {"sent": 40}
    # the campaign rows and their counters stay
    assert {c: await _counters(db, c) for c in before} == before
    # the campaign that was sending meanwhile: every recipient once
    assert await recipient_counts(db, sending) == {"sent": 120}
    assert len({m.to[0] for m in fake_ses.messages}) == len(fake_ses.messages) == 120


async def test_prune_dry_run_changes_nothing_and_a_bad_age_is_refused(db_url: str, db: asyncpg.Connection) -> None:
    await add_contacts(db, 30)
    template = await add_template(db)
    old = await _finished_campaign(db, template, "sent", 10, "sent", contacts=30)
    code, out, err = await sender_cli(db_url, "prune", "--finished-before", "7d", "--dry-run")
    assert code == 0, err
    assert f"campaign {old} (sent, finished" in out and "would remove 30 recipient rows" in out
    assert await recipient_counts(db, old) == {"sent": 30}

    code, out, err = await sender_cli(db_url, "prune", "--finished-before", "a week")
    assert code == 2 and out == ""
    assert err.strip() == ("sender: --finished-before: expected an age such as 30d, 12h, 90m or 2w "
                           "(units s, m, h, d, w), got 'a week'")
    assert await recipient_counts(db, old) == {"sent": 30}

    code, out, err = await sender_cli(db_url, "prune", "--finished-before", "7d")
    assert code == 0, err
    assert "removed 30 recipient rows of 1 campaign(s)" in out
    assert await recipient_counts(db, old) == {}
    assert await _counters(db, old) == ("sent", 30, 30, 0)


async def _sent_some(db: asyncpg.Connection, campaign: int) -> bool:
    return int(await db.fetchval("SELECT sent_count FROM campaigns WHERE id = $1", campaign)) >= 10


async def _status(db: asyncpg.Connection, campaign: int, status: str) -> bool:
    return await db.fetchval("SELECT status FROM campaigns WHERE id = $1", campaign) == status
