"""The suppression list: addresses that are never mailed again, whatever the main app re-imports.

Materialisation and the claim both check it (queries `materialise_recipients` and `claim_many`),
so an address suppressed mid-campaign is skipped (`Suppressed`) at send time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass

import asyncpg

from sender.addresses import AddressError, normalise_address
from sender.db import QUERIES

REASONS = ("unsubscribed", "bounced", "complained", "soft_bounced", "manual", "ses")


def suppression_key(address: str) -> str:
    """The key an address is suppressed under: trimmed and lower-cased, exactly as the SQL side
    compares it (`lower(email)`), so a contact's address matches however it was capitalised."""
    return address.strip().lower()


def checked_key(address: str) -> str:
    """The key for an address typed by an operator; AddressError when SES could never take it."""
    normalise_address(address)
    return suppression_key(address)


@dataclass(frozen=True)
class Suppression:
    email: str
    reason: str
    source: str
    detail: str | None = None
    campaign_id: int | None = None


async def suppress(conn: asyncpg.Connection | asyncpg.Pool, items: Sequence[Suppression]) -> int:
    """Upsert suppressions in one statement; how many addresses were new."""
    if not items:
        return 0
    for item in items:
        if item.reason not in REASONS:
            raise ValueError(f"unknown suppression reason {item.reason!r} (one of {', '.join(REASONS)})")
    rows = await conn.fetch(
        QUERIES["suppress_many"],
        [suppression_key(i.email) for i in items], [i.reason for i in items], [i.source for i in items],
        [i.detail for i in items], [i.campaign_id for i in items],
    )
    return sum(1 for r in rows if r["inserted"])


async def unsuppress(conn: asyncpg.Connection | asyncpg.Pool, addresses: Iterable[str]) -> list[str]:
    """Remove addresses from the list; the keys that were there."""
    rows = await conn.fetch(QUERIES["suppress_remove"], [suppression_key(a) for a in addresses])
    return [r["email"] for r in rows]


async def iterate(conn: asyncpg.Connection, *, reason: str | None = None,
                  page: int = 5000) -> AsyncIterator[asyncpg.Record]:
    """Every suppression in address order, a page at a time (constant memory for any size)."""
    after = ""
    while True:
        rows = await conn.fetch(QUERIES["suppress_list"], after, page, reason)
        for row in rows:
            yield row
        if len(rows) < page:
            return
        after = rows[-1]["email"]


def parse_import_line(line: str, lineno: int) -> str | None:
    """The address on one line of an import file (first CSV column; `#` comments and a header
    line `email` ignored), None for a line to skip; AddressError naming the line otherwise."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    first = text.split(",", 1)[0].strip().strip('"')
    if first.lower() in ("email", "address", "email_address"):
        return None
    try:
        return checked_key(first)
    except AddressError as exc:
        raise AddressError(f"line {lineno}: {exc}") from None
