"""Addresses SES would reject are refused up front with a reason that does not echo them."""

from __future__ import annotations

import asyncpg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sender import campaigns
from sender.addresses import AddressError, normalise_address
from sender.campaigns import materialise_sql
from sender.db.migrate import available_migrations


@pytest.mark.parametrize(("raw", "clean"), [
    ("ann@example.com", "ann@example.com"),
    ("  ann+tag@sub.example.co.uk ", "ann+tag@sub.example.co.uk"),
    ("ann@bücher.de", "ann@xn--bcher-kva.de"),
])
def test_valid_addresses(raw: str, clean: str) -> None:
    assert normalise_address(raw) == clean


@pytest.mark.parametrize(("raw", "reason"), [
    ("", "empty"), ("   ", "empty"), (None, "empty"),
    ("no-at-sign", "no @domain"),
    ("ann@localhost", "invalid domain"),
    ("ann@-bad-.com", "invalid domain"),
    ("a..b@example.com", "invalid local part"),
    ("zoë@example.com", "ASCII local parts only"),
    ("ann@example.com\r\nBcc: x@y.com", "control characters"),
    ("a b@example.com", "invalid local part"),
])
def test_invalid_addresses(raw: str | None, reason: str) -> None:
    with pytest.raises(AddressError, match=reason) as err:
        normalise_address(raw)
    if raw and raw.strip():
        assert raw.strip() not in str(err.value)


def test_display_name_allowed_for_senders_only() -> None:
    assert normalise_address("News <news@example.com>", allow_display_name=True) == "News <news@example.com>"
    with pytest.raises(AddressError):
        normalise_address("News <news@example.com>")


FULLWIDTH_ANN = "".join(chr(ord(c) + 0xFEE0) for c in "ann@example.org")


@pytest.mark.parametrize(("raw", "clean"), [
    (" ann@example.org", "ann@example.org"),
    ("ann@example.org\n", "ann@example.org"),
    ("\u3000ann@example.org\u00a0", "ann@example.org"),
    (FULLWIDTH_ANN, "ann@example.org"),
    ("ann@EXAMPLE.org", "ann@example.org"),
    ("Ann@example.org", "Ann@example.org"),  # local parts keep their case (RFC 5321); the key ignores it
    ("kurt@straße.de", "kurt@xn--strae-oqa.de"),  # IDNA 2008: ß stays ß
    ("kurt@STRASSE.de", "kurt@strasse.de"),
    ("ann@例え。jp", "ann@xn--r8jz45g.jp"),
])
def test_addresses_fold_consistently(raw: str, clean: str) -> None:
    assert normalise_address(raw) == clean


def test_sharp_s_domain_never_becomes_ss() -> None:
    assert normalise_address("kurt@straße.de") != normalise_address("kurt@strasse.de")


@pytest.mark.parametrize("raw", [
    "a\u200bnn@example.org", "ann@exa\u200bmple.org",  # zero-width space: UTS 46 would drop it silently
    "a\u200dnn@example.org", "ann@exa\u200dmple.org",  # zero-width joiner
    "ann@exa\u00admple.org",  # soft hyphen
    "\ufeffann@example.org",  # byte-order mark
])
def test_invisible_characters_are_refused_in_either_part(raw: str) -> None:
    with pytest.raises(AddressError, match="invisible formatting characters"):
        normalise_address(raw)


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=40))
@settings(max_examples=300, deadline=None)
def test_normalise_only_returns_ascii_or_raises_address_error(raw: str) -> None:
    try:
        clean = normalise_address(raw + "@example.org")
    except AddressError:
        return
    assert clean.isascii() and normalise_address(clean) == clean


async def _materialised(db: asyncpg.Connection, emails: list[str]) -> list[str]:
    for email in emails:
        await db.execute("INSERT INTO contacts (email) VALUES ($1)", email)
    await db.execute("INSERT INTO templates (id, name) VALUES (1, 't')")
    await db.execute("INSERT INTO campaigns (id, name, template_id) VALUES (1, 'c', 1)")
    sql, params = materialise_sql({})
    # campaign 1 (and, for the chunked statement, from the start, one chunk, owner): whichever shape it has
    fixed = (1, 0, 1000, "me")[:getattr(campaigns, "MATERIALISE_FIRST_RULE_PARAM", 2) - 1]
    await db.execute(sql, *fixed, *params)
    if "materialise_cursor" in sql:
        await db.execute("UPDATE campaigns SET materialise_cursor = 0")
    await db.execute(sql, *fixed, *params)  # idempotent
    return [r["email"] for r in await db.fetch("SELECT email FROM campaign_recipients ORDER BY id")]


async def test_materialisation_dedupes_on_the_normalised_address(db: asyncpg.Connection) -> None:
    emails = await _materialised(db, ["ann@example.org", " ann@example.org", "ANN@example.org\t",
                                      "\uff41\uff4e\uff4e\uff20example.org", "bob@example.org", "kurt@straße.de",
                                      "kurt@strasse.de"])
    assert emails == ["ann@example.org", "bob@example.org", "kurt@straße.de", "kurt@strasse.de"]
    # the database key and the sender agree: rows it keeps apart normalise apart
    assert len({normalise_address(e).lower() for e in emails}) == len(emails)


async def test_invisible_variant_is_kept_apart_so_the_real_address_still_gets_mail(db: asyncpg.Connection) -> None:
    emails = await _materialised(db, ["a\u200bnn@example.org", "ann@example.org"])
    assert emails == ["a\u200bnn@example.org", "ann@example.org"]


async def test_migration_0003_drops_unsent_duplicates_and_keeps_history(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        later = [(v, sql) for v, sql in available_migrations() if v >= "0003"]
        for version, sql in available_migrations():
            if version < "0003":
                await conn.execute(sql)
        await conn.execute("INSERT INTO templates (id, name) VALUES (1, 't')")
        await conn.execute("INSERT INTO campaigns (id, name, template_id) VALUES (1, 'c', 1), (2, 'd', 1)")
        await conn.execute(
            "INSERT INTO campaign_recipients (campaign_id, email, status, sent_at) VALUES "
            "(1, 'ann@example.org', 'sent', now()), (1, ' ann@example.org', 'pending', NULL), "
            "(2, ' bob@example.org', 'pending', NULL), (2, 'bob@example.org', 'pending', NULL), "
            "(2, 'cara@example.org', 'pending', NULL)")
        for _, sql in later:
            await conn.execute(sql)
        rows = await conn.fetch("SELECT campaign_id, email, status FROM campaign_recipients ORDER BY id")
        assert [tuple(r) for r in rows] == [(1, "ann@example.org", "sent"), (2, " bob@example.org", "pending"),
                                            (2, "cara@example.org", "pending")]
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute("INSERT INTO campaign_recipients (campaign_id, email) VALUES (2, 'BOB@example.org')")
    finally:
        await conn.close()
