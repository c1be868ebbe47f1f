"""Amazon SES v2 through aioboto3: one reused client, request building, error classification.

botocore's own retries are off: the daemon decides what to retry, when, and how often.
"""

from __future__ import annotations

import asyncio
import enum
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import aioboto3
import aiohttp
from aiobotocore.config import AioConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from sender.config import Settings


class ErrorKind(enum.StrEnum):
    THROTTLED = "throttled"  # slow down and retry; never costs an attempt
    DAILY_QUOTA = "daily_quota"  # pause all sending until the 24 h quota frees up
    TRANSIENT = "transient"  # retry with backoff, up to SENDER_MAX_ATTEMPTS
    RECIPIENT = "recipient"  # this recipient fails; everyone else carries on
    CAMPAIGN = "campaign"  # this campaign cannot send (its own From is not verified)
    ACCOUNT = "account"  # stop all sending, fail no one, probe until it clears


@dataclass(frozen=True)
class SendFailure:
    kind: ErrorKind
    code: str
    message: str


_ACCOUNT_CODES = frozenset({
    "SendingPausedException", "AccountSuspendedException", "AccessDenied",
    "AccessDeniedException", "InvalidClientTokenId", "UnrecognizedClientException",
    "SignatureDoesNotMatch", "IncompleteSignature", "ExpiredToken", "ExpiredTokenException",
    "RequestExpired", "MailFromDomainNotVerifiedException", "NotFoundException",
    "MissingAuthenticationToken", "InvalidSignatureException",
})
_THROTTLE_CODES = frozenset({
    "TooManyRequestsException", "Throttling", "ThrottlingException", "ThrottledException",
    "RequestThrottled", "SlowDown",
})
_RECIPIENT_CODES = frozenset({"BadRequestException", "InvalidParameterValue", "ValidationException"})


def classify(exc: BaseException, *, from_email: str, default_from: str | None) -> SendFailure:
    """Map an exception from SendEmail to what the daemon must do about it (SPEC §5)."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or "Unknown")
        message = str(error.get("Message") or "")[:500]
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code in _THROTTLE_CODES or status == 429:
            if "daily message quota" in message.lower():
                return SendFailure(ErrorKind.DAILY_QUOTA, code, message)
            return SendFailure(ErrorKind.THROTTLED, code, message)
        if code in _ACCOUNT_CODES:
            return SendFailure(ErrorKind.ACCOUNT, code, message)
        if code == "MessageRejected":
            return _classify_rejection(message, from_email, default_from)
        if code in _RECIPIENT_CODES:
            return SendFailure(ErrorKind.RECIPIENT, code, message)
        if code == "LimitExceededException":
            return SendFailure(ErrorKind.TRANSIENT, code, message)
        if status >= 500 or status == 0:
            return SendFailure(ErrorKind.TRANSIENT, code, message)
        if status == 403:
            return SendFailure(ErrorKind.ACCOUNT, code, message)
        # Unknown 4xx: retry a few times, then fail the recipient with SES's own words.
        return SendFailure(ErrorKind.TRANSIENT, code, message)
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return SendFailure(ErrorKind.ACCOUNT, "NoCredentials", "no AWS credentials found")
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return SendFailure(ErrorKind.TRANSIENT, "Timeout", "SES did not answer in time")
    if isinstance(exc, (BotoConnectionError, HTTPClientError, aiohttp.ClientError, OSError)):
        return SendFailure(ErrorKind.TRANSIENT, "ConnectionError", type(exc).__name__)
    if isinstance(exc, BotoCoreError):
        return SendFailure(ErrorKind.TRANSIENT, type(exc).__name__, str(exc)[:500])
    return SendFailure(ErrorKind.TRANSIENT, type(exc).__name__, str(exc)[:500])


def _classify_rejection(message: str, from_email: str, default_from: str | None) -> SendFailure:
    """MessageRejected "not verified" lists the failing identities after the last colon."""
    if "not verified" not in message.lower():
        return SendFailure(ErrorKind.RECIPIENT, "MessageRejected", message)
    listed = message.rsplit(":", 1)[-1] if ":" in message else ""
    failed = {part.strip().lower() for part in listed.split(",") if part.strip()}
    sender = from_email.lower()
    if not failed or sender in failed or sender.rsplit("@", 1)[-1] in failed:
        own_from = bool(default_from) and sender != (default_from or "").lower()
        kind = ErrorKind.CAMPAIGN if own_from else ErrorKind.ACCOUNT
        return SendFailure(kind, "SenderNotVerified", f"From address {from_email} is not verified in SES")
    return SendFailure(
        ErrorKind.RECIPIENT, "RecipientNotVerified",
        "recipient not verified (SES sandbox): only verified addresses can receive mail",
    )


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter for transient errors; attempts include the first send."""

    max_attempts: int = 5
    base_seconds: float = 2.0
    cap_seconds: float = 300.0
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def should_retry(self, attempts_made: int) -> bool:
        return attempts_made < self.max_attempts

    def delay(self, attempts_made: int) -> float:
        """Seconds to wait after the n-th failed attempt: half fixed, half random (equal jitter)."""
        ceiling: float = min(self.cap_seconds, self.base_seconds * 2.0 ** max(0, attempts_made - 1))
        return ceiling / 2 + self.rng.uniform(0, ceiling / 2)


@dataclass(frozen=True)
class OutgoingEmail:
    to: str
    from_email: str
    subject: str
    html: str
    text: str
    reply_to: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    tags: tuple[tuple[str, str], ...] = ()
    configuration_set: str | None = None

    def as_request(self) -> dict[str, Any]:
        """The SendEmail request body (SES v2 `Content.Simple`)."""
        simple: dict[str, Any] = {
            "Subject": {"Data": self.subject, "Charset": "UTF-8"},
            "Body": {
                "Html": {"Data": self.html, "Charset": "UTF-8"},
                "Text": {"Data": self.text, "Charset": "UTF-8"},
            },
        }
        if self.headers:
            simple["Headers"] = [{"Name": n, "Value": v} for n, v in self.headers]
        request: dict[str, Any] = {
            "FromEmailAddress": self.from_email,
            "Destination": {"ToAddresses": [self.to]},
            "Content": {"Simple": simple},
        }
        if self.reply_to:
            request["ReplyToAddresses"] = [self.reply_to]
        if self.configuration_set:
            request["ConfigurationSetName"] = self.configuration_set
            request["EmailTags"] = [{"Name": n, "Value": v} for n, v in self.tags]
        return request


@dataclass(frozen=True)
class AccountInfo:
    max_send_rate: float
    max_24h: float | None  # None: unlimited
    sent_24h: float
    production: bool
    sending_enabled: bool
    enforcement: str

    @property
    def remaining_24h(self) -> float | None:
        return None if self.max_24h is None else max(0.0, float(self.max_24h - self.sent_24h))

    @classmethod
    def from_response(cls, data: dict[str, Any]) -> AccountInfo:
        quota = data.get("SendQuota") or {}
        max_24h = float(quota.get("Max24HourSend", -1))
        return cls(
            max_send_rate=float(quota.get("MaxSendRate") or 1.0),
            max_24h=None if max_24h < 0 else max_24h,
            sent_24h=float(quota.get("SentLast24Hours") or 0.0),
            production=bool(data.get("ProductionAccessEnabled", False)),
            sending_enabled=bool(data.get("SendingEnabled", True)),
            enforcement=str(data.get("EnforcementStatus") or "HEALTHY"),
        )


_DEADLINE: ContextVar[asyncio.Timeout | None] = ContextVar("send_deadline", default=None)


class SesClient:
    """The one SES v2 client an instance uses, with a hard per-call time limit."""

    def __init__(self, client: Any, *, timeout: float) -> None:
        self._client = client
        self._timeout = timeout

    def gate_wire(self, gate: Callable[[], Awaitable[None]]) -> None:
        """Await `gate` right before each SendEmail request goes on the wire, after signing: no
        event-loop stall between dispatch and the socket can bunch arrivals at SES over a cap
        (sender.shared_rate.wire_gate)."""

        async def before_send(**_: Any) -> None:
            deadline = _DEADLINE.get()
            if deadline is not None:  # waiting for a rate slot is not SES failing to answer
                deadline.reschedule(None)
            await gate()
            if deadline is not None:  # the call's time limit starts again on the wire
                deadline.reschedule(asyncio.get_running_loop().time() + self._timeout)

        self._client.meta.events.register("before-send.sesv2.SendEmail", before_send)

    async def send(self, email: OutgoingEmail) -> str:
        """One SendEmail call, limited to the send timeout once it is on the wire (the wait for a rate
        slot at the wire does not count: a slow grant is not SES failing to answer)."""
        async with asyncio.timeout(self._timeout) as deadline:
            token = _DEADLINE.set(deadline)
            try:
                response = await self._client.send_email(**email.as_request())
            finally:
                _DEADLINE.reset(token)
        return str(response["MessageId"])

    async def account(self) -> AccountInfo:
        async with asyncio.timeout(self._timeout):
            return AccountInfo.from_response(await self._client.get_account())

    @property
    def raw(self) -> Any:
        return self._client


def client_config(settings: Settings, *, pool_size: int) -> AioConfig:
    return AioConfig(
        # botocore's "max_attempts" counts retries (1 = two calls); total_max_attempts=1 is truly off
        retries={"mode": "standard", "total_max_attempts": 1},
        max_pool_connections=max(10, pool_size),
        connect_timeout=min(10.0, settings.send_timeout),
        read_timeout=settings.send_timeout,
        parameter_validation=False,
    )


@asynccontextmanager
async def open_ses(settings: Settings, *, pool_size: int = 50) -> AsyncIterator[SesClient]:
    session = aioboto3.Session()
    async with session.client(
        "sesv2", region_name=settings.region, endpoint_url=settings.endpoint_url,
        config=client_config(settings, pool_size=pool_size),
    ) as client:
        yield SesClient(client, timeout=settings.send_timeout)
