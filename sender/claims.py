"""One claimer for every campaign of the instance: claims cost round trips per second, not per campaign.

Each campaign runner keeps a request in (`Claims.claim`) while its queue is not full, but only one
whose queue is down to half hurries the next statement. That statement (`claim_many`, one row
of arrays per campaign) then tops up every campaign that asked, each to its current want. Campaigns
drain at about the same pace (they share the cap evenly), so a hundred small campaigns sending at
once claim in about one statement a second, like one big campaign; a campaign queued on an idle
instance claims at once. Statements start at least CLAIM_SPACING apart.

Claimed rows are handed to the runner's `deliver` callback the moment the statement returns, so
they are always in some runner's hands (or handed back by it) and never in limbo between the
database and a queue. Claims run one at a time, so handing back rows after a claim whose reply
was lost (`release_unknown`) never races another claim; until it has worked (the database may be
away too), it is tried again before any other claim and every RECONCILE_EVERY.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg

from sender.config import Settings
from sender.db import DB_ERRORS, QUERIES, db_error_text
from sender.logs import get_logger
from sender.message import Claimed

log = get_logger("sender.claims")

CLAIM_SPACING = 0.02  # seconds between the starts of two claims: requests arriving meanwhile share one
CAMPAIGNS_PER_CLAIM = 500  # campaigns one statement claims for; more wait for the next
RECONCILE_EVERY = 1.0  # seconds between attempts to hand back what a lost claim took, while they fail


@dataclass
class ClaimRequest:
    campaign_id: int
    after_id: int  # keyset bound: fresh rows with a larger id
    want: Callable[[], int]  # how many rows, asked when the statement is built
    due: bool  # take rows due again first
    deliver: Callable[[list[Claimed]], None]  # takes the rows as soon as they are claimed
    done: asyncio.Future[tuple[int, int]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())  # (asked, claimed)


class Claims:
    """Batches the claims of all campaign runners; `run` is a supervised long-lived task."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings, held_ids: Callable[[], set[int]]) -> None:
        self._pool = pool
        self._settings = settings
        self._held_ids = held_ids
        self._waiting: list[ClaimRequest] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._last = 0.0  # monotonic start of the last claim
        self._unknown = False  # a claim's reply was lost and the rows it may have taken are not handed back yet
        self._reconciled = 0.0  # monotonic start of the last attempt to hand them back
        self.statements = 0
        self.requests = 0

    def claim(self, campaign_id: int, after_id: int, want: Callable[[], int], *, due: bool, urgent: bool,
              deliver: Callable[[list[Claimed]], None]) -> asyncio.Future[tuple[int, int]]:
        """Up to want() rows of the campaign, passed to `deliver` by the next statement (at once when
        urgent, else with the next one another campaign hurries); the future says (asked, claimed),
        or raises the database error after rows this instance may hold unknowingly were handed back."""
        request = ClaimRequest(campaign_id, after_id, want, due, deliver)
        self._waiting.append(request)
        if urgent:
            self._wake.set()
        return request.done

    def hurry(self) -> None:
        """A campaign's queue is down to half: claim for everyone waiting now."""
        if self._waiting:
            self._wake.set()

    async def idle(self, within: float) -> None:
        """At shutdown, after the runners stopped: let a running claim deliver (its rows go back)."""
        for request in self._waiting:
            request.done.cancel()
        self._waiting.clear()
        try:
            await asyncio.wait_for(self._idle.wait(), within)
        except TimeoutError:
            log.warning("claim_still_running_at_shutdown")

    async def run(self) -> None:
        while True:
            if self._unknown:  # a lost claim is reconciled before any other claim, once the database answers
                await asyncio.sleep(max(0.0, self._reconciled + RECONCILE_EVERY - time.monotonic()))
                self._idle.clear()
                try:
                    await self._release_unknown()
                finally:
                    self._idle.set()
                continue
            await self._wake.wait()
            pause = self._last + CLAIM_SPACING - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)  # a short spacing lets requests of other campaigns join
            self._wake.clear()
            # a request whose runner stopped was cancelled with its claimer task: leave it out
            asking = [(r, r.want()) for r in self._waiting[:CAMPAIGNS_PER_CLAIM] if not r.done.done()]
            del self._waiting[:CAMPAIGNS_PER_CLAIM]
            if self._waiting:
                self._wake.set()  # the rest of a long list in the next statement
            for request, n in asking:
                if n <= 0 and not request.done.done():
                    request.done.set_result((0, 0))  # filled up meanwhile: nothing to ask for
            batch = [(r, n) for r, n in asking if n > 0]
            if not batch:
                continue
            self._last = time.monotonic()
            self._idle.clear()
            try:
                await self._claim(batch)
            finally:
                self._idle.set()

    async def _claim(self, batch: list[tuple[ClaimRequest, int]]) -> None:
        s = self._settings
        started = time.monotonic()  # every row's lease began no earlier than this
        try:
            records = await self._pool.fetch(
                QUERIES["claim_many"], [r.campaign_id for r, _ in batch], [r.after_id for r, _ in batch],
                [n for _, n in batch], [r.due for r, _ in batch], s.instance_id, s.lease_seconds, timeout=30)
        except DB_ERRORS as exc:
            log.warning("claim_failed", campaigns=len(batch), error=db_error_text(exc))
            self._unknown = True
            await self._release_unknown()
            for request, _ in batch:
                if not request.done.done():
                    request.done.set_exception(exc)
            return
        except Exception as exc:  # a bug: the runners see it (their campaigns restart), the supervisor restarts us
            for request, _ in batch:
                if not request.done.done():
                    request.done.set_exception(exc)
            raise
        except BaseException:
            for request, _ in batch:  # cancelled: rows claimed anyway go back with the instance's (hand_back)
                request.done.cancel()
            raise
        self.statements += 1
        self.requests += len(batch)
        rows: dict[int, list[Claimed]] = {r.campaign_id: [] for r, _ in batch}
        for record in records:
            row = Claimed.from_record(record)
            row.claimed_at = started
            rows[record["campaign_id"]].append(row)
        for request, n in batch:
            claimed = rows.pop(request.campaign_id, [])
            try:
                request.deliver(claimed)  # synchronously: the rows are in the runner's hands from here on
            except Exception as exc:  # one runner's bug stays its own (its rows come back by their lease)
                log.error("claim_delivery_failed", campaign_id=request.campaign_id, rows=len(claimed),
                          error=f"{type(exc).__name__}: {exc}"[:300])
                if not request.done.done():
                    request.done.set_exception(exc)
                continue
            if not request.done.done():
                request.done.set_result((n, len(claimed)))

    async def _release_unknown(self) -> None:
        """After a claim whose reply may be lost: hand back rows the database says we hold but we don't."""
        self._reconciled = time.monotonic()
        try:
            released = await self._pool.fetch(QUERIES["release_unknown"], self._settings.instance_id,
                                              list(self._held_ids()), timeout=30)
        except DB_ERRORS as exc:
            # still unreachable: tried again before the next claim and every RECONCILE_EVERY until it works
            log.warning("release_unknown_failed", error=db_error_text(exc))
            return
        self._unknown = False
        if released:
            log.warning("released_unknown_claimed_rows", rows=len(released))
