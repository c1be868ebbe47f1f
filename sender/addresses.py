"""Email address checks before anything is sent: what SES would reject, we reject first.

Folding rules (the same for the local part and the domain): surrounding whitespace is dropped,
compatibility forms (fullwidth letters and at sign, ideographic full stop) fold under NFKC; invisible formatting
characters (zero-width space/joiner, soft hyphen) are refused rather than silently dropped. Domains
go through IDNA 2008 / UTS 46 (non-transitional, so `straße.de` stays `straße.de`), and an address
whose domain UTS 46 would change beyond that fold is refused. The database's de-duplication key,
`sender_address_key(email)` (migration 0003), is the SQL side of the same fold.
"""

from __future__ import annotations

import re
import unicodedata
from email.utils import formataddr, parseaddr

import idna

_LOCAL = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.\-]{1,64}$")
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})  # UTS 46 label separators


class AddressError(ValueError):
    """An address SES cannot deliver to; the message says why (without echoing the address)."""


def fold(raw: str) -> str:
    """Whitespace trimmed, compatibility forms folded (NFKC): fullwidth `ann@example.org` becomes ASCII."""
    return unicodedata.normalize("NFKC", raw.strip()).translate(_DOTS).strip()


def normalise_address(raw: str | None, *, allow_display_name: bool = False) -> str:
    """The address ready for SES (domain lower-cased, IDN in punycode), or AddressError."""
    if raw is None or not raw.strip():
        raise AddressError("empty address")
    if _CONTROL.search(raw.strip()):
        raise AddressError("address contains control characters")
    name, address = parseaddr(raw) if allow_display_name else ("", raw)
    address = fold(address)
    if any(unicodedata.category(ch) == "Cf" for ch in address):
        raise AddressError("address contains invisible formatting characters (zero-width or soft hyphen)")
    if "@" not in address:
        raise AddressError("address has no @domain")
    local, _, domain = address.rpartition("@")
    if not _LOCAL.match(local) or local.startswith(".") or local.endswith(".") or ".." in local:
        raise AddressError("address has an invalid local part (SES accepts ASCII local parts only)")
    ascii_domain = _ascii_domain(domain)
    labels = ascii_domain.rstrip(".").split(".")
    if len(labels) < 2 or not all(_LABEL.match(label) for label in labels) or len(ascii_domain) > 253:
        raise AddressError("address has an invalid domain")
    clean = f"{local}@{ascii_domain}"
    if len(clean) > 254:
        raise AddressError("address is longer than 254 characters")
    return formataddr((name, clean)) if name else clean


def _ascii_domain(domain: str) -> str:
    """IDNA 2008 / UTS 46, non-transitional; refused when the mapping would change its meaning."""
    lowered = domain.lower()
    if lowered.isascii():
        return lowered
    try:
        mapped = idna.uts46_remap(lowered, std3_rules=True, transitional=False)
    except idna.IDNAError:
        raise AddressError("address has an invalid domain") from None
    if mapped != lowered:
        # e.g. a capital sharp s or an ignored code point: the domain would silently become another
        raise AddressError("address has a domain that IDNA mapping would change (refused, not guessed)")
    try:
        return idna.encode(mapped, uts46=False).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        raise AddressError("address has an invalid domain") from None
