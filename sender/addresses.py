"""Email address checks before anything is sent: what SES would reject, we reject first."""

from __future__ import annotations

import re
from email.utils import formataddr, parseaddr

_LOCAL = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.\-]{1,64}$")
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class AddressError(ValueError):
    """An address SES cannot deliver to; the message says why (without echoing the address)."""


def normalise_address(raw: str | None, *, allow_display_name: bool = False) -> str:
    """The address ready for SES (IDN domain in punycode), or AddressError."""
    if raw is None or not raw.strip():
        raise AddressError("empty address")
    if _CONTROL.search(raw):
        raise AddressError("address contains control characters")
    name, address = parseaddr(raw) if allow_display_name else ("", raw.strip())
    if "@" not in address:
        raise AddressError("address has no @domain")
    local, _, domain = address.rpartition("@")
    if not _LOCAL.match(local) or local.startswith(".") or local.endswith(".") or ".." in local:
        raise AddressError("address has an invalid local part (SES accepts ASCII local parts only)")
    try:
        ascii_domain = domain.encode("idna").decode("ascii") if not domain.isascii() else domain
    except UnicodeError:
        raise AddressError("address has an invalid domain") from None
    labels = ascii_domain.rstrip(".").split(".")
    if len(labels) < 2 or not all(_LABEL.match(label) for label in labels) or len(ascii_domain) > 253:
        raise AddressError("address has an invalid domain")
    clean = f"{local}@{ascii_domain}"
    if len(clean) > 254:
        raise AddressError("address is longer than 254 characters")
    return formataddr((name, clean)) if name else clean
