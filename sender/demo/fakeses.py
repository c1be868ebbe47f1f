"""A fake Amazon SES v2 endpoint over HTTP, in the real wire format (rest-json).

It serves the demo, the tests and the benchmarks: a per-second quota enforced over every
sliding one-second window (HTTP 429 TooManyRequestsException past it), a daily quota, latency with
jitter, sandbox and sender-identity checks, injected faults, and a record of every message it
accepted. Run it alone with `python -m sender.demo.fakeses --port 9000`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import random
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from email.utils import parseaddr
from typing import Any

from aiohttp import web

from sender.demo.standalone import serve_until_interrupted
from sender.listening import Listener


def max_in_window(times: list[float], seconds: float = 1.0) -> int:
    """The most of the sorted `times` that fall in any half-open window of `seconds`."""
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= seconds:
            start += 1
        best = max(best, end - start + 1)
    return best


@dataclass
class Fault:
    """An injected failure: an SES error code with its HTTP status, or a hang (`hang` seconds)."""

    code: str = "InternalFailure"
    status: int = 500
    message: str = "Internal failure"
    probability: float = 1.0
    remaining: int | None = None  # None: until cleared
    hang: float = 0.0
    # which calls it hits: SendEmail, GetAccount, ListEmailIdentities, GetEmailIdentity
    operations: tuple[str, ...] = ("SendEmail",)


@dataclass
class Identity:
    name: str
    kind: str = "DOMAIN"  # DOMAIN or EMAIL_ADDRESS
    verified: bool = True
    dkim_enabled: bool = True
    dkim_status: str = "SUCCESS"
    dkim_tokens: list[str] = field(default_factory=lambda: ["tok1", "tok2", "tok3"])
    mail_from_domain: str | None = None


@dataclass
class Account:
    max_send_rate: float = 14.0
    max_24h: float = 50_000.0
    sent_24h: float = 0.0
    production: bool = True
    sending_enabled: bool = True
    enforcement: str = "HEALTHY"
    review_status: str = "GRANTED"


@dataclass(frozen=True)
class Rejection:
    at: float  # time.monotonic() on arrival
    code: str
    to: str


@dataclass
class ReceivedMessage:
    message_id: str
    to: list[str]
    from_email: str
    reply_to: list[str]
    subject: str
    html: str
    text: str
    headers: dict[str, str]
    tags: dict[str, str]
    configuration_set: str | None
    received_at: float  # time.monotonic() on arrival
    received_wall: float


class FakeSES:
    def __init__(
        self,
        *,
        account: Account | None = None,
        latency: float = 0.0,
        jitter: float = 0.0,
        enforce_rate: bool = True,
        check_identities: bool = False,
        region: str = "us-east-1",
        seed: int | None = None,
        keep_bodies: bool = True,
    ) -> None:
        self.keep_bodies = keep_bodies  # False: record recipients and times only (million-message runs)
        self.account = account or Account()
        self.latency = latency
        self.jitter = jitter
        self.enforce_rate = enforce_rate
        self.check_identities = check_identities
        self.region = region
        self.identities: dict[str, Identity] = {}
        self.verified_recipients: set[str] = set()
        self.faults: list[Fault] = []
        self.messages: list[ReceivedMessage] = []
        self.rejections: list[Rejection] = []
        self.requests = 0
        self.account_requests = 0
        self._window: deque[float] = deque()
        self._rng = random.Random(seed)
        self._ids = itertools.count(1)
        self._listener = Listener(shutdown_timeout=0.5)  # hanging fault handlers must not hold up shutdown
        self.url = ""
        # deliverability demo (issue 11): called with each accepted message, e.g. to emit SES events
        self.on_message: Callable[[ReceivedMessage], None] | None = None
        # configuration set name -> its event destinations (SES v2 shape), for `sender doctor`
        self.configuration_sets: dict[str, list[dict[str, Any]]] = {}
        # account-level suppression list: address -> (reason, last update, epoch seconds)
        self.suppressed: dict[str, tuple[str, float]] = {}

    # -- control ---------------------------------------------------------------------------

    def add_identity(self, name: str, **kwargs: Any) -> Identity:
        kind = "EMAIL_ADDRESS" if "@" in name else "DOMAIN"
        identity = Identity(name=name.lower(), kind=kwargs.pop("kind", kind), **kwargs)
        self.identities[identity.name] = identity
        return identity

    def inject(self, *faults: Fault) -> None:
        self.faults.extend(faults)

    def clear_faults(self) -> None:
        self.faults.clear()

    def reset(self) -> None:
        self.messages.clear()
        self.rejections.clear()
        self.faults.clear()
        self._window.clear()
        self.requests = 0

    def throttled_count(self) -> int:
        return sum(1 for r in self.rejections if r.code == "TooManyRequestsException")

    def max_in_any_window(self, seconds: float = 1.0) -> int:
        """The most messages accepted in any sliding window of `seconds` (on arrival time)."""
        return max_in_window(sorted(m.received_at for m in self.messages), seconds)

    # -- server ----------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=50 * 1024 * 1024)
        app.router.add_post("/v2/email/outbound-emails", self._send_email)
        app.router.add_get("/v2/email/account", self._get_account)
        app.router.add_get("/v2/email/identities", self._list_identities)
        app.router.add_get("/v2/email/identities/{name}", self._get_identity)
        app.router.add_get("/v2/email/configuration-sets/{name}", self._get_configuration_set)  # issue 11
        app.router.add_get("/v2/email/configuration-sets/{name}/event-destinations", self._get_event_destinations)
        app.router.add_put("/v2/email/suppression/addresses", self._put_suppressed)  # issue 11
        app.router.add_get("/v2/email/suppression/addresses", self._list_suppressed)
        app.router.add_get("/_fake/messages", self._dump_messages)
        app.router.add_get("/_fake/stats", self._stats)
        app.router.add_post("/_fake/faults", self._set_faults)
        app.router.add_post("/_fake/reset", self._reset)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self.url = f"http://{host}:{await self._listener.start(self.app(), host, port)}"
        return self.url

    async def stop(self) -> None:
        await self._listener.stop()

    # -- handlers --------------------------------------------------------------------------

    def _error(self, status: int, code: str, message: str) -> web.Response:
        return web.json_response(
            {"message": message}, status=status, headers={"x-amzn-ErrorType": code}
        )

    async def _delay(self) -> None:
        if self.latency or self.jitter:
            await asyncio.sleep(max(0.0, self.latency + self._rng.uniform(-self.jitter, self.jitter)))

    def _next_fault(self, operation: str = "SendEmail") -> Fault | None:
        for fault in list(self.faults):
            if operation not in fault.operations:
                continue
            if fault.remaining is not None and fault.remaining <= 0:
                self.faults.remove(fault)
                continue
            if self._rng.random() < fault.probability:
                if fault.remaining is not None:
                    fault.remaining -= 1
                return fault
        return None

    def _sender_verified(self, address: str) -> bool:
        address = address.lower()
        domain = address.rsplit("@", 1)[-1]
        for name in (address, domain):
            identity = self.identities.get(name)
            if identity and identity.verified:
                return True
        # a parent domain identity covers its subdomains
        return any(domain.endswith("." + n) and i.verified for n, i in self.identities.items() if i.kind == "DOMAIN")

    async def _send_email(self, request: web.Request) -> web.Response:
        arrived = time.monotonic()
        self.requests += 1
        body = await request.json()
        to = list(body.get("Destination", {}).get("ToAddresses", []))
        first_to = to[0] if to else ""
        fault = self._next_fault()
        if fault is not None:
            self.rejections.append(Rejection(arrived, fault.code, first_to))
            if fault.hang:
                await asyncio.sleep(fault.hang)
            await self._delay()
            return self._error(fault.status, fault.code, fault.message)
        refusal = self._refusal(body, to, arrived)
        if refusal is not None:
            self.rejections.append(Rejection(arrived, refusal[1], first_to))
            return self._error(*refusal)
        message = self._accept(body, to, arrived)
        if self.on_message is not None:
            self.on_message(message)
        await self._delay()
        return web.json_response({"MessageId": message.message_id})

    def _refusal(self, body: dict[str, Any], to: list[str], arrived: float) -> tuple[int, str, str] | None:
        """What SES would answer instead of accepting: account, identity, sandbox, address, quotas."""
        account = self.account
        if not account.sending_enabled:
            return 400, "SendingPausedException", "Sending is paused for this account."
        from_email = parseaddr(body.get("FromEmailAddress", ""))[1]
        if self.check_identities and not self._sender_verified(from_email):
            return (400, "MessageRejected", "Email address is not verified. The following identities failed the "
                    f"check in region {self.region.upper()}: {from_email}")
        if not account.production:
            unverified = [a for a in to if parseaddr(a)[1].lower() not in self.verified_recipients
                          and not parseaddr(a)[1].lower().endswith("@simulator.amazonses.com")]
            if unverified:
                return (400, "MessageRejected", "Email address is not verified. The following identities failed "
                        f"the check in region {self.region.upper()}: {', '.join(unverified)}")
        if any("@" not in parseaddr(a)[1] for a in to) or not to:
            return 400, "BadRequestException", "Missing final '@domain'"
        if account.max_24h >= 0 and account.sent_24h + 1 > account.max_24h:
            return 429, "TooManyRequestsException", "Daily message quota exceeded."
        if self.enforce_rate:
            while self._window and arrived - self._window[0] >= 1.0:
                self._window.popleft()
            if len(self._window) >= account.max_send_rate:
                return 429, "TooManyRequestsException", "Maximum sending rate exceeded."
            self._window.append(arrived)
        return None

    def _accept(self, body: dict[str, Any], to: list[str], arrived: float) -> ReceivedMessage:
        """Count the message against the daily quota and record it."""
        self.account.sent_24h += 1
        if len(self.messages) % 1000 == 999:
            # records are never garbage: keep them out of the collector's way so its passes do not
            # stall this loop and bunch the arrival times the quota is judged on
            gc.freeze()
        simple = body.get("Content", {}).get("Simple", {}) if self.keep_bodies else {}
        message = ReceivedMessage(
            message_id=f"0100{next(self._ids):012x}-{uuid.uuid4()}-000000",
            to=to,
            from_email=body.get("FromEmailAddress", ""),
            reply_to=list(body.get("ReplyToAddresses", [])),
            subject=simple.get("Subject", {}).get("Data", ""),
            html=simple.get("Body", {}).get("Html", {}).get("Data", ""),
            text=simple.get("Body", {}).get("Text", {}).get("Data", ""),
            headers={h["Name"]: h["Value"] for h in simple.get("Headers", [])},
            tags={t["Name"]: t["Value"] for t in body.get("EmailTags", [])},
            configuration_set=body.get("ConfigurationSetName"),
            received_at=arrived,
            received_wall=time.time(),
        )
        self.messages.append(message)
        return message

    async def _get_account(self, request: web.Request) -> web.Response:
        self.account_requests += 1
        fault = self._next_fault("GetAccount")
        if fault is not None:
            return self._error(fault.status, fault.code, fault.message)
        a = self.account
        return web.json_response({
            "DedicatedIpAutoWarmupEnabled": False,
            "EnforcementStatus": a.enforcement,
            "ProductionAccessEnabled": a.production,
            "SendingEnabled": a.sending_enabled,
            "SendQuota": {"Max24HourSend": a.max_24h, "MaxSendRate": a.max_send_rate,
                          "SentLast24Hours": a.sent_24h},
            "SuppressionAttributes": {"SuppressedReasons": ["BOUNCE", "COMPLAINT"]},
            "Details": {"MailType": "MARKETING", "ReviewDetails": {"Status": a.review_status}},
        })

    async def _list_identities(self, request: web.Request) -> web.Response:
        fault = self._next_fault("ListEmailIdentities")
        if fault is not None:
            return self._error(fault.status, fault.code, fault.message)
        return web.json_response({"EmailIdentities": [
            {"IdentityType": i.kind, "IdentityName": i.name, "SendingEnabled": i.verified,
             "VerificationStatus": "SUCCESS" if i.verified else "PENDING"}
            for i in self.identities.values()
        ]})

    async def _get_identity(self, request: web.Request) -> web.Response:
        fault = self._next_fault("GetEmailIdentity")
        if fault is not None:
            return self._error(fault.status, fault.code, fault.message)
        identity = self.identities.get(request.match_info["name"].lower())
        if identity is None:
            return self._error(404, "NotFoundException", f"Email identity {request.match_info['name']} does not exist.")
        return web.json_response({
            "IdentityType": identity.kind,
            "FeedbackForwardingStatus": True,
            "VerifiedForSendingStatus": identity.verified,
            "VerificationStatus": "SUCCESS" if identity.verified else "PENDING",
            "DkimAttributes": {
                "SigningEnabled": identity.dkim_enabled,
                "Status": identity.dkim_status,
                "Tokens": identity.dkim_tokens,
                "SigningAttributesOrigin": "AWS_SES",
            },
            "MailFromAttributes": {
                "MailFromDomain": identity.mail_from_domain or "",
                "MailFromDomainStatus": "SUCCESS" if identity.mail_from_domain else "NOT_STARTED",
                "BehaviorOnMxFailure": "USE_DEFAULT_VALUE",
            },
        })

    # -- configuration sets (deliverability, issue 11) --------------------------------------------

    def _configuration_set(self, request: web.Request) -> list[dict[str, Any]] | web.Response:
        name = request.match_info["name"]
        if name not in self.configuration_sets:
            return self._error(404, "NotFoundException", f"Configuration set <{name}> does not exist.")
        return self.configuration_sets[name]

    async def _get_configuration_set(self, request: web.Request) -> web.Response:
        found = self._configuration_set(request)
        if isinstance(found, web.Response):
            return found
        return web.json_response({"ConfigurationSetName": request.match_info["name"],
                                  "SendingOptions": {"SendingEnabled": True}})

    async def _get_event_destinations(self, request: web.Request) -> web.Response:
        found = self._configuration_set(request)
        if isinstance(found, web.Response):
            return found
        return web.json_response({"EventDestinations": found})

    async def _put_suppressed(self, request: web.Request) -> web.Response:
        body = await request.json()
        address, reason = body.get("EmailAddress", ""), body.get("Reason")
        if "@" not in address or reason not in ("BOUNCE", "COMPLAINT"):
            return self._error(400, "BadRequestException", "Invalid email address or reason.")
        self.suppressed[address.lower()] = (reason, time.time())
        return web.json_response({})

    async def _list_suppressed(self, request: web.Request) -> web.Response:
        """Paged by a plain offset token; StartDate filters on the last update (ISO 8601 or epoch)."""
        start = request.query.get("StartDate")
        since = 0.0
        if start:
            try:
                since = float(start)
            except ValueError:
                from datetime import datetime

                since = datetime.fromisoformat(start.replace("Z", "+00:00")).timestamp()
        items = sorted((a, r, t) for a, (r, t) in self.suppressed.items() if t >= since)
        offset, size = int(request.query.get("NextToken", "0")), int(request.query.get("PageSize", "1000"))
        page = items[offset:offset + size]
        out: dict[str, Any] = {"SuppressedDestinationSummaries": [
            {"EmailAddress": a, "Reason": r, "LastUpdateTime": t} for a, r, t in page]}
        if offset + size < len(items):
            out["NextToken"] = str(offset + size)
        return web.json_response(out)

    async def _dump_messages(self, request: web.Request) -> web.Response:
        return web.json_response({
            "messages": [asdict(m) for m in self.messages],
            "rejections": [asdict(r) for r in self.rejections],
            "max_in_any_window": self.max_in_any_window(),
        })

    def stats(self) -> dict[str, Any]:
        times = [m.received_at for m in self.messages]
        return {
            "accepted": len(self.messages),
            "unique_recipients": len({m.to[0] for m in self.messages if m.to}),
            "requests": self.requests,
            "throttled": self.throttled_count(),
            "rejected": len(self.rejections),
            "max_in_any_window": self.max_in_any_window(),
            "first_at": min(times) if times else None,
            "last_at": max(times) if times else None,
        }

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _set_faults(self, request: web.Request) -> web.Response:
        spec = await request.json()
        self.faults = [Fault(**{**f, "operations": tuple(f.get("operations", ("SendEmail",)))})
                       for f in spec.get("faults", [])]
        for key in ("latency", "jitter"):
            if key in spec:
                setattr(self, key, float(spec[key]))
        if "account" in spec:
            for key, value in spec["account"].items():
                setattr(self.account, key, value)
        return web.json_response({"ok": True, "faults": len(self.faults)})

    async def _reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sender.demo.fakeses", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--rate", type=float, default=14.0, help="MaxSendRate, messages/s")
    parser.add_argument("--daily", type=float, default=50_000.0, help="Max24HourSend (-1 = unlimited)")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds")
    parser.add_argument("--jitter", type=float, default=0.02, help="seconds, +/-")
    parser.add_argument("--sandbox", action="store_true")
    parser.add_argument("--identity", action="append", default=[], help="verified identity (repeatable)")
    parser.add_argument("--no-enforce", action="store_true", help="accept any rate (measure, don't throttle)")
    parser.add_argument("--lean", action="store_true", help="record recipients and times only, not bodies")
    args = parser.parse_args(argv)
    fake = FakeSES(account=Account(max_send_rate=args.rate, max_24h=args.daily, production=not args.sandbox),
                   latency=args.latency, jitter=args.jitter, check_identities=bool(args.identity),
                   enforce_rate=not args.no_enforce, keep_bodies=not args.lean)
    for name in args.identity:
        fake.add_identity(name)

    async def start() -> dict[str, Any]:
        return {"fake_ses": await fake.start(args.host, args.port), "max_send_rate": args.rate}

    return serve_until_interrupted(start)


if __name__ == "__main__":
    raise SystemExit(main())
