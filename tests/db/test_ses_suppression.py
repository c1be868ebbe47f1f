"""SENDER_SES_SUPPRESSION_SYNC: local hard suppressions go to the SES account-level list, SES's
list comes back as local suppressions; against the fake SES's suppression API over HTTP."""

from __future__ import annotations

import time

import asyncpg
import pytest

from sender.config import ConfigError, Settings, load_settings
from sender.db import create_pool
from sender.demo.fakeses import FakeSES
from sender.ses import open_ses
from sender.ses_suppression import sync_once
from sender.suppression import Suppression, suppress


async def test_push_then_pull(db: asyncpg.Connection, db_url: str, fake_ses: FakeSES, settings: Settings) -> None:
    await suppress(db, [Suppression("Hard@Example.com", "bounced", "ses_event"),
                        Suppression("angry@example.com", "complained", "ses_event"),
                        Suppression("left@example.com", "unsubscribed", "unsubscribe_link"),
                        Suppression("broken", "bounced", "ses_event")])
    fake_ses.suppressed["old@example.org"] = ("BOUNCE", time.time() - 10)
    pool = await create_pool(db_url, min_size=1, max_size=2)
    try:
        async with open_ses(settings, pool_size=2) as ses:
            first = await sync_once(ses.raw, pool)
            fake_ses.suppressed["new@example.org"] = ("COMPLAINT", time.time() + 5)
            second = await sync_once(ses.raw, pool)
    finally:
        await pool.close()
    assert {a: r for a, (r, _) in fake_ses.suppressed.items()} == {
        "hard@example.com": "BOUNCE", "angry@example.com": "COMPLAINT", "old@example.org": "BOUNCE",
        "new@example.org": "COMPLAINT"}
    assert (first.pushed, second.pushed) == (3, 0)  # "broken" refused by SES, not retried forever
    assert first.new_locally == 1 and second.pulled == 1 and second.new_locally == 1  # only what changed since
    rows = dict(await db.fetch("SELECT email, reason FROM suppressions"))
    assert rows["old@example.org"] == "ses" and rows["new@example.org"] == "ses"
    assert rows["hard@example.com"] == "bounced"  # SES echoing our own push keeps the first reason
    assert await db.fetchval("SELECT count(*) FROM suppressions WHERE ses_synced_at IS NULL "
                             "AND reason IN ('bounced', 'complained')") == 0


def test_setting_is_a_boolean() -> None:
    assert load_settings({"SENDER_SES_SUPPRESSION_SYNC": "true"}).ses_suppression_sync is True
    assert load_settings({}).ses_suppression_sync is False
    with pytest.raises(ConfigError, match="SENDER_SES_SUPPRESSION_SYNC"):
        load_settings({"SENDER_SES_SUPPRESSION_SYNC": "maybe"})
