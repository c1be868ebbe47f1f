"""Which instance sends a campaign that has its own rate_per_sec: one at a time, by lease.

A campaign's rate is a hard cap on every one-second window (SPEC §5). One instance at a time holds
the campaign's lease (a row in sender_campaign_leases, renewed every second while it sends) and
enforces the rate exactly at the wire (ratelimit.CampaignWindow); the others leave its rows alone.
A dead holder's lease runs out after LEASE_SECONDS and another instance takes over. Campaigns
without a rate of their own are sent by every instance, sharing the account cap.
"""

from __future__ import annotations

import time

import asyncpg

from sender.db import QUERIES

LEASE_SECONDS = 3.0
RENEW_AFTER = 1.0


class CampaignLease:
    def __init__(self, pool: asyncpg.Pool, campaign_id: int, instance_id: str) -> None:
        self.pool = pool
        self.campaign_id = campaign_id
        self.instance_id = instance_id
        self._until = 0.0  # monotonic: held (by our reckoning, with a safety margin) until then
        self._renewed = -float("inf")

    def held(self) -> bool:
        return time.monotonic() < self._until

    async def hold(self) -> bool:
        """Take or renew the lease (at most once a RENEW_AFTER); True while this instance holds it."""
        now = time.monotonic()
        if self.held() and now - self._renewed < RENEW_AFTER:
            return True
        holder = await self.pool.fetchval(QUERIES["campaign_lease_take"], self.campaign_id, self.instance_id,
                                          LEASE_SECONDS, timeout=5)
        if holder == self.instance_id:
            self._renewed = now
            self._until = now + LEASE_SECONDS - 0.5  # our clock started before the database's did
            return True
        self._until = 0.0
        return False

    async def release(self) -> None:
        self._until = 0.0
        await self.pool.execute(QUERIES["campaign_lease_release"], self.campaign_id, self.instance_id, timeout=5)
