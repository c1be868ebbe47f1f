"""One campaign through moto's SES v2 server: the request shape is what a real SES parser accepts."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import asyncpg
import boto3

from sender.config import Settings
from tests.helpers import add_campaign, add_contacts, add_template, running_daemon, wait_for


def moto_messages(url: str) -> list[dict[str, object]]:
    """Messages moto's SES backend accepted: {"source", "destinations", "subject", "body", "id"}."""
    with urllib.request.urlopen(f"{url}/moto-api/data.json", timeout=10) as response:
        return list(json.load(response)["ses"]["Message"])


async def test_campaign_through_moto_sesv2(db: asyncpg.Connection, settings: Settings, moto_url: str) -> None:
    urllib.request.urlopen(urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST"), timeout=10)
    client = boto3.client("sesv2", region_name="us-east-1", endpoint_url=moto_url,
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_email_identity(EmailIdentity="example.com")
    await add_contacts(db, 5)
    campaign = await add_campaign(db, await add_template(db, html="<p>Hi {{ first_name }}</p>"),
                                  reply_to="help@example.com")
    moto_settings = settings.with_overrides(endpoint_url=moto_url, max_rate=50.0, configuration_set=None,
                                            unsubscribe_url="https://example.com/u/{token}",
                                            unsubscribe_secret="s3cret")
    async with running_daemon(moto_settings):
        await wait_for(lambda: db.fetchval("SELECT status = 'sent' FROM campaigns WHERE id = $1", campaign),
                       timeout=60)
    rows = await db.fetch("SELECT status, message_id FROM campaign_recipients WHERE campaign_id = $1", campaign)
    assert [r["status"] for r in rows] == ["sent"] * 5
    assert all(r["message_id"] for r in rows)
    messages = await asyncio.to_thread(moto_messages, moto_url)
    by_to = {m["destinations"]["ToAddresses"][0]: m for m in messages}  # type: ignore[index]
    assert len(messages) == 5 == len(by_to)
    assert by_to["user0@example.org"]["subject"] == "Hi First0"
    assert by_to["user0@example.org"]["body"] == "<p>Hi First0</p>"
    assert by_to["user0@example.org"]["source"] == "news@example.com"
    assert {m["id"] for m in messages} == {r["message_id"] for r in rows}
