"""The OpenAPI document is the contract of both listeners: served, complete, and fuzzed with schemathesis.

Operations are read from sender/openapi.json, so an endpoint added later needs only its description
there; an endpoint either app serves but the document lacks fails `test_every_route_is_documented`.
A path item's own `servers` (each marked `x-listener`) says which listener serves it; without them it
is the ops listener's.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from importlib.resources import files
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

import sender
from sender.config import Settings
from sender.daemon import Daemon
from sender.demo.fakeses import FakeSES
from sender.http import ACTIONS
from sender.public_http import PublicServer
from tests.helpers import add_campaign, add_contacts, add_template, running_daemon, wait_for

TOKEN = "openapi-admin-token"
DOCUMENT: dict[str, Any] = json.loads(files("sender").joinpath("openapi.json").read_text())
METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
SCHEMATHESIS = Path(sys.executable).with_name("st")
FATAL_WARNINGS = ["missing_auth", "validation_mismatch", "base_url_mismatch", "unused_openapi_auth",
                  "method_not_allowed", "dictionary_mismatch", "unresolvable_reference", "missing_deserializer"]


def listeners(path: str) -> set[str]:
    """Which listeners serve a documented path: `ops`, `public` or both."""
    return {server["x-listener"] for server in DOCUMENT["paths"][path].get("servers", DOCUMENT["servers"])}


def operations(listener: str | None = None) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method.upper(), path, op) for path, item in DOCUMENT["paths"].items()
            for method, op in item.items() if method in METHODS and (listener is None or listener in listeners(path))]


def routes(app: web.Application) -> set[tuple[str, str]]:
    routed = set()
    for route in app.router.routes():
        if route.method in ("HEAD", "*"):
            continue
        path = route.resource.canonical if route.resource else ""
        expanded = [path.replace("{action}", a) for a in ACTIONS] if "{action}" in path else [path]
        routed |= {(route.method, p) for p in expanded}
    return routed


def concrete(path: str) -> str:
    """A documented path with example values in its templates."""
    return re.sub(r"\{[^}]+\}", "1", path)


@pytest.fixture
async def admin_daemon(db: asyncpg.Connection, settings: Settings, fake_ses: FakeSES) -> AsyncIterator[Daemon]:
    # campaigns in several states, so that ids the fuzzer tries (examples use 1) hit real rows too
    await add_contacts(db, 5)
    template = await add_template(db)
    daemon_settings = settings.with_overrides(admin_token=TOKEN)
    async with running_daemon(daemon_settings) as daemon:
        await wait_for(lambda: _ready(daemon))
        later = datetime.now(UTC) + timedelta(days=1)  # queued until tomorrow: pausable, resumable, cancellable
        daemon.seeded = {await add_campaign(db, template, status=status, scheduled_at=later): status  # type: ignore[attr-defined]
                         for status in ("draft", "paused", "failed", "sent", "cancelled", *["queued"] * 8)}
        yield daemon


async def _ready(daemon: Daemon) -> bool:
    return daemon.ready.is_set()


def test_document_is_valid_openapi_3_1_and_names_this_version() -> None:
    assert DOCUMENT["openapi"].startswith("3.1.")
    validate(DOCUMENT)  # against the OpenAPI 3.1 meta-schema, $refs resolved
    broken = json.loads(json.dumps(DOCUMENT))
    del broken["info"]["title"]
    with pytest.raises(OpenAPIValidationError):
        validate(broken)
    assert DOCUMENT["info"]["version"] == sender.__version__
    for method, path, op in operations():
        assert op.get("operationId") and op.get("responses"), f"{method} {path}"


def test_every_server_names_its_listener() -> None:
    servers = DOCUMENT["servers"] + [s for item in DOCUMENT["paths"].values() for s in item.get("servers", [])]
    assert {s.get("x-listener") for s in servers} == {"ops", "public"}
    assert listeners("/u/{token}") == listeners("/ses/events") == {"public"}
    assert listeners("/healthz") == {"ops", "public"} and listeners("/metrics") == {"ops"}


def test_every_route_is_documented(settings: Settings) -> None:
    """Both ways: what the ops app routes is in the document, and the document describes nothing unrouted."""
    routed = routes(Daemon(settings.with_overrides(admin_token=TOKEN)).ops.app())
    documented = {(method, path) for method, path, _ in operations("ops")}
    assert routed == documented, f"undocumented: {routed - documented}; not routed: {documented - routed}"


def test_every_public_route_is_documented(settings: Settings) -> None:
    """The same for the public listener, with the SNS endpoint routed (SENDER_SNS_TOPIC_ARNS set)."""

    async def events(request: web.Request) -> web.Response:
        raise AssertionError("not called")

    public = PublicServer(settings.with_overrides(unsubscribe_secret="s"), pool=None, events=events)  # type: ignore[arg-type]
    routed = routes(public.app())
    documented = {(method, path) for method, path, _ in operations("public")}
    assert routed == documented, f"undocumented: {routed - documented}; not routed: {documented - routed}"


async def test_openapi_json_is_served_as_kept_in_the_repository(admin_daemon: Daemon) -> None:
    async with aiohttp.ClientSession() as http, \
            http.get(f"http://127.0.0.1:{admin_daemon.ops.port}/openapi.json") as response:
        assert response.status == 200 and response.content_type == "application/json"
        assert await response.json() == DOCUMENT


async def test_auth_is_enforced_on_every_secured_operation(admin_daemon: Daemon) -> None:
    secured = [(m, p) for m, p, op in operations("ops") if op.get("security", DOCUMENT.get("security"))]
    assert secured, "the document marks no operation as secured"
    base = f"http://127.0.0.1:{admin_daemon.ops.port}"
    async with aiohttp.ClientSession() as http:
        for method, path in secured:
            for headers, expected in (({}, 401), ({"Authorization": "Bearer wrong"}, 403),
                                      ({"Authorization": f"Basic {TOKEN}"}, 401)):
                async with http.request(method, base + concrete(path), headers=headers) as response:
                    body = await response.json()
                    assert (response.status, set(body)) == (expected, {"error"}), f"{method} {path} {headers}"
                    if expected == 401:
                        assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_schemathesis_finds_no_server_error_and_no_undocumented_response(
        admin_daemon: Daemon, db: asyncpg.Connection, tmp_path: Path) -> None:
    """All of schemathesis' checks, a bounded number of examples per operation, against real PostgreSQL."""
    url = f"http://127.0.0.1:{admin_daemon.ops.port}/openapi.json"
    # half the generated ids are real campaigns, so actions reach the database and return 200/409 too;
    # warnings that mean the run itself is broken (token refused, every input rejected) fail it
    seeded: dict[int, str] = admin_daemon.seeded  # type: ignore[attr-defined]
    (tmp_path / "schemathesis.toml").write_text(
        f"[warnings]\nfail-on = {json.dumps(FATAL_WARNINGS)}\n\n"
        f"[dictionaries.campaigns]\nvalues = {sorted(seeded)}\n\n"
        '[parameters]\n"path.id" = { dictionary = "campaigns", probability = 0.5 }\n')
    text, tested = await _schemathesis(url, f"http://127.0.0.1:{admin_daemon.ops.port}", tmp_path,
                                       "--exclude-tag", "public", "--header", f"Authorization: Bearer {TOKEN}",
                                       "--checks", "all")
    # schemathesis leaves out the document's own endpoint; test_openapi_json_is_served_… covers it
    assert tested == {f"{m} {p}" for m, p, _ in operations("ops") if p != "/openapi.json"}, text[-3000:]
    assert TOKEN not in text
    now = dict(await db.fetch("SELECT id, status FROM campaigns WHERE id = ANY($1::bigint[])", list(seeded)))
    assert now != seeded, "no action reached a real campaign"


async def _schemathesis(document: str, base_url: str, tmp_path: Path, *options: str) -> tuple[str, set[str]]:
    """One bounded schemathesis run (all phases, 25 examples per operation); its output, and the
    operations it tested (from its JUnit report). Fails the test when schemathesis finds a problem."""
    proc = await asyncio.create_subprocess_exec(
        str(SCHEMATHESIS), "run", document, "--url", base_url, *options,
        "--phases", "examples,coverage,fuzzing", "--max-examples", "25",
        "--workers", "2", "--generation-database", "none", "--request-timeout", "10", "--no-color",
        "--report", "junit", "--report-junit-path", str(tmp_path / "junit.xml"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp_path)
    output, _ = await asyncio.wait_for(proc.communicate(), 300)
    text = output.decode(errors="replace")
    print(text)
    assert proc.returncode == 0, text[-6000:]
    return text, set(re.findall(r'<testcase name="([A-Z]+ [^"]+)"', (tmp_path / "junit.xml").read_text()))


async def test_malformed_campaign_ids_get_a_documented_400(admin_daemon: Daemon) -> None:
    """Unicode digits ('²' passes str.isdigit but not int()) once made a 500."""
    async with aiohttp.ClientSession() as http:
        for raw in ("%C2%B2", "%D9%A1", "1%00", "-1", "1.0", "9" * 19, "%20"):
            for method, path in (("GET", f"/campaigns/{raw}"), ("POST", f"/campaigns/{raw}/pause")):
                async with http.request(method, f"http://127.0.0.1:{admin_daemon.ops.port}{path}",
                                        headers={"Authorization": f"Bearer {TOKEN}"}) as response:
                    assert response.status == 400, f"{method} {path}"
                    assert "whole number" in (await response.json())["error"]


async def test_schemathesis_on_the_public_listener_finds_no_server_error_and_no_undocumented_response(
        db: asyncpg.Connection, settings: Settings, fake_ses: FakeSES, tmp_path: Path) -> None:
    """The unsubscribe page and the SNS endpoint, fuzzed like the admin API: tokens and SNS envelopes
    that are garbage, forged or well-formed get documented answers, never a 5xx."""
    public_settings = settings.with_overrides(
        public_http_port=0, unsubscribe_secret="fuzz-secret", public_base_url="http://127.0.0.1",
        sns_topic_arns=("arn:aws:sns:us-east-1:123456789012:ses-events",))
    async with running_daemon(public_settings) as daemon:
        await wait_for(lambda: _ready(daemon))
        assert daemon.deliverability is not None and daemon.deliverability.public is not None
        public = daemon.deliverability.public.port
        # a token or an SNS envelope can match the schema and still be forged: refusing it is the point
        # (positive_data_acceptance is off); anything breaking the schema must get a rejecting 4xx
        text, tested = await _schemathesis(
            f"http://127.0.0.1:{daemon.ops.port}/openapi.json", f"http://127.0.0.1:{public}", tmp_path,
            "--include-tag", "public", "--checks", "all", "--exclude-checks", "positive_data_acceptance")
    assert tested >= {"GET /u/{token}", "POST /u/{token}", "POST /ses/events"}, text[-3000:]
