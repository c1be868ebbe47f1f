"""Unsubscribe tokens: an HMAC-SHA256 over campaign and recipient, with key rotation.

`UNSUBSCRIBE_SECRET` holds one or more keys separated by commas: the first signs, every one
verifies, so a new key can be put first while links mailed under the old one keep working.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Sequence

MAX_HEADER_LENGTH = 870  # SES: a header value is 1-870 printable ASCII characters
_MAX_ID = 10**18 - 1  # ids are bigint; 18 digits bound the token's length
_TOKEN = re.compile(r"^([0-9]{1,18})\.([0-9]{1,18})\.([A-Za-z0-9_-]{22})$", re.ASCII)
_PRINTABLE = re.compile(r"^[\x20-\x7e]+$")


def signing_keys(secret: str | Sequence[str]) -> tuple[str, ...]:
    """The keys in a secret: a comma-separated string or a sequence; empty entries ignored."""
    items = secret.split(",") if isinstance(secret, str) else list(secret)
    keys = tuple(k.strip() for k in items if k.strip())
    if not keys:
        raise ValueError("no unsubscribe key")
    return keys


def _mac(key: str, payload: str) -> str:
    digest = hmac.new(key.encode(), payload.encode(), hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def unsubscribe_token(secret: str | Sequence[str], campaign_id: int, recipient_id: int) -> str:
    """`<campaign>.<recipient>.<mac>` signed with the first key."""
    payload = f"{campaign_id}.{recipient_id}"
    return f"{payload}.{_mac(signing_keys(secret)[0], payload)}"


def verify_unsubscribe_token(secret: str | Sequence[str], token: object) -> tuple[int, int] | None:
    """(campaign_id, recipient_id) when some key signed this token, else None. Never raises.

    Every key is tried whatever the outcome, and MACs are compared in constant time.
    """
    if not isinstance(token, str) or len(token) > 80:
        return None
    match = _TOKEN.match(token)
    if match is None:
        return None
    campaign, recipient, mac = match.groups()
    payload = f"{int(campaign)}.{int(recipient)}"
    if payload != f"{campaign}.{recipient}":  # leading zeros: one token per recipient
        return None
    try:
        keys = signing_keys(secret)
    except ValueError:
        return None
    good = False
    for key in keys:
        good |= hmac.compare_digest(_mac(key, payload).encode(), mac.encode())
    return (int(campaign), int(recipient)) if good else None


def unsubscribe_header(url_template: str, token: str) -> str:
    """The List-Unsubscribe value for one token."""
    return f"<{url_template.replace('{token}', token)}>"


def check_unsubscribe_url(url_template: str) -> str | None:
    """Why this URL template would make SES refuse every message, or None when it is fine.

    Checked with the longest possible token, so no recipient id can push it over the limit.
    """
    longest = unsubscribe_header(url_template, f"{_MAX_ID}.{_MAX_ID}.{'A' * 22}")
    if not _PRINTABLE.match(longest):
        return "the List-Unsubscribe header must be printable ASCII (percent-encode other characters)"
    if len(longest) > MAX_HEADER_LENGTH:
        return f"the List-Unsubscribe header would be {len(longest)} characters; SES allows {MAX_HEADER_LENGTH}"
    return None
