"""The SES account as this instance sees it: quotas, the stop gate, and the hold shared by instances.

An account-wide error (SPEC §5) closes the gate at once for every campaign of this instance,
is written to the one `sender_account_hold` row so every other instance stops too, and is probed
until it clears. A hold is cleared only by a probe that can see its cause: GetAccount for what
GetAccount reports (sending paused, daily quota, credentials), a real send to the SES mailbox
simulator for what it cannot see (an unverified sender, MAIL FROM, a missing configuration set).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import asyncpg

from sender.config import Settings
from sender.db import DB_ERRORS, QUERIES
from sender.logs import get_logger
from sender.ratelimit import AccountRate
from sender.ses import AccountInfo, ErrorKind, OutgoingEmail, SendFailure, SesClient, classify

log = get_logger("sender.account")

# Causes GetAccount can see; any other account-wide stop is probed with a real send.
VISIBLE_TO_GET_ACCOUNT = frozenset({
    "SendingPaused", "SendingPausedException", "AccountSuspendedException", "DailyQuotaExhausted",
    "AccessDenied", "AccessDeniedException", "InvalidClientTokenId", "UnrecognizedClientException",
    "SignatureDoesNotMatch", "IncompleteSignature", "ExpiredToken", "ExpiredTokenException",
    "RequestExpired", "MissingAuthenticationToken", "InvalidSignatureException", "NoCredentials",
    "GetAccountUnavailable",
})
SIMULATOR_SUCCESS = "success@simulator.amazonses.com"


class AccountGate:
    """Open while the account may send; an account-wide error closes it for every campaign."""

    def __init__(self) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self.reason: str | None = None
        self.code: str | None = None
        self.kind: ErrorKind | None = None
        self.since: float | None = None
        self.remote = False

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    async def wait_open(self) -> None:
        await self._open.wait()

    def close(self, code: str, reason: str, kind: ErrorKind = ErrorKind.ACCOUNT, *, remote: bool = False) -> bool:
        if not self.is_open:
            return False
        self.code, self.reason, self.kind, self.remote = code, reason, kind, remote
        self.since = time.time()
        self._open.clear()
        return True

    def open(self) -> None:
        self.code = self.reason = self.kind = self.since = None
        self.remote = False
        self._open.set()


class Account:
    """Quotas from GetAccount, the gate, and the shared hold; `on_stop` hands queued rows back."""

    def __init__(self, settings: Settings, rate: AccountRate, *, on_stop: Callable[[], None],
                 on_change: Callable[[], None]) -> None:
        self.settings = settings
        self.rate = rate
        self.gate = AccountGate()
        self.info: AccountInfo | None = None
        self._on_stop = on_stop
        self._on_change = on_change  # wake the tick: the hold must be shared, or a rate changed
        self._unshared: SendFailure | None = None

    @property
    def sandbox(self) -> bool:
        return self.info is not None and not self.info.production

    # -- errors ---------------------------------------------------------------------------------

    def stop(self, failure: SendFailure) -> None:
        """An account-wide error: close the gate, hand queued rows back, share it with the others."""
        if self.gate.close(failure.code, failure.message, failure.kind):
            log.error("sending_stopped", code=failure.code, reason=failure.message, kind=str(failure.kind))
            self._unshared = failure
            self._on_stop()
            self._on_change()

    async def sync_hold(self, pool: asyncpg.Pool, row: asyncpg.Record) -> None:
        """Share account-wide stops between instances through the sender_account_hold row."""
        if self._unshared is not None:
            hold = self._unshared
            await pool.execute(QUERIES["account_hold_set"], hold.message, hold.code, self.settings.instance_id,
                               timeout=10)
            self._unshared = None
            return
        if row["hold_reason"] is not None and self.gate.is_open:
            if self.gate.close(row["hold_code"], row["hold_reason"], remote=True):
                log.error("sending_stopped", code=row["hold_code"], reason=row["hold_reason"], by=row["hold_set_by"])
                self._on_stop()
        elif row["hold_reason"] is None and not self.gate.is_open and self.gate.remote:
            self._reopen("another instance")

    def _reopen(self, why: str) -> None:
        log.info("sending_resumed", previous=self.gate.code, by=why)
        self.gate.open()
        self._unshared = None
        self._on_change()

    # -- GetAccount -----------------------------------------------------------------------------

    async def refresh(self, ses: SesClient, *, first: bool = False) -> bool:
        """Read GetAccount: cap, sandbox and daily quota. False when SES refuses us or must not be used."""
        try:
            account = await ses.account()
        except Exception as exc:
            return self._refresh_failed(exc, first=first)
        self.info = account
        self.rate.sandbox = not account.production
        if self.settings.max_rate is None:
            self.rate.cap = account.max_send_rate
        if not account.sending_enabled:
            self.stop(SendFailure(ErrorKind.ACCOUNT, "SendingPaused",
                                  f"SES reports sending disabled ({account.enforcement})"))
            return False
        remaining = account.remaining_24h
        if remaining is not None and remaining <= 0:
            self.stop(SendFailure(ErrorKind.DAILY_QUOTA, "DailyQuotaExhausted", "the 24-hour sending quota is used up"))
            return False
        return True

    def _refresh_failed(self, exc: Exception, *, first: bool) -> bool:
        failure = classify(exc, from_email=self.settings.from_email or "", default_from=None)
        if failure.code in ("NotFoundException", "UnknownOperationException"):
            # an SES-compatible endpoint without GetAccount (moto, some proxies)
            if self.settings.max_rate is not None:
                if first:
                    log.warning("get_account_unsupported", using="SENDER_MAX_RATE", cap=self.rate.cap)
                return True
            failure = SendFailure(ErrorKind.ACCOUNT, "GetAccountUnavailable",
                                  "the SES endpoint does not answer GetAccount: set SENDER_MAX_RATE")
        if first:
            log.warning("get_account_failed", code=failure.code, kind=str(failure.kind))
        if failure.kind is ErrorKind.ACCOUNT:
            self.stop(failure)
        return False

    # -- probing --------------------------------------------------------------------------------

    async def probe(self, ses: SesClient) -> bool:
        """True when a probe that can see the stop's cause says it is gone."""
        code = self.gate.code or ""
        if code in VISIBLE_TO_GET_ACCOUNT:
            return await self.refresh(ses)
        if not await self.refresh(ses):
            return False
        from_email = self.settings.from_email or ""
        probe = OutgoingEmail(to=SIMULATOR_SUCCESS, from_email=from_email, subject="sender probe",
                              html="<p>probe</p>", text="probe", configuration_set=self.settings.configuration_set,
                              tags=(("purpose", "probe"),))
        try:
            await ses.send(probe)
        except Exception as exc:
            failure = classify(exc, from_email=from_email, default_from=from_email)
            log.info("probe_still_failing", code=failure.code)
            return False
        return True

    async def probe_loop(self, ses: SesClient, pool: asyncpg.Pool, stop: asyncio.Event) -> None:
        """While sending is stopped, probe; otherwise refresh quotas once a minute."""
        last_refresh = time.monotonic()
        while not stop.is_set():
            interval = self.settings.probe_interval if not self.gate.is_open else 1.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            if stop.is_set():
                return
            if not self.gate.is_open:
                if await self.probe(ses):
                    self._reopen("probe")
                    with contextlib.suppress(*DB_ERRORS):
                        await pool.execute(QUERIES["account_hold_clear"], timeout=5)
            elif time.monotonic() - last_refresh > 60:
                last_refresh = time.monotonic()
                await self.refresh(ses)
                self._on_change()
