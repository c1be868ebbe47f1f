"""This instance's share of a campaign's own rate_per_sec, held in PostgreSQL (migration 0006).

A campaign's rate is a hard cap on every one-second window (SPEC §5), shared by every instance
sending the campaign. It is cut into units (floor(rate) sends per window; below 1/s one send per
1/rate seconds); each instance holds some, renews them every RENEW_AFTER, and enforces exactly that
many at the wire (ratelimit.CampaignWindow). The units of all instances never add up to more than
the rate's. Instances with rows to send share the units evenly; one that runs out gives them up, so
the instance holding a campaign's tail gets the whole rate.

A unit changes hands safely: the giver applies the smaller share at once and says so with its next
renewal (sent straight away), with how many sends it counted in its last window; the units it used
there cool for one window before anyone else may use them, the others go at once. A hold runs out
HOLD_SECONDS after the renewal that set it; the instance stops using it half a second before, by its
own clock, so a dead or cut-off instance's units are never used twice.
"""

from __future__ import annotations

import time

import asyncpg

from sender.db import QUERIES

HOLD_SECONDS = 3.0
RENEW_AFTER = 1.0
HOLD_MARGIN = 0.5  # we stop using a hold this long before the database lets it run out
UNKNOWN_USED = 1 << 30  # "used" said before our first answer: whatever our row holds may have just been used


class CampaignShare:
    """The units of one campaign's rate this instance may use, as of its last renewal."""

    def __init__(self, pool: asyncpg.Pool, campaign_id: int, instance_id: str, *,
                 hold: float = HOLD_SECONDS, margin: float = HOLD_MARGIN) -> None:
        self.pool = pool
        self.campaign_id = campaign_id
        self.instance_id = instance_id
        self.hold = hold
        self.margin = margin
        self._units = 0
        self.short = False  # we hold less than our fair share: units are cooling for us
        self._until = 0.0  # monotonic: the units are ours (with HOLD_MARGIN to spare) until then
        # Until the database has answered us once, the units our row holds are a predecessor's (a
        # runner of this instance stopped by a pause whose release failed, a process restarted under
        # the same id): its sends are in no window of ours, so all of them count as used and cool.
        self._answered = False

    def units(self) -> int:
        """The units in force now: none once the hold has run out (renewals failing)."""
        return self._units if time.monotonic() < self._until else 0

    def valid_until(self) -> float:
        """When, on time.monotonic(), the units in force stop being ours unless renewed."""
        return self._until

    async def renew(self, total: int, want: int, cool: float, used: int) -> int:
        """Say what we enforce, how many sends we counted in our last window (`used`) and what we
        want; the units we may use from now on (we apply them at once)."""
        sent = time.monotonic()  # the database's hold starts after this
        row = await self.pool.fetchrow(QUERIES["campaign_share"], self.campaign_id, self.instance_id, total,
                                       self.units(), self._used(used), want, self.hold, cool, timeout=5)
        self._answered = True
        self._units, self.short = int(row["granted"]), int(row["fair"]) > int(row["granted"])
        self._until = sent + self.hold - self.margin
        return self._units

    def _used(self, used: int) -> int:
        return used if self._answered else UNKNOWN_USED

    async def release(self, cool: float, used: int) -> None:
        """We stopped sending the campaign: the units we used in our last window cool, then go to
        the others with the rest."""
        self._units, self._until = 0, 0.0
        async with self.pool.acquire(timeout=5) as conn:
            await conn.fetchrow(QUERIES["campaign_share"], self.campaign_id, self.instance_id, 0, 0,
                                self._used(used), 0, self.hold, cool, timeout=5)
            await conn.execute(QUERIES["campaign_shares_forget"], timeout=5)
