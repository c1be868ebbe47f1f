"""The public unsubscribe endpoint over real HTTP and PostgreSQL: GET reads, POST unsubscribes and
suppresses once, bad tokens get one neutral page, big bodies are refused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest

from sender.config import Settings
from sender.db import create_pool
from sender.public_http import PublicServer
from sender.tokens import unsubscribe_token
from tests.helpers import add_campaign, add_template

SECRET = "new-key,old-key"
ONE_CLICK = {"List-Unsubscribe": "One-Click"}


@pytest.fixture
async def public(db_url: str) -> AsyncIterator[str]:
    pool = await create_pool(db_url, min_size=1, max_size=2)
    server = PublicServer(Settings(database_url=db_url, unsubscribe_secret=SECRET, public_http_port=0), pool)
    port = await server.start()
    yield f"http://127.0.0.1:{port}"
    await server.stop()
    await pool.close()


async def one_recipient(db: asyncpg.Connection, email: str = "Ada@Example.org") -> tuple[int, int, int]:
    """(campaign_id, recipient_id, contact_id) of a materialised recipient."""
    contact = await db.fetchval("INSERT INTO contacts (email) VALUES ($1) RETURNING id", email)
    campaign = await add_campaign(db, await add_template(db), status="sending")
    await db.execute("UPDATE campaigns SET name = 'Spring <news>' WHERE id = $1", campaign)
    recipient = await db.fetchval(
        "INSERT INTO campaign_recipients (campaign_id, contact_id, email, status, message_id) "
        "VALUES ($1, $2, $3, 'sent', 'm-1') RETURNING id", campaign, contact, email)
    return campaign, int(recipient), int(contact)


async def test_get_shows_the_page_and_changes_nothing(db: asyncpg.Connection, public: str) -> None:
    campaign, recipient, contact = await one_recipient(db)
    async with aiohttp.ClientSession() as http:
        for _ in range(3):  # a link scanner prefetching
            async with http.get(f"{public}/u/{unsubscribe_token(SECRET, campaign, recipient)}") as resp:
                body = await resp.text()
                assert resp.status == 200
                assert resp.headers["Cache-Control"] == "no-store"
    assert "A***@Example.org" in body and "Spring &lt;news&gt;" in body and 'method="post"' in body
    assert "Ada@" not in body
    assert await db.fetchval("SELECT status FROM contacts WHERE id = $1", contact) == "subscribed"
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 0


async def test_one_click_post_unsubscribes_records_and_suppresses_once(db: asyncpg.Connection, public: str) -> None:
    campaign, recipient, contact = await one_recipient(db)
    url = f"{public}/u/{unsubscribe_token('old-key', campaign, recipient)}"  # mailed before the key rotation
    async with aiohttp.ClientSession() as http:
        for _ in range(2):
            async with http.post(url, data="List-Unsubscribe=One-Click",
                                 headers={"Content-Type": "application/x-www-form-urlencoded"}) as resp:
                assert resp.status == 200
                assert "will receive no more" in await resp.text()
    row = await db.fetchrow("SELECT status, unsubscribed_at, unsubscribed_campaign_id FROM contacts WHERE id = $1",
                            contact)
    assert row["status"] == "unsubscribed" and row["unsubscribed_at"] is not None
    assert row["unsubscribed_campaign_id"] == campaign
    sup = await db.fetch("SELECT email, reason, source, campaign_id FROM suppressions")
    assert [tuple(r) for r in sup] == [("ada@example.org", "unsubscribed", "unsubscribe_link", campaign)]
    assert await db.fetchval("SELECT unsubscribed_count FROM campaigns WHERE id = $1", campaign) == 1
    assert await db.fetchval("SELECT unsubscribed_at IS NOT NULL FROM campaign_recipients WHERE id = $1", recipient)


async def test_unsubscribe_keeps_a_bounced_contact_bounced(db: asyncpg.Connection, public: str) -> None:
    campaign, recipient, contact = await one_recipient(db)
    await db.execute("UPDATE contacts SET status = 'bounced' WHERE id = $1", contact)
    async with aiohttp.ClientSession() as http, http.post(
            f"{public}/u/{unsubscribe_token(SECRET, campaign, recipient)}", data=ONE_CLICK) as resp:
        assert resp.status == 200
    assert await db.fetchval("SELECT status FROM contacts WHERE id = $1", contact) == "bounced"
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 1


async def test_bad_tokens_all_get_the_same_neutral_page(db: asyncpg.Connection, public: str) -> None:
    campaign, recipient, contact = await one_recipient(db)
    genuine = unsubscribe_token(SECRET, campaign, recipient)
    other_campaign = await add_campaign(db, await add_template(db), status="sending")
    forged = [
        genuine[:-1] + ("A" if genuine[-1] != "A" else "B"),  # forged MAC
        genuine[:-3],  # truncated
        unsubscribe_token(SECRET, other_campaign, recipient),  # other campaign's token for this recipient
        unsubscribe_token("stolen-guess", campaign, recipient),
        unsubscribe_token(SECRET, campaign, recipient + 999),  # genuine MAC, no such recipient
        "%00%ff", "1.2.%E2%80%AE" + "A" * 19, "x" * 3000,
    ]
    bodies = set()
    async with aiohttp.ClientSession() as http:
        for token in forged:
            for method in ("GET", "POST"):
                async with http.request(method, f"{public}/u/{token}", data=ONE_CLICK) as resp:
                    assert resp.status == 400, (method, token)
                    bodies.add(await resp.text())
    assert len(bodies) == 1
    assert await db.fetchval("SELECT status FROM contacts WHERE id = $1", contact) == "subscribed"
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 0


async def test_oversized_missing_length_and_wrong_bodies_are_refused(db: asyncpg.Connection, public: str) -> None:
    campaign, recipient, contact = await one_recipient(db)
    url = f"{public}/u/{unsubscribe_token(SECRET, campaign, recipient)}"

    async def big_chunks() -> AsyncIterator[bytes]:
        yield b"List-Unsubscribe=One-Click"
        for _ in range(5):
            yield b"&pad=" + b"x" * 1000

    async with aiohttp.ClientSession() as http:
        async with http.post(url, data={"List-Unsubscribe": "One-Click", "pad": "x" * 5000}) as resp:
            assert resp.status == 413
        async with http.post(url, data=big_chunks(),  # chunked: no Content-Length, capped as it is read
                             headers={"Content-Type": "application/x-www-form-urlencoded"}) as resp:
            assert resp.status == 413
        async with http.post(url, data={"List-Unsubscribe": "Yes"}) as resp:
            assert resp.status == 400
        async with http.post(url) as resp:
            assert resp.status == 400
    assert await db.fetchval("SELECT status FROM contacts WHERE id = $1", contact) == "subscribed"
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 0


async def test_chunked_bodies_are_read_not_refused_with_411(db: asyncpg.Connection, public: str) -> None:
    """Schemathesis' negative form body `{"List-Unsubscribe": []}` encodes to nothing, and `requests` sends
    that as `Transfer-Encoding: chunked` with a zero-length body; the 411 it got is no rejection to
    negative_data_rejection. A chunked body is read like any other, capped at 4 KB: an empty one is an
    empty form (400), a one-click one unsubscribes."""
    campaign, recipient, contact = await one_recipient(db)
    host, port = public.removeprefix("http://").split(":")

    async def raw_post(token: str, chunked_body: bytes) -> bytes:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(f"POST /u/{token} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n"
                     "Content-Type: application/x-www-form-urlencoded\r\nConnection: close\r\n\r\n".encode()
                     + chunked_body)
        await writer.drain()
        status = (await reader.readline()).split()[1]
        writer.close()
        await writer.wait_closed()
        return status

    token = unsubscribe_token(SECRET, campaign, recipient)
    assert await raw_post(token, b"0\r\n\r\n") == b"400"
    assert await raw_post("0", b"0\r\n\r\n") == b"400"
    assert await db.fetchval("SELECT status FROM contacts WHERE id = $1", contact) == "subscribed"
    assert await raw_post(token, b"1a\r\nList-Unsubscribe=One-Click\r\n0\r\n\r\n") == b"200"
    assert await db.fetchval("SELECT status FROM contacts WHERE id = $1", contact) == "unsubscribed"


async def test_without_a_secret_every_token_is_neutral(db: asyncpg.Connection, db_url: str) -> None:
    campaign, recipient, _ = await one_recipient(db)
    pool = await create_pool(db_url, min_size=1, max_size=1)
    server = PublicServer(Settings(database_url=db_url, public_http_port=0), pool)
    port = await server.start()
    try:
        async with aiohttp.ClientSession() as http, http.get(
                f"http://127.0.0.1:{port}/u/{unsubscribe_token(SECRET, campaign, recipient)}") as resp:
            assert resp.status == 400
    finally:
        await server.stop()
        await pool.close()


async def test_browser_loads_the_page_clicks_and_the_contact_is_unsubscribed(db: asyncpg.Connection,
                                                                             public: str) -> None:
    """Headless Chromium: the page a person sees, the button they press, the state that follows."""
    from tests.cdp import chromium, chromium_path

    if chromium_path() is None:
        pytest.fail("chromium is missing: `make tools` (run by `make test`) installs Debian's package")
    campaign, recipient, contact = await one_recipient(db)
    async with chromium(f"{public}/u/{unsubscribe_token(SECRET, campaign, recipient)}") as page:
        assert "Unsubscribe" in await page.wait_for("document.querySelector('#unsubscribe') && document.body.innerText")
        assert await db.fetchval("SELECT status FROM contacts WHERE id = $1", contact) == "subscribed"
        await page.evaluate("document.querySelector('#unsubscribe').click()")
        text = await page.wait_for("document.querySelector('#done') && document.querySelector('#done').innerText")
    assert "will receive no more" in text
    assert await db.fetchval("SELECT status FROM contacts WHERE id = $1", contact) == "unsubscribed"
    assert await db.fetchval("SELECT reason FROM suppressions WHERE email = 'ada@example.org'") == "unsubscribed"
