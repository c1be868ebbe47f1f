"""Every SES failure maps to exactly one action (SPEC §5), case by case."""

from __future__ import annotations

import random

import aiohttp
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError, ReadTimeoutError

from sender.ses import ErrorKind, RetryPolicy, classify

FROM = "news@example.com"


def client_error(code: str, status: int, message: str = "") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "SendEmail")


@pytest.mark.parametrize(("code", "status", "message", "kind"), [
    ("TooManyRequestsException", 429, "Maximum sending rate exceeded.", ErrorKind.THROTTLED),
    ("Throttling", 400, "Rate exceeded", ErrorKind.THROTTLED),
    ("SomethingNew", 429, "", ErrorKind.THROTTLED),
    ("TooManyRequestsException", 429, "Daily message quota exceeded.", ErrorKind.DAILY_QUOTA),
    ("InternalFailure", 500, "", ErrorKind.TRANSIENT),
    ("ServiceUnavailable", 503, "", ErrorKind.TRANSIENT),
    ("LimitExceededException", 400, "", ErrorKind.TRANSIENT),
    ("MessageRejected", 400, "Message contains a virus", ErrorKind.RECIPIENT),
    ("BadRequestException", 400, "Missing final '@domain'", ErrorKind.RECIPIENT),
    ("SendingPausedException", 400, "", ErrorKind.ACCOUNT),
    ("AccountSuspendedException", 400, "", ErrorKind.ACCOUNT),
    ("AccessDeniedException", 403, "", ErrorKind.ACCOUNT),
    ("InvalidClientTokenId", 403, "", ErrorKind.ACCOUNT),
    ("SignatureDoesNotMatch", 403, "", ErrorKind.ACCOUNT),
    ("RequestExpired", 400, "clock skew", ErrorKind.ACCOUNT),
    ("MailFromDomainNotVerifiedException", 400, "", ErrorKind.ACCOUNT),
    ("NotFoundException", 404, "Configuration set <x> does not exist.", ErrorKind.ACCOUNT),
    ("UnknownFourHundred", 400, "", ErrorKind.TRANSIENT),
])
def test_client_errors_classified(code: str, status: int, message: str, kind: ErrorKind) -> None:
    failure = classify(client_error(code, status, message), from_email=FROM, default_from=FROM)
    assert failure.kind is kind
    assert failure.code == code


def test_unverified_default_sender_is_account_wide() -> None:
    msg = ("Email address is not verified. The following identities failed the check in region "
           "US-EAST-1: news@example.com")
    failure = classify(client_error("MessageRejected", 400, msg), from_email=FROM, default_from=FROM)
    assert (failure.kind, failure.code) == (ErrorKind.ACCOUNT, "SenderNotVerified")


def test_unverified_campaign_specific_sender_stops_only_that_campaign() -> None:
    msg = ("Email address is not verified. The following identities failed the check in region "
           "US-EAST-1: promo@other.com")
    failure = classify(client_error("MessageRejected", 400, msg), from_email="promo@other.com", default_from=FROM)
    assert (failure.kind, failure.code) == (ErrorKind.CAMPAIGN, "SenderNotVerified")


def test_sandbox_recipient_fails_only_that_recipient() -> None:
    msg = ("Email address is not verified. The following identities failed the check in region "
           "US-EAST-1: someone@gmail.com")
    failure = classify(client_error("MessageRejected", 400, msg), from_email=FROM, default_from=FROM)
    assert failure.kind is ErrorKind.RECIPIENT
    assert failure.message == "recipient not verified (SES sandbox): only verified addresses can receive mail"


@pytest.mark.parametrize("exc", [
    TimeoutError(), TimeoutError(), aiohttp.ClientConnectionError(),
    EndpointConnectionError(endpoint_url="http://x"), ReadTimeoutError(endpoint_url="http://x"),
    ConnectionResetError(),
])
def test_network_failures_are_transient(exc: BaseException) -> None:
    assert classify(exc, from_email=FROM, default_from=FROM).kind is ErrorKind.TRANSIENT


def test_missing_credentials_stop_the_account() -> None:
    assert classify(NoCredentialsError(), from_email=FROM, default_from=FROM).kind is ErrorKind.ACCOUNT


def test_retry_policy_backs_off_exponentially_with_jitter_and_stops() -> None:
    policy = RetryPolicy(max_attempts=5, base_seconds=2, cap_seconds=20, rng=random.Random(1))
    delays = [policy.delay(n) for n in range(1, 7)]
    for n, d in enumerate(delays, start=1):
        ceiling = min(20, 2 * 2 ** (n - 1))
        assert ceiling / 2 <= d <= ceiling
    assert delays[3] > delays[0]
    assert [policy.should_retry(n) for n in (1, 4, 5, 6)] == [True, True, False, False]
    assert len({round(policy.delay(3), 6) for _ in range(20)}) > 1, "jittered"
