"""Unsubscribe tokens: round trip, rotation, tampering, junk, and the header length check."""

from __future__ import annotations

import pytest

from sender.config import ConfigError, load_settings
from sender.tokens import check_unsubscribe_url, signing_keys, unsubscribe_token, verify_unsubscribe_token


def test_round_trip_and_tamper() -> None:
    token = unsubscribe_token("k", 7, 42)
    assert verify_unsubscribe_token("k", token) == (7, 42)
    assert verify_unsubscribe_token("other", token) is None
    assert verify_unsubscribe_token("k", token.replace("7.42", "7.43")) is None
    assert verify_unsubscribe_token("k", token.replace("7.42", "8.42")) is None


def test_rotation_first_key_signs_every_key_verifies() -> None:
    old = unsubscribe_token("old-key", 1, 2)
    new = unsubscribe_token("new-key,old-key", 1, 2)
    assert new == unsubscribe_token("new-key", 1, 2) != old
    assert verify_unsubscribe_token("new-key, old-key", old) == (1, 2)
    assert verify_unsubscribe_token("new-key,old-key", new) == (1, 2)
    assert verify_unsubscribe_token("new-key", old) is None
    assert signing_keys(" a , ,b ") == ("a", "b")
    with pytest.raises(ValueError, match="no unsubscribe key"):
        signing_keys(" , ")


@pytest.mark.parametrize("junk", [
    "", "garbage", "1.2", "1.2.3.4", "\u0661.\u0662." + "A" * 22,  # Arabic-Indic digits: int() would accept them
    "01.2." + "A" * 22,  # leading zero: a second spelling of a genuine token
    "1.2." + "A" * 21, "1.2." + "A" * 23, "1.2." + "A" * 21 + "=", "1.2." + "A" * 21 + "\n",
    "9" * 19 + ".1." + "A" * 22, "x" * 10_000, "1.2.\u00e9" + "A" * 21, None, 12, b"1.2.AAAA",
])
def test_verify_never_raises_on_junk(junk: object) -> None:
    assert verify_unsubscribe_token("k", junk) is None


def test_truncated_and_extended_genuine_tokens_are_refused() -> None:
    token = unsubscribe_token("k", 10, 20)
    assert verify_unsubscribe_token("k", token[:-1]) is None
    assert verify_unsubscribe_token("k", token + "A") is None
    assert verify_unsubscribe_token("", token) is None


def test_header_check_refuses_non_ascii_and_overlong_urls() -> None:
    assert check_unsubscribe_url("https://mail.example.com/u/{token}") is None
    assert "printable ASCII" in str(check_unsubscribe_url("https://exämple.com/u/{token}"))
    assert "870" in str(check_unsubscribe_url("https://example.com/" + "a" * 800 + "/{token}"))


def test_settings_refuse_a_url_that_would_break_every_send() -> None:
    env = {"UNSUBSCRIBE_URL": "https://example.com/" + "a" * 820 + "/{token}", "UNSUBSCRIBE_SECRET": "k"}
    with pytest.raises(ConfigError, match="UNSUBSCRIBE_URL: the List-Unsubscribe header would be"):
        load_settings(env)


def test_public_base_url_gives_the_default_unsubscribe_url() -> None:
    s = load_settings({"SENDER_PUBLIC_BASE_URL": "https://mail.example.com/", "UNSUBSCRIBE_SECRET": "k"})
    assert s.unsubscribe_url == "https://mail.example.com/u/{token}"
    explicit = load_settings({"SENDER_PUBLIC_BASE_URL": "https://mail.example.com",
                              "UNSUBSCRIBE_URL": "https://app.example.com/x/{token}", "UNSUBSCRIBE_SECRET": "k"})
    assert explicit.unsubscribe_url == "https://app.example.com/x/{token}"
    assert load_settings({"SENDER_PUBLIC_BASE_URL": "https://mail.example.com"}).unsubscribe_url is None


@pytest.mark.parametrize(("env", "message"), [
    ({"SENDER_PUBLIC_HTTP_PORT": "99999"}, "SENDER_PUBLIC_HTTP_PORT"),
    ({"SENDER_PUBLIC_BASE_URL": "mail.example.com"}, "SENDER_PUBLIC_BASE_URL"),
    ({"SENDER_SNS_TOPIC_ARNS": "not-an-arn"}, "SENDER_SNS_TOPIC_ARNS"),
    ({"SENDER_MAX_BOUNCE_RATE": "4"}, "SENDER_MAX_BOUNCE_RATE"),
    ({"SENDER_EVENTS_QUEUE_URL": "queue"}, "SENDER_EVENTS_QUEUE_URL"),
    ({"SENDER_EVENTS_RECEIVERS": "0"}, "SENDER_EVENTS_RECEIVERS"),
])
def test_bad_deliverability_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(env)
