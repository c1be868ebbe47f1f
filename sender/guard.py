"""The account guard: pause campaigns before SES reviews or pauses the account.

SES reviews an account at a 5% bounce or 0.1% complaint rate and may pause it at 10% / 0.5%. A
campaign whose own rate (hard bounces or complaints over its sends, past SENDER_GUARD_MIN_SAMPLE
sends) passes SENDER_MAX_BOUNCE_RATE / SENDER_MAX_COMPLAINT_RATE is paused with the reason in
`campaigns.paused_reason`; when the account-wide rate over the most recent campaigns holding
SENDER_ACCOUNT_GUARD_WINDOW sends passes them, every queued and sending campaign is paused.
Resuming is the operator's call: a campaign resumed after a guard pause keeps its reason and is
not paused again by the guard.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import asyncpg

from sender.config import Settings
from sender.db import DB_ERRORS, QUERIES
from sender.event_metrics import EventMetrics
from sender.logs import get_logger

log = get_logger("sender.guard")


def over_limit(settings: Settings, sent: int, bounced: int, complained: int) -> str | None:
    """Why these counts trip the guard, or None."""
    if sent <= 0:
        return None
    bounce, complaint = bounced / sent, complained / sent
    if bounce > settings.max_bounce_rate:
        return (f"bounce rate {bounce:.2%} over SENDER_MAX_BOUNCE_RATE {settings.max_bounce_rate:.2%} "
                f"({bounced} hard bounces in {sent} sends)")
    if complaint > settings.max_complaint_rate:
        return (f"complaint rate {complaint:.3%} over SENDER_MAX_COMPLAINT_RATE {settings.max_complaint_rate:.3%} "
                f"({complained} complaints in {sent} sends)")
    return None


class AccountGuard:
    def __init__(self, settings: Settings, pool: asyncpg.Pool, metrics: EventMetrics) -> None:
        self.settings = settings
        self.pool = pool
        self.metrics = metrics
        self.interval = settings.guard_interval
        self.paused: list[dict[str, Any]] = []  # guard-paused campaigns, for /readyz

    async def run(self) -> None:
        prune_every = max(1, int(3600 / self.interval))
        rounds = 0
        while True:
            try:
                await self.check()
                if rounds % prune_every == 0:
                    await self.pool.execute(QUERIES["events_prune"], self.settings.events_retention_days, timeout=60)
            except DB_ERRORS as exc:
                log.warning("guard_check_failed", error=type(exc).__name__)
            rounds += 1
            await asyncio.sleep(self.interval)

    async def check(self) -> list[int]:
        """One pass: pause what is over the limits; the ids paused now."""
        s = self.settings
        paused: list[int] = []
        async with self.pool.acquire() as conn:
            for row in await conn.fetch(QUERIES["guard_campaigns"], s.guard_min_sample, timeout=10):
                reason = over_limit(s, row["sent_count"], row["hard_bounced_count"], row["complained_count"])
                if reason:
                    ids = await self._pause(conn, row["id"], f"guard: {reason}", "campaign")
                    paused += ids
            totals = await conn.fetchrow(QUERIES["guard_account"], s.account_guard_window, timeout=10)
            if totals["sent"] >= s.guard_min_sample:
                reason = over_limit(s, totals["sent"], totals["bounced"], totals["complained"])
                if reason:
                    paused += await self._pause(conn, None, f"account guard: {reason}", "account")
            self.paused = [dict(r) for r in await conn.fetch(QUERIES["guard_paused"], timeout=10)]
        return paused

    async def _pause(self, conn: asyncpg.Connection, campaign_id: int | None, reason: str, scope: str) -> list[int]:
        ids = [r["id"] for r in await conn.fetch(QUERIES["guard_pause"], campaign_id, reason, timeout=10)]
        for cid in ids:
            log.error("campaign_paused_by_guard", campaign_id=cid, scope=scope, reason=reason)
            self.metrics.guard_paused.labels(scope=scope).inc()
        return ids


async def deliverability_by_campaign(conn: asyncpg.Connection | asyncpg.Pool,
                                     ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """Per campaign: delivered, bounced (hard/soft), complained, unsubscribed, their rates, and
    why the guard paused it (if it did)."""
    out: dict[int, dict[str, Any]] = {}
    for r in await conn.fetch(QUERIES["campaign_deliverability"], list(ids)):
        sent = r["sent_count"]
        out[r["id"]] = {
            "delivered": r["delivered_count"], "hard_bounced": r["hard_bounced_count"],
            "soft_bounced": r["soft_bounced_count"], "complained": r["complained_count"],
            "unsubscribed": r["unsubscribed_count"],
            "bounce_rate": round(r["hard_bounced_count"] / sent, 5) if sent else 0.0,
            "complaint_rate": round(r["complained_count"] / sent, 5) if sent else 0.0,
            "paused_reason": r["paused_reason"],
        }
    return out


def format_deliverability(d: dict[str, Any] | None) -> str:
    """The extra line under a campaign in `sender campaign status`."""
    if not d:
        return ""
    line = (f"\n    delivered={d['delivered']} bounced={d['hard_bounced']}+{d['soft_bounced']} soft "
            f"complained={d['complained']} unsubscribed={d['unsubscribed']} "
            f"bounce_rate={d['bounce_rate']:.2%} complaint_rate={d['complaint_rate']:.3%}")
    return line + (f"\n    paused: {d['paused_reason']}" if d["paused_reason"] else "")
