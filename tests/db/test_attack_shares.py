"""Attacks on sender_campaign_share (migration 0006) against a real PostgreSQL."""

from __future__ import annotations

import asyncpg
import pytest

from sender.db import QUERIES
from tests.helpers import add_campaign, add_template

COOL = 1.0


@pytest.fixture
async def campaign(db: asyncpg.Connection) -> int:
    return await add_campaign(db, await add_template(db), status="sending", rate=10)


async def _renew(db: asyncpg.Connection, campaign: int, instance: str, *, enforcing: int, want: int,
                 total: int, used: int) -> int:
    row = await db.fetchrow(QUERIES["campaign_share"], campaign, instance, total, enforcing, used, want, 3.0, COOL)
    return int(row["granted"])


async def test_after_a_rate_drop_the_shares_answered_never_add_up_to_more_than_the_new_rate(
        db: asyncpg.Connection, campaign: int) -> None:
    """rate_per_sec 10 -> 3 under two instances holding 5 each. Each applies what it is answered at
    once (CampaignShare.renew -> CampaignWindow.set_units). A shrink used to be answered with the fair
    share alone, unchecked against what the others still hold: the two computed their fair share in
    different orders (the tie-break is on units held, which the shrink itself changes), so both were
    told 2 of the 3 units, and for a renewal period the cluster enforced 4 sends per window."""
    assert await _renew(db, campaign, "a", enforcing=0, want=10, total=10, used=0) == 10
    assert await _renew(db, campaign, "b", enforcing=0, want=10, total=10, used=0) == 0
    assert await _renew(db, campaign, "a", enforcing=10, want=10, total=10, used=0) == 5
    await _renew(db, campaign, "a", enforcing=5, want=10, total=10, used=0)  # gave 5 up unused: free at once
    assert await _renew(db, campaign, "b", enforcing=0, want=10, total=10, used=0) == 5
    # the rate drops to 3; both see it and renew, each using its units fully
    enforced = {"a": 5, "b": 5}
    enforced["a"] = await _renew(db, campaign, "a", enforcing=enforced["a"], want=3, total=3, used=5)
    enforced["a"] = await _renew(db, campaign, "a", enforcing=enforced["a"], want=3, total=3, used=5)  # confirms
    enforced["b"] = await _renew(db, campaign, "b", enforcing=enforced["b"], want=3, total=3, used=5)
    assert sum(enforced.values()) <= 3, f"the instances enforce {enforced} of a rate of 3"
