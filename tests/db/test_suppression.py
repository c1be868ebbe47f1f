"""Suppression: materialisation and the send path exclude suppressed addresses (even re-imported
as subscribed), and `sender suppress …` manages the list, refusing bad input whole."""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

import asyncpg

from sender.config import Settings
from sender.demo.fakeses import FakeSES
from sender.suppress_cli import suppress_command
from sender.suppression import Suppression, suppress
from tests.helpers import (
    add_campaign,
    add_contacts,
    add_template,
    campaign_status,
    recipient_counts,
    running_daemon,
    wait_for,
)


async def cli(settings: Settings, *argv: str) -> tuple[int, str, str]:
    from sender.cli import _parser

    args: argparse.Namespace = _parser().parse_args(["suppress", *argv])
    out, err = io.StringIO(), io.StringIO()
    code = await suppress_command(settings, args, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


async def test_materialisation_leaves_suppressed_addresses_out(db: asyncpg.Connection, settings: Settings,
                                                               fake_ses: FakeSES) -> None:
    await add_contacts(db, 6)
    await suppress(db, [Suppression("USER1@example.org", "bounced", "test"),
                        Suppression("user4@example.org ", "complained", "test")])
    campaign = await add_campaign(db, await add_template(db))
    async with running_daemon(settings):
        await wait_for(lambda: campaign_status(db, campaign), timeout=30)
        await wait_for(lambda: _is(db, campaign, "sent"))
    emails = {r["email"] for r in await db.fetch("SELECT email FROM campaign_recipients WHERE campaign_id = $1",
                                                  campaign)}
    assert emails == {f"user{i}@example.org" for i in (0, 2, 3, 5)}
    assert len(fake_ses.messages) == 4


async def _is(db: asyncpg.Connection, campaign: int, status: str) -> bool:
    return await campaign_status(db, campaign) == status


async def test_send_path_skips_an_address_suppressed_after_materialising(db: asyncpg.Connection,
                                                                          settings: Settings,
                                                                          fake_ses: FakeSES) -> None:
    """The main app supplied the list itself and re-imported a bounced contact as subscribed."""
    await add_contacts(db, 3)
    campaign = await add_campaign(db, await add_template(db), rules=None, status="draft")
    await db.execute("INSERT INTO campaign_recipients (campaign_id, contact_id, email) "
                     "SELECT $1, id, upper(email) FROM contacts", campaign)
    await suppress(db, [Suppression("user1@example.org", "bounced", "ses_event")])
    await db.execute("UPDATE contacts SET status = 'subscribed'")
    await db.execute("UPDATE campaigns SET status = 'queued' WHERE id = $1", campaign)
    async with running_daemon(settings):
        await wait_for(lambda: _is(db, campaign, "sent"))
    assert await recipient_counts(db, campaign) == {"sent": 2, "skipped": 1}
    row = await db.fetchrow("SELECT email, error_code FROM campaign_recipients WHERE status = 'skipped'")
    assert (row["email"], row["error_code"]) == ("USER1@EXAMPLE.ORG", "Suppressed")
    assert "user1@example.org" not in {a.lower() for m in fake_ses.messages for a in m.to}
    assert len(fake_ses.messages) == 2


async def test_cli_add_list_remove_export(db: asyncpg.Connection, settings: Settings) -> None:
    code, out, _ = await cli(settings, "add", "A@Example.com", "b@example.com", "--note", "asked by phone")
    assert (code, out) == (0, "suppressed 2 address(es), 2 new\n")
    assert (await cli(settings, "add", "a@example.com"))[1] == "suppressed 1 address(es), 0 new\n"
    code, out, _ = await cli(settings, "list", "--show", "5")
    assert out.splitlines()[0] == "2 suppressed address(es); manual 2"
    assert "a***@example.com" in out and "a@example.com" not in out
    code, out, _ = await cli(settings, "export")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["email"], r["reason"], r["detail"]) for r in rows] == [
        ("a@example.com", "manual", "asked by phone"), ("b@example.com", "manual", "asked by phone")]
    assert (await cli(settings, "remove", "A@EXAMPLE.COM", "nobody@example.com"))[:2] == (
        0, "removed 1 of 2 address(es)\n")
    assert [r["email"] for r in await db.fetch("SELECT email FROM suppressions")] == ["b@example.com"]


async def test_cli_import_is_all_or_nothing_and_names_the_bad_line(db: asyncpg.Connection, settings: Settings,
                                                                   tmp_path: Path) -> None:
    good = tmp_path / "good.csv"
    good.write_text("email,name\n# exported from the CRM\nx@example.com,X\n\n\"Y@example.com\",Y\nx@example.com,dup\n")
    bad = tmp_path / "bad.txt"
    bad.write_text("p@example.com\nnot-an-address\nq@example.com\n")
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00junk")
    code, _, err = await cli(settings, "import", str(bad))
    assert code == 1 and "line 2" in err and "nothing was changed" in err
    assert (await cli(settings, "import", str(binary)))[0] == 1
    assert (await cli(settings, "import", str(tmp_path / "missing.txt")))[0] == 1
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 0
    code, out, _ = await cli(settings, "import", str(good), "--reason", "bounced")
    assert (code, out) == (0, "suppressed 3 address(es), 2 new\n")
    assert [tuple(r) for r in await db.fetch("SELECT email, reason, source FROM suppressions ORDER BY email")] == [
        ("x@example.com", "bounced", "cli"), ("y@example.com", "bounced", "cli")]


async def test_export_pages_through_a_large_list(db: asyncpg.Connection, settings: Settings) -> None:
    await suppress(db, [Suppression(f"u{i:05d}@example.com", "manual", "test") for i in range(12_000)])
    code, out, _ = await cli(settings, "export", "--reason", "manual")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 12_001 and lines[1].startswith("u00000@") and lines[-1].startswith("u11999@")
