"""`sender demo` shows the deliverability loop: events from the fake SES through a queue into the
database, one unsubscribe by link, and a second campaign that leaves the suppressed out."""

from __future__ import annotations

import io

import asyncpg

from sender.config import Settings
from sender.demo.deliverability import event_kind
from sender.demo.runner import format_summary, run_demo


async def test_demo_runs_the_whole_loop(db: asyncpg.Connection, db_url: str) -> None:
    out = io.StringIO()
    result = await run_demo(Settings(database_url=db_url), recipients=120, rate=200, latency=0.0, out=out)
    assert result.status == "sent" and result.sent == 120
    emails = [r["email"] for r in await db.fetch("SELECT email FROM contacts")]
    expected = {k: sum(event_kind(e, 0.03, 0.005) == k for e in emails) for k in ("Bounce", "Complaint")}
    assert expected["Bounce"] > 0
    assert "one-click unsubscribe of one recipient: HTTP 200" in out.getvalue()
    left_out = expected["Bounce"] + expected["Complaint"] + 1
    assert result.deliverability == (
        f"events: delivered={120 - expected['Bounce'] - expected['Complaint']} bounced={expected['Bounce']} "
        f"complained={expected['Complaint']} unsubscribed=1; campaign 2 to the same list: {120 - left_out} "
        f"recipients, {left_out} suppressed or unsubscribed left out")
    assert format_summary(result).endswith(result.deliverability)
    assert await db.fetchval("SELECT count(*) FROM suppressions") == left_out
    assert await db.fetchval("SELECT status FROM campaigns WHERE id = 2") == "sent"
