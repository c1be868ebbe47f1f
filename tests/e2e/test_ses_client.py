"""The SES client over real HTTP: one call per send (botocore retries off), errors surface as-is."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from sender.config import Settings
from sender.demo.fakeses import FakeSES, Fault
from sender.ses import ErrorKind, OutgoingEmail, classify, open_ses

EMAIL = OutgoingEmail(to="a@example.org", from_email="news@example.com", subject="s", html="<p>h</p>", text="h")


@pytest.mark.parametrize(("fault", "kind"), [
    (Fault("InternalFailure", 500), ErrorKind.TRANSIENT),
    (Fault("ServiceUnavailable", 503), ErrorKind.TRANSIENT),
    (Fault("TooManyRequestsException", 429, "Maximum sending rate exceeded."), ErrorKind.THROTTLED),
    (Fault("Throttling", 400, "Rate exceeded"), ErrorKind.THROTTLED),
    (Fault("SendingPausedException", 400, "paused"), ErrorKind.ACCOUNT),
])
async def test_one_http_call_per_send_no_hidden_retries(fake_ses: FakeSES, fault: Fault, kind: ErrorKind) -> None:
    fake_ses.inject(fault)
    async with open_ses(Settings(endpoint_url=fake_ses.url, send_timeout=5)) as ses:
        with pytest.raises(ClientError) as err:
            await ses.send(EMAIL)
    assert fake_ses.requests == 1
    assert classify(err.value, from_email=EMAIL.from_email, default_from=EMAIL.from_email).kind is kind


async def test_send_times_out_at_the_configured_limit(fake_ses: FakeSES) -> None:
    fake_ses.inject(Fault("Hang", 500, hang=3.0))
    async with open_ses(Settings(endpoint_url=fake_ses.url, send_timeout=0.3)) as ses:
        with pytest.raises(TimeoutError) as err:  # asyncio's: the daemon's own limit cut the call short
            await ses.send(EMAIL)
    assert classify(err.value, from_email="a@b.c", default_from=None).kind is ErrorKind.TRANSIENT
    assert fake_ses.requests == 1


async def test_request_carries_headers_tags_and_configuration_set(fake_ses: FakeSES) -> None:
    email = OutgoingEmail(to="a@example.org", from_email="news@example.com", subject="Sübject ✓",
                          html="<p>h</p>", text="h", reply_to="r@example.com",
                          headers=(("List-Unsubscribe", "<https://e.com/u/t>"),
                                   ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")),
                          tags=(("campaign_id", "7"), ("recipient_id", "42")), configuration_set="events")
    async with open_ses(Settings(endpoint_url=fake_ses.url)) as ses:
        message_id = await ses.send(email)
    [m] = fake_ses.messages
    assert m.message_id == message_id
    assert (m.subject, m.reply_to, m.configuration_set) == ("Sübject ✓", ["r@example.com"], "events")
    assert m.headers == {"List-Unsubscribe": "<https://e.com/u/t>",
                         "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
    assert m.tags == {"campaign_id": "7", "recipient_id": "42"}
