"""Addresses SES would reject are refused up front with a reason that does not echo them."""

from __future__ import annotations

import pytest

from sender.addresses import AddressError, normalise_address


@pytest.mark.parametrize(("raw", "clean"), [
    ("ann@example.com", "ann@example.com"),
    ("  ann+tag@sub.example.co.uk ", "ann+tag@sub.example.co.uk"),
    ("ann@bücher.de", "ann@xn--bcher-kva.de"),
])
def test_valid_addresses(raw: str, clean: str) -> None:
    assert normalise_address(raw) == clean


@pytest.mark.parametrize(("raw", "reason"), [
    ("", "empty"), ("   ", "empty"), (None, "empty"),
    ("no-at-sign", "no @domain"),
    ("ann@localhost", "invalid domain"),
    ("ann@-bad-.com", "invalid domain"),
    ("a..b@example.com", "invalid local part"),
    ("zoë@example.com", "ASCII local parts only"),
    ("ann@example.com\r\nBcc: x@y.com", "control characters"),
    ("a b@example.com", "invalid local part"),
])
def test_invalid_addresses(raw: str | None, reason: str) -> None:
    with pytest.raises(AddressError, match=reason) as err:
        normalise_address(raw)
    if raw and raw.strip():
        assert raw.strip() not in str(err.value)


def test_display_name_allowed_for_senders_only() -> None:
    assert normalise_address("News <news@example.com>", allow_display_name=True) == "News <news@example.com>"
    with pytest.raises(AddressError):
        normalise_address("News <news@example.com>")
