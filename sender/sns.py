"""`POST /ses/events`: SNS HTTPS deliveries of SES events, verified before anything is believed.

Signature versions 1 (SHA1) and 2 (SHA256) over the documented string to sign; the signing
certificate only from `https://sns.<region>.amazonaws.com[.cn]/…` (an exact host match: a suffix
match lets an S3 bucket host a forged certificate), cached; TopicArn against an allow-list; a
SubscribeURL is visited only on that same host rule. Raw message delivery must be off: it strips
the signature, and unsigned messages are refused.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
from aiohttp import web
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from sender.config import Settings
from sender.db import DB_ERRORS
from sender.event_metrics import EventMetrics
from sender.events import EventError, apply_effects, parse_event
from sender.logs import get_logger

log = get_logger("sender.sns")

CERT_HOST = re.compile(r"^sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$")
MAX_CERT_BYTES = 64 * 1024
NOTIFICATION_FIELDS = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
CONFIRMATION_FIELDS = ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")
SIGNATURE_FIELDS = ("Signature", "SignatureVersion", "SigningCertURL")
# the OpenAPI schema SnsMessage: each property, signed or not, is a string whenever present
STRING_FIELDS = ("Type", "MessageId", "TopicArn", "Subject", "Message", "Timestamp", *SIGNATURE_FIELDS,
                 "SubscribeURL", "Token", "UnsubscribeURL")
TYPES = ("Notification", "SubscriptionConfirmation", "UnsubscribeConfirmation")


class SnsRefused(Exception):
    """A message that must not be believed; `reason` is a short metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def string_to_sign(msg: dict[str, Any]) -> str:
    """`Key\\nValue\\n` for each signed field, in the documented order (Subject only if present)."""
    fields = NOTIFICATION_FIELDS if msg.get("Type") == "Notification" else CONFIRMATION_FIELDS
    parts = []
    for name in fields:
        if name == "Subject" and name not in msg:
            continue
        parts.append(f"{name}\n{msg[name]}\n")
    return "".join(parts)


class SnsVerifier:
    """Checks envelopes. Only tests widen `host_pattern` or allow plain http (a local cert server)."""

    def __init__(self, topic_arns: tuple[str, ...], *, host_pattern: re.Pattern[str] = CERT_HOST,
                 allow_http: bool = False, cache_size: int = 32) -> None:
        self.topic_arns = frozenset(topic_arns)
        self._host = host_pattern
        self._schemes = ("https", "http") if allow_http else ("https",)
        self._certs: OrderedDict[str, rsa.RSAPublicKey] = OrderedDict()
        self._cache_size = cache_size
        self.cert_fetches = 0

    def trusted_url(self, url: Any) -> bool:
        """An AWS SNS URL: allowed scheme, exact host rule, no credentials, default port."""
        if not isinstance(url, str) or len(url) > 2048:
            return False
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            return False
        if parts.scheme not in self._schemes or parts.username or parts.password or not parts.hostname:
            return False
        if port is not None and self._schemes == ("https",) and port != 443:
            return False
        return bool(self._host.match(parts.hostname))

    def check_envelope(self, msg: Any) -> dict[str, Any]:
        if not isinstance(msg, dict):
            raise SnsRefused("malformed", "body is not a JSON object")
        # also the fields the Type does not sign (UnsubscribeURL never is): a genuine signature does
        # not make an envelope that breaks the documented schema acceptable
        for name in STRING_FIELDS:
            if name in msg and not isinstance(msg[name], str):
                raise SnsRefused("malformed", f"SNS field {name} is not a string")
        if msg.get("Type") not in TYPES:
            raise SnsRefused("malformed", "unknown SNS message Type")
        fields = NOTIFICATION_FIELDS if msg["Type"] == "Notification" else CONFIRMATION_FIELDS
        for name in (*fields, *SIGNATURE_FIELDS):
            if name == "Subject" and name not in msg:
                continue
            if not isinstance(msg.get(name), str):
                raise SnsRefused("malformed", f"SNS field {name} missing or not a string")
        if msg["TopicArn"] not in self.topic_arns:
            raise SnsRefused("topic", "TopicArn is not in SENDER_SNS_TOPIC_ARNS")
        if msg["SignatureVersion"] not in ("1", "2"):
            raise SnsRefused("signature", "unsupported SignatureVersion")
        if not self.trusted_url(msg["SigningCertURL"]) or not urlsplit(msg["SigningCertURL"]).path.endswith(".pem"):
            raise SnsRefused("cert_url", "SigningCertURL is not an SNS certificate URL")
        return msg

    async def verify(self, doc: Any, http: aiohttp.ClientSession) -> dict[str, Any]:
        """The envelope when it is genuine; SnsRefused otherwise."""
        msg = self.check_envelope(doc)
        try:
            signature = base64.b64decode(msg["Signature"], validate=True)
        except (binascii.Error, ValueError):
            raise SnsRefused("signature", "Signature is not base64") from None
        key = await self._public_key(msg["SigningCertURL"], http)
        algorithm: hashes.HashAlgorithm = hashes.SHA1() if msg["SignatureVersion"] == "1" else hashes.SHA256()  # noqa: S303 - SNS v1 is SHA1 by definition
        try:
            key.verify(signature, string_to_sign(msg).encode(), padding.PKCS1v15(), algorithm)
        except InvalidSignature:
            raise SnsRefused("signature", "signature does not verify") from None
        return msg

    async def _public_key(self, url: str, http: aiohttp.ClientSession) -> rsa.RSAPublicKey:
        key = self._certs.get(url)
        if key is not None:
            self._certs.move_to_end(url)
            return key
        self.cert_fetches += 1
        try:
            async with http.get(url, allow_redirects=False, timeout=aiohttp.ClientTimeout(total=10)) as resp:
                if resp.status != 200:
                    raise SnsRefused("cert", f"signing certificate answered HTTP {resp.status}")
                pem = await resp.content.read(MAX_CERT_BYTES + 1)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SnsRefused("cert", f"signing certificate unreachable ({type(exc).__name__})") from None
        if len(pem) > MAX_CERT_BYTES:
            raise SnsRefused("cert", "signing certificate too large")
        try:
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError:
            raise SnsRefused("cert", "signing certificate is not a PEM certificate") from None
        now = datetime.now(UTC)
        if not (cert.not_valid_before_utc <= now <= cert.not_valid_after_utc):
            raise SnsRefused("cert", "signing certificate is expired or not yet valid")
        public = cert.public_key()
        if not isinstance(public, rsa.RSAPublicKey):
            raise SnsRefused("cert", "signing certificate does not hold an RSA key")
        self._certs[url] = public
        while len(self._certs) > self._cache_size:
            self._certs.popitem(last=False)
        return public


class SnsEndpoint:
    """The aiohttp handler: verify, confirm subscriptions, apply notifications."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool, metrics: EventMetrics,
                 verifier: SnsVerifier | None = None) -> None:
        self.settings = settings
        self.pool = pool
        self.metrics = metrics
        self.verifier = verifier or SnsVerifier(settings.sns_topic_arns)
        self._http: aiohttp.ClientSession | None = None

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession()
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    def _refuse(self, status: int, reason: str, message: str) -> web.Response:
        self.metrics.failed.labels(reason=reason).inc()
        log.warning("sns_message_refused", reason=reason, detail=message)
        return web.json_response({"error": message}, status=status)

    async def handle(self, request: web.Request) -> web.Response:
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._refuse(413, "too_large", "body too large")
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError):
            return self._refuse(400, "malformed", "body is not JSON")
        try:
            msg = await self.verifier.verify(doc, self._session())
        except SnsRefused as exc:
            return self._refuse(403 if exc.reason in ("topic", "signature", "cert_url", "cert") else 400,
                                exc.reason, str(exc))
        if msg["Type"] == "SubscriptionConfirmation":
            return await self._confirm(msg)
        if msg["Type"] == "UnsubscribeConfirmation":
            log.warning("sns_unsubscribed", topic=msg["TopicArn"])
            return web.json_response({"ok": True})
        try:
            effects = parse_event(msg["Message"])
        except EventError as exc:
            return self._refuse(400, "unparsable", str(exc))
        try:
            async with self.pool.acquire() as conn:
                applied = await apply_effects(conn, effects, soft_bounce_limit=self.settings.soft_bounce_limit,
                                              soft_bounce_days=self.settings.soft_bounce_days)
        except DB_ERRORS as exc:  # 5xx: SNS retries the delivery later
            return self._refuse(503, "database", f"database unavailable ({type(exc).__name__})")
        self.metrics.record(applied)
        return web.json_response({"applied": sum(applied.by_kind.values()), "duplicates": applied.duplicates})

    async def _confirm(self, msg: dict[str, Any]) -> web.Response:
        url = msg["SubscribeURL"]
        if not self.verifier.trusted_url(url):
            return self._refuse(403, "subscribe_url", "SubscribeURL is not on an SNS host")
        try:
            async with self._session().get(url, allow_redirects=False,
                                           timeout=aiohttp.ClientTimeout(total=10)) as resp:
                ok = resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            ok = False
        if not ok:
            return self._refuse(502, "subscribe_failed", "confirming the subscription failed")
        log.info("sns_subscription_confirmed", topic=msg["TopicArn"])
        return web.json_response({"confirmed": True})
