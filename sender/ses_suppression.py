"""Optional sync with the SES account-level suppression list (SENDER_SES_SUPPRESSION_SYNC).

Push: local hard suppressions (bounced, complained) go to SES with PutSuppressedDestination, so
SES itself refuses them even from other senders on the account. Pull: ListSuppressedDestinations
since the last pull comes back as local suppressions (reason `ses`), so materialisation leaves
them out instead of SES bouncing them at send time (which costs quota and counts as a bounce).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from sender.db import QUERIES
from sender.logs import get_logger
from sender.suppression import Suppression, suppress

log = get_logger("sender.ses_suppression")

SES_REASON = {"bounced": "BOUNCE", "complained": "COMPLAINT"}


@dataclass
class SyncResult:
    pushed: int = 0
    pulled: int = 0
    new_locally: int = 0


async def sync_once(client: Any, pool: asyncpg.Pool, *, push_limit: int = 1000) -> SyncResult:
    """One round: push what SES lacks (up to push_limit), pull what SES added since last time."""
    result = SyncResult()
    rows = await pool.fetch(QUERIES["ses_sync_unpushed"], push_limit)
    pushed: list[str] = []
    for row in rows:
        try:
            await client.put_suppressed_destination(EmailAddress=row["email"], Reason=SES_REASON[row["reason"]])
        except Exception as exc:  # a bad address or a refusal must not stop the others
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)
            log.warning("ses_suppression_push_failed", code=code)
            if code == "BadRequestException":
                pushed.append(row["email"])  # SES will never take it: do not retry forever
            continue
        pushed.append(row["email"])
    if pushed:
        await pool.execute(QUERIES["ses_sync_mark_pushed"], pushed)
    result.pushed = len(pushed)
    since: datetime | None = await pool.fetchval(QUERIES["ses_sync_pulled_until"])
    started = datetime.now(UTC)
    kwargs: dict[str, Any] = {"PageSize": 1000}
    if since is not None:
        kwargs["StartDate"] = since
    while True:
        page = await client.list_suppressed_destinations(**kwargs)
        items = [Suppression(d["EmailAddress"], "ses", "ses_account", f"SES {d.get('Reason', '')}".strip())
                 for d in page.get("SuppressedDestinationSummaries", []) if isinstance(d.get("EmailAddress"), str)]
        result.pulled += len(items)
        result.new_locally += await suppress(pool, items)
        token = page.get("NextToken")
        if not token:
            break
        kwargs["NextToken"] = token
    await pool.execute(QUERIES["ses_sync_set_pulled_until"], started)
    return result


async def sync_loop(settings: Any, pool: asyncpg.Pool, *, interval: float = 600.0) -> None:
    """Every `interval` seconds while the daemon runs; failures are logged and retried next round."""
    from sender.ses import open_ses

    async with open_ses(settings, pool_size=2) as ses:
        while True:
            try:
                done = await sync_once(ses.raw, pool)
                if done.pushed or done.new_locally:
                    log.info("ses_suppression_synced", pushed=done.pushed, pulled=done.pulled,
                             new_locally=done.new_locally)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("ses_suppression_sync_failed", error=type(exc).__name__)
            await asyncio.sleep(interval)
