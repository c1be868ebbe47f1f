"""`sender campaign …` and `sender send-test` against a real database and the fake SES."""

from __future__ import annotations

import argparse
import io
import json

import asyncpg
import pytest

from sender.admin_cli import campaign_command, send_test
from sender.config import Settings
from sender.demo.fakeses import FakeSES
from sender.progress import format_progress, progress_from
from tests.helpers import add_campaign, add_contacts, add_template, running_daemon


async def run(settings: Settings, *argv: str) -> tuple[int, str]:
    from sender.cli import _parser

    args = _parser().parse_args(list(argv))
    out = io.StringIO()
    if args.command == "send-test":
        code = await send_test(settings, args, out=out)
    else:
        code = await campaign_command(settings, args, out=out)
    return code, out.getvalue()


async def test_campaign_lifecycle_commands(db: asyncpg.Connection, settings: Settings,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    campaign = await add_campaign(db, await add_template(db), status="draft")
    queued = (0, f"campaign {campaign}: queued\n")
    assert await run(settings, "campaign", "send", str(campaign), "--rate", "7") == queued
    row = await db.fetchrow("SELECT status, rate_per_sec FROM campaigns WHERE id = $1", campaign)
    assert (row["status"], float(row["rate_per_sec"])) == ("queued", 7.0)
    assert (await run(settings, "campaign", "pause", str(campaign)))[0] == 0
    assert await db.fetchval("SELECT status FROM campaigns WHERE id = $1", campaign) == "paused"
    assert await run(settings, "campaign", "resume", str(campaign)) == (0, f"campaign {campaign}: queued\n")
    assert await run(settings, "campaign", "cancel", str(campaign)) == (0, f"campaign {campaign}: cancelled\n")
    code, _ = await run(settings, "campaign", "resume", str(campaign))
    assert code == 1 and f"campaign {campaign} is cancelled: cannot resume it" in capsys.readouterr().err
    code, _ = await run(settings, "campaign", "pause", "424242")
    assert code == 1 and "campaign 424242 does not exist" in capsys.readouterr().err
    code, _ = await run(settings, "campaign", "send", str(campaign), "--rate", "0")
    assert code == 2 and "sender: --rate: must be a positive number" in capsys.readouterr().err


async def test_status_shows_counts_rate_and_watch_ends_when_sent(db: asyncpg.Connection, settings: Settings,
                                                                 fake_ses: FakeSES) -> None:
    await add_contacts(db, 30)
    campaign = await add_campaign(db, await add_template(db), rate=30)
    async with running_daemon(settings):
        code, out = await run(settings, "campaign", "status", str(campaign), "--watch")
    assert code == 0
    assert "30/30 sent=30 failed=0 skipped=0" in out
    assert out.count("\n(") >= 2, "--watch refreshed at least once before the campaign finished"
    code, out = await run(settings, "campaign", "status", str(campaign), "--json")
    [data] = json.loads(out)
    assert (data["status"], data["sent"], data["total"], data["pending"]) == ("sent", 30, 30, 0)
    # from sent_at (reply time): reply jitter moves it a little, and a campaign may send a few sends
    # ahead of its even pace (to use runs of account slots); the cap itself is measured at the fake
    assert 20 < data["rate"] <= 36
    assert fake_ses.max_in_any_window() <= 30
    code, out = await run(settings, "campaign", "status")
    assert code == 0 and f"#{campaign}" in out


def test_progress_eta_and_bar() -> None:
    from datetime import UTC, datetime, timedelta

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    row = {"id": 3, "name": "Spring", "status": "sending", "total_count": 100, "sent_count": 41, "failed_count": 2,
           "skipped_count": 1, "in_flight": 6, "first_sent_at": t0, "last_sent_at": t0 + timedelta(seconds=4),
           "error": None}
    p = progress_from(row)
    assert (p.rate, p.pending, p.eta_seconds) == (10.0, 50, 5.6)
    line = format_progress(p, width=10)
    assert "[####------] 44/100 sent=41 failed=2 skipped=1 in_flight=6 10.0/s eta 6s" in line


async def test_send_test_renders_for_the_contact_and_marks_subject(db: asyncpg.Connection, settings: Settings,
                                                                   fake_ses: FakeSES) -> None:
    await db.execute("INSERT INTO contacts (email, first_name, country) VALUES ('qa@example.org', 'Quinn', 'NZ')")
    campaign = await add_campaign(db, await add_template(db, subject="Hi {{ first_name }}",
                                                         html="<p>{{ first_name }} in {{ country }}</p>"),
                                  status="draft")
    code, out = await run(settings, "send-test", "--campaign", str(campaign), "--to", "qa@example.org")
    assert code == 0 and "q***@example.org" in out
    [m] = fake_ses.messages
    assert (m.to, m.subject, m.html) == (["qa@example.org"], "[TEST] Hi Quinn", "<p>Quinn in NZ</p>")
    assert out.strip().endswith(m.message_id)
    assert await db.fetchval("SELECT count(*) FROM campaign_recipients") == 0, "a test send touches no campaign row"


async def test_send_test_bad_input(db: asyncpg.Connection, settings: Settings, fake_ses: FakeSES,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    campaign = await add_campaign(db, await add_template(db), status="draft")
    assert (await run(settings, "send-test", "--campaign", str(campaign), "--to", "nope"))[0] == 2
    assert "--to: address has no @domain" in capsys.readouterr().err
    assert (await run(settings, "send-test", "--campaign", "999", "--to", "a@example.org"))[0] == 1
    assert "campaign 999 does not exist" in capsys.readouterr().err
    unverified = settings.with_overrides(from_email="x@unverified.org")
    assert (await run(unverified, "send-test", "--campaign", str(campaign), "--to", "a@example.org"))[0] == 1
    assert "SES refused the test message (SenderNotVerified)" in capsys.readouterr().err
    assert fake_ses.messages == []


def test_parser_rejects_unknown_commands() -> None:
    from sender.cli import _parser

    with pytest.raises(SystemExit):
        _parser().parse_args(["campaign", "explode", "1"])
    assert isinstance(_parser().parse_args(["campaign", "status"]), argparse.Namespace)


async def test_send_test_reports_a_contact_that_does_not_render(db: asyncpg.Connection, settings: Settings,
                                                                fake_ses: FakeSES,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    await db.execute("INSERT INTO contacts (email, attributes) VALUES ('zero@example.org', '{\"n\": 0}')")
    campaign = await add_campaign(db, await add_template(db, html="{{ 100 // attributes.n }}"), status="draft")
    code, _ = await run(settings, "send-test", "--campaign", str(campaign), "--to", "zero@example.org")
    err = capsys.readouterr().err
    assert code == 1
    assert f"campaign {campaign} does not render for z***@example.org" in err and "ZeroDivisionError" in err
    assert fake_ses.messages == []
