"""`POST /ses/events`: SNS signatures v1 and v2 with a certificate the test generates and serves,
the strict certificate host rule, the TopicArn allow-list, subscription confirmation, and hostile
bodies (each refused with a clear status, nothing applied, nothing crashed)."""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from sender.config import Settings
from sender.db import create_pool
from sender.event_metrics import EventMetrics
from sender.public_http import PublicServer
from sender.sns import (
    CONFIRMATION_FIELDS,
    NOTIFICATION_FIELDS,
    SIGNATURE_FIELDS,
    STRING_FIELDS,
    SnsEndpoint,
    SnsVerifier,
    string_to_sign,
)
from tests import ses_events as ev
from tests.helpers import seed_sent_campaign

TOPIC = "arn:aws:sns:us-east-1:123456789012:ses-events"


def make_cert(key: rsa.RSAPrivateKey, *, days: int = 30) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=days)).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class CertServer:
    url: str
    key: rsa.RSAPrivateKey
    hits: list[str] = field(default_factory=list)

    def sign(self, msg: dict[str, Any], version: str = "1", key: rsa.RSAPrivateKey | None = None) -> dict[str, Any]:
        msg = {**msg, "SignatureVersion": version, "SigningCertURL": msg.get("SigningCertURL", f"{self.url}/cert.pem")}
        algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
        signature = (key or self.key).sign(string_to_sign(msg).encode(), padding.PKCS1v15(), algorithm)
        return {**msg, "Signature": base64.b64encode(signature).decode()}


@pytest.fixture(scope="module")
def signing_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
async def certs(signing_key: rsa.RSAPrivateKey) -> AsyncIterator[CertServer]:
    """Serves the test's certificate (and an expired one, and junk) and records subscription visits."""
    expired_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    server = CertServer("", signing_key)
    pem, expired = make_cert(signing_key), make_cert(expired_key, days=-1)

    async def serve(request: web.Request) -> web.Response:
        server.hits.append(request.path_qs)
        if request.path == "/cert.pem":
            return web.Response(body=pem)
        if request.path == "/expired.pem":
            return web.Response(body=expired)
        if request.path == "/junk.pem":
            return web.Response(body=b"not a certificate")
        if request.path == "/subscribe":
            return web.Response(text="<ConfirmSubscriptionResponse/>")
        return web.Response(status=404)

    app = web.Application()
    app.router.add_get("/{tail:.*}", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    yield server
    await runner.cleanup()


@pytest.fixture
async def endpoint(db_url: str) -> AsyncIterator[tuple[str, SnsEndpoint]]:
    pool = await create_pool(db_url, min_size=1, max_size=2)
    settings = Settings(database_url=db_url, public_http_port=0, sns_topic_arns=(TOPIC,))
    # only tests widen the host rule: a local plain-http certificate server
    verifier = SnsVerifier((TOPIC,), host_pattern=re.compile(r"^127\.0\.0\.1$"), allow_http=True)
    sns = SnsEndpoint(settings, pool, EventMetrics(__import__("prometheus_client").CollectorRegistry()), verifier)
    server = PublicServer(settings, pool, events=sns.handle)
    port = await server.start()
    yield f"http://127.0.0.1:{port}/ses/events", sns
    await server.stop()
    await sns.close()
    await pool.close()


def notification(event: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"Type": "Notification", "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324", "TopicArn": TOPIC,
            "Message": json.dumps(event), "Timestamp": "2017-08-05T00:41:03.000Z",
            "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe", **extra}


async def post(url: str, body: Any) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    async with aiohttp.ClientSession() as http, http.post(
            url, data=data, headers={"Content-Type": "text/plain; charset=UTF-8"}) as resp:
        return resp.status, await resp.json()


@pytest.mark.parametrize("version", ["1", "2"])
async def test_signed_notifications_apply_and_the_certificate_is_cached(
        db: asyncpg.Connection, certs: CertServer, endpoint: tuple[str, SnsEndpoint], version: str) -> None:
    url, sns = endpoint
    await seed_sent_campaign(db, 2)
    status, body = await post(url, certs.sign(notification(ev.bounce("m-0", "user0@example.org")), version))
    assert (status, body) == (200, {"applied": 1, "duplicates": 0})
    with_subject = notification(ev.complaint("m-1", "user1@example.org"), Subject="Amazon SES Email Event")
    assert (await post(url, certs.sign(with_subject, version)))[0] == 200
    assert dict(await db.fetch("SELECT email, status FROM contacts")) == {
        "user0@example.org": "bounced", "user1@example.org": "complained"}
    assert certs.hits.count("/cert.pem") == 1 and sns.verifier.cert_fetches == 1
    replay = await post(url, certs.sign(notification(ev.bounce("m-0", "user0@example.org")), version))
    assert replay == (200, {"applied": 0, "duplicates": 1})


async def test_forgeries_are_refused_and_change_nothing(db: asyncpg.Connection, certs: CertServer,
                                                         endpoint: tuple[str, SnsEndpoint]) -> None:
    url, _ = endpoint
    await seed_sent_campaign(db, 1)
    good = certs.sign(notification(ev.bounce("m-0", "user0@example.org")))
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    tampered = {**good, "Message": json.dumps(ev.bounce("m-0", "victim@example.org"))}
    cases = {
        "tampered message": (tampered, 403),
        "other key": (certs.sign(notification(ev.bounce("m-0", "user0@example.org")), key=other_key), 403),
        "v1 signature claimed as v2": ({**good, "SignatureVersion": "2"}, 403),
        "unknown version": ({**good, "SignatureVersion": "3"}, 403),
        "not base64": ({**good, "Signature": "!!!"}, 403),
        "unsigned (raw delivery)": ({k: v for k, v in good.items() if k != "Signature"}, 400),
        "wrong topic": (certs.sign(notification(ev.bounce("m-0", "user0@example.org"),
                                                TopicArn="arn:aws:sns:us-east-1:999999999999:evil")), 403),
        "expired cert": (certs.sign(notification(ev.bounce("m-0", "user0@example.org")),
                                    ) | {"SigningCertURL": f"{certs.url}/expired.pem"}, 403),
        "junk cert": (certs.sign({**notification(ev.bounce("m-0", "user0@example.org")),
                                  "SigningCertURL": f"{certs.url}/junk.pem"}), 403),
        "cert not .pem": (certs.sign({**notification(ev.bounce("m-0", "user0@example.org")),
                                      "SigningCertURL": f"{certs.url}/subscribe"}), 403),
        "type confusion": ({**good, "Type": "SubscriptionConfirmation"}, 400),
        "wrong field type": ({**good, "Timestamp": 17}, 400),
    }
    for name, (body, expected) in cases.items():
        status, answer = await post(url, body)
        assert status == expected, (name, answer)
        assert "error" in answer
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 0
    assert await db.fetchval("SELECT count(*) FROM ses_events") == 0
    assert await db.fetchval("SELECT status FROM contacts") == "subscribed"


@pytest.mark.parametrize("cert_url", [
    "http://sns.us-east-1.amazonaws.com/cert.pem",  # not https
    "https://sns.us-east-1.amazonaws.com.evil.example/cert.pem",  # suffix games
    "https://evil-sns.us-east-1.amazonaws.com/cert.pem",
    "https://sns.us-east-1.amazonaws.com.s3.amazonaws.com/cert.pem",  # an S3 bucket named like SNS
    "https://s3.amazonaws.com/sns.us-east-1.amazonaws.com/cert.pem",  # S3 path style
    "https://my-bucket.s3.amazonaws.com/SimpleNotificationService-x.pem",
    "https://user:pw@sns.us-east-1.amazonaws.com/cert.pem",
    "https://sns.us-east-1.amazonaws.com:8443/cert.pem",
    "https://SNS.US-EAST-1.AMAZONAWS.COM.evil.example/cert.pem",
    "https://sns.us-east-1.amazonaws.com\\@evil.example/cert.pem",
    "file:///etc/passwd",
])
def test_production_host_rule_refuses_lookalikes(cert_url: str) -> None:
    verifier = SnsVerifier((TOPIC,))
    assert not verifier.trusted_url(cert_url)
    assert verifier.trusted_url("https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem")
    assert verifier.trusted_url("https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-abc.pem")


async def test_production_verifier_never_fetches_a_local_certificate(certs: CertServer) -> None:
    verifier = SnsVerifier((TOPIC,))
    msg = certs.sign(notification(ev.bounce("m-0", "user0@example.org")))
    async with aiohttp.ClientSession() as http:
        with pytest.raises(Exception, match="not an SNS certificate URL"):
            await verifier.verify(msg, http)
    assert certs.hits == []


async def test_subscription_confirmation_visits_only_an_sns_subscribe_url(
        certs: CertServer, endpoint: tuple[str, SnsEndpoint]) -> None:
    url, _ = endpoint
    confirmation = {"Type": "SubscriptionConfirmation", "MessageId": "165545c9", "Token": "2336412f37",
                    "TopicArn": TOPIC, "Message": "You have chosen to subscribe to the topic.",
                    "SubscribeURL": f"{certs.url}/subscribe?Action=ConfirmSubscription&Token=2336412f37",
                    "Timestamp": "2012-04-26T20:45:04.751Z"}
    assert await post(url, certs.sign(confirmation, "2")) == (200, {"confirmed": True})
    assert any(h.startswith("/subscribe?") for h in certs.hits)
    hostile = {**confirmation, "SubscribeURL": "http://169.254.169.254/latest/meta-data/"}
    status, _ = await post(url, certs.sign(hostile))
    assert status == 403
    assert sum(h.startswith("/subscribe") for h in certs.hits) == 1


async def test_signed_envelopes_violating_the_schema_are_refused_before_verification(
        db: asyncpg.Connection, certs: CertServer, endpoint: tuple[str, SnsEndpoint]) -> None:
    """Every SnsMessage property is a string, signed or not: a genuine signature over the fields its
    Type signs once let a non-string UnsubscribeURL (never signed), or a SubscribeURL/Token on a
    Notification or a Subject on a confirmation, through with a 200 and the event applied."""
    url, _ = endpoint
    await seed_sent_campaign(db, 1)
    event = notification(ev.bounce("m-0", "user0@example.org"))
    confirmation = {"Type": "SubscriptionConfirmation", "MessageId": "165545c9", "Token": "2336412f37",
                    "TopicArn": TOPIC, "Message": "You have chosen to subscribe to the topic.",
                    "SubscribeURL": f"{certs.url}/subscribe?Action=ConfirmSubscription&Token=2336412f37",
                    "Timestamp": "2012-04-26T20:45:04.751Z"}
    unsubscribed = {**confirmation, "Type": "UnsubscribeConfirmation"}
    cases = {
        "Notification, UnsubscribeURL a number": {**event, "UnsubscribeURL": 17},
        "Notification, SubscribeURL a list": {**event, "SubscribeURL": []},
        "Notification, Token null": {**event, "Token": None},
        "SubscriptionConfirmation, Subject an object": {**confirmation, "Subject": {"a": 1}},
        "SubscriptionConfirmation, UnsubscribeURL false": {**confirmation, "UnsubscribeURL": False},
        "UnsubscribeConfirmation, Subject a number": {**unsubscribed, "Subject": 1.5},
    }
    for name, body in cases.items():
        assert (await post(url, certs.sign(body)))[0] == 400, name  # a genuine signature
    assert await db.fetchval("SELECT count(*) FROM ses_events") == 0
    assert not any(h.startswith("/subscribe") for h in certs.hits)
    # the same envelopes with the property a string are believed: the refusal is the schema's, not the signature's
    assert (await post(url, certs.sign({**event, "UnsubscribeURL": "17"})))[0] == 200


def test_every_documented_envelope_property_is_checked_as_a_string() -> None:
    schema = json.loads(files("sender").joinpath("openapi.json").read_text())["components"]["schemas"]["SnsMessage"]
    assert set(STRING_FIELDS) == set(schema["properties"])
    assert all(schema["properties"][name] == {"type": "string"} for name in STRING_FIELDS)
    assert set(schema["required"]) <= {*NOTIFICATION_FIELDS, *CONFIRMATION_FIELDS, *SIGNATURE_FIELDS}


async def test_hostile_bodies(db: asyncpg.Connection, certs: CertServer, endpoint: tuple[str, SnsEndpoint]) -> None:
    url, _ = endpoint
    assert (await post(url, b"{not json"))[0] == 400
    assert (await post(url, b"[]"))[0] == 400
    assert (await post(url, b"[" * 50_000))[0] == 400
    async with aiohttp.ClientSession() as http, http.post(url, data=b"x" * (400 * 1024)) as resp:
        assert resp.status == 413
    big = certs.sign(notification({"eventType": "Bounce", "pad": "x" * (256 * 1024)}))
    assert (await post(url, big))[0] in (400, 413)
    unknown = certs.sign(notification({"eventType": "Teleport", "mail": {"messageId": "m"}}))
    status, answer = await post(url, unknown)
    assert status == 400 and "unknown event type" in answer["error"]
    assert await db.fetchval("SELECT count(*) FROM ses_events") == 0


async def test_daemon_serves_the_public_routes_next_to_the_private_ones(db: asyncpg.Connection,
                                                                         settings: Settings) -> None:
    """The daemon's hook: public listener with /u and /ses/events; admin and metrics stay private."""
    from tests.helpers import running_daemon, wait_for

    async def started() -> bool:
        return daemon.ready.is_set()

    configured = settings.with_overrides(public_http_port=0, sns_topic_arns=(TOPIC,), unsubscribe_secret="k",
                                         admin_token="t")
    async with running_daemon(configured) as daemon:
        await wait_for(started)
        public = daemon.deliverability.public
        assert public is not None and public.port
        base = f"http://127.0.0.1:{public.port}"
        async with aiohttp.ClientSession() as http:
            unsigned = json.dumps(notification(ev.send("m", "a@example.com")))
            async with http.post(f"{base}/ses/events", data=unsigned) as r:
                assert r.status == 400  # unsigned: refused, but the route is there
            async with http.get(f"{base}/u/1.2.{'A' * 22}") as r:
                assert r.status == 400
            for private in ("/metrics", "/readyz", "/campaigns/1"):
                async with http.get(base + private) as r:
                    assert r.status == 404
            async with http.get(f"http://127.0.0.1:{daemon.ops.port}/metrics") as r:
                assert 'sender_ses_events_failed_total{reason="malformed"} 1.0' in await r.text()
    assert await db.fetchval("SELECT count(*) FROM ses_events") == 0
