"""The ops listener: /healthz, /readyz, /metrics, and the bearer-token admin API (SPEC §6)."""

from __future__ import annotations

import asyncio
import hmac
from dataclasses import asdict
from functools import cache
from importlib.resources import files
from typing import Any, Protocol

import asyncpg
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from sender.account import AccountGate
from sender.campaigns import ACTIONS, TransitionRefused, apply_action
from sender.config import Settings
from sender.db import DB_ERRORS, QUERIES
from sender.db.health import DatabaseHealth
from sender.deliverability import Deliverability
from sender.guard import deliverability_by_campaign
from sender.listening import Listener
from sender.metrics import Metrics
from sender.progress import progress_from


class DaemonView(Protocol):
    """What the ops endpoints read of a running daemon, and nothing more."""

    settings: Settings
    metrics: Metrics
    db_health: DatabaseHealth
    ready: asyncio.Event
    deliverability: Deliverability | None

    @property
    def pool(self) -> asyncpg.Pool: ...

    @property
    def gate(self) -> AccountGate: ...

    def health(self) -> tuple[bool, dict[str, Any]]: ...

    def current_rate(self) -> float: ...

    def live_instances(self) -> int: ...

    def refresh_gauges(self) -> None: ...


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


class OpsServer:
    def __init__(self, daemon: DaemonView) -> None:
        self.daemon = daemon
        self._listener = Listener()
        self.port = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/openapi.json", self.openapi)
        if self.daemon.settings.admin_token:
            app.router.add_get("/campaigns/{id}", self.campaign)
            app.router.add_post("/campaigns/{id}/{action}", self.campaign_action)
        return app

    async def start(self) -> int:
        s = self.daemon.settings
        self.port = await self._listener.start(self.app(), s.http_host, s.http_port)
        return self.port

    async def stop(self) -> None:
        await self._listener.stop()

    # -- health -------------------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        """The event loop answers (we are here), the database loop has ticked recently, and every
        supervised task is running."""
        alive, body = self.daemon.health()
        return web.json_response(body, status=200 if alive else 503)

    async def readyz(self, request: web.Request) -> web.Response:
        reasons: list[dict[str, Any]] = []
        database = self.daemon.db_health.readiness()
        if database is not None:
            reasons.append(database)
        elif not self.daemon.ready.is_set():
            reasons.append({"check": "startup", "code": "Starting", "reason": "connected; first tick not done yet"})
        gate = self.daemon.gate
        if not gate.is_open:
            reasons.append({"check": "sending", "code": gate.code, "kind": str(gate.kind) if gate.kind else None,
                            "reason": gate.reason, "since": gate.since})
        deliverability = self.daemon.deliverability  # guard pauses, as details
        details = deliverability.readiness() if deliverability is not None else {}
        if reasons:
            return web.json_response({"ready": False, "reasons": reasons, **details}, status=503)
        return web.json_response({"ready": True, "instances": self.daemon.live_instances(),
                                  "rate_limit": round(self.daemon.current_rate(), 3), **details})

    async def metrics(self, request: web.Request) -> web.Response:
        self.daemon.refresh_gauges()
        return web.Response(body=self.daemon.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def openapi(self, request: web.Request) -> web.Response:
        """The OpenAPI 3.1 description of this listener (sender/openapi.json, fuzzed by the tests)."""
        return web.Response(body=openapi_document(), content_type="application/json")

    # -- admin ------------------------------------------------------------------------------------

    def _authorised(self, request: web.Request) -> web.Response | None:
        token = self.daemon.settings.admin_token or ""
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return web.json_response({"error": "missing bearer token"}, status=401,
                                     headers={"WWW-Authenticate": 'Bearer realm="sender"'})
        if not hmac.compare_digest(header.removeprefix("Bearer ").encode(), token.encode()):
            return _error(403, "invalid token")
        return None

    @staticmethod
    def _campaign_id(request: web.Request) -> int | web.Response:
        raw = request.match_info["id"]
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:  # isdigit() alone passes '²', then int() fails
            return _error(400, "campaign id must be a positive whole number")
        return int(raw)

    def _admin_campaign(self, request: web.Request) -> int | web.Response:
        """The campaign id of an authorised admin request, or the error response to send."""
        denied = self._authorised(request)
        if denied:
            return denied
        return self._campaign_id(request)

    async def campaign(self, request: web.Request) -> web.Response:
        cid = self._admin_campaign(request)
        if isinstance(cid, web.Response):
            return cid
        try:
            pool = self.daemon.pool
            row = await pool.fetchrow(QUERIES["campaign_summary"], cid, timeout=10)
            by_status = {r["status"]: r["n"] for r in await pool.fetch(
                QUERIES["campaign_recipients_by_status"], cid, timeout=10)} if row else {}
        except DB_ERRORS:
            return _error(503, "database unreachable")
        if row is None:
            return _error(404, f"campaign {cid} does not exist")
        progress = asdict(progress_from(row))
        progress["recipients_by_status"] = by_status
        try:  # deliverability (issue 11): delivered, bounced, complained, unsubscribed, rates
            progress.update((await deliverability_by_campaign(pool, [cid])).get(cid, {}))
        except DB_ERRORS:
            return _error(503, "database unreachable")
        return web.json_response(progress)

    async def campaign_action(self, request: web.Request) -> web.Response:
        cid = self._admin_campaign(request)
        if isinstance(cid, web.Response):
            return cid
        action = request.match_info["action"]
        if action not in ACTIONS:
            return _error(404, f"unknown action {action!r} (send, pause, resume, cancel)")
        rate: float | None = None
        if "rate_per_sec" in request.query:
            if action != "send":
                return _error(400, "rate_per_sec applies to send only")
            try:
                rate = float(request.query["rate_per_sec"])
            except ValueError:
                return _error(400, "rate_per_sec must be a number")
            if not (0 < rate < 1e6):
                return _error(400, "rate_per_sec must be a positive number")
        try:
            status = await apply_action(self.daemon.pool, cid, action, rate)
        except TransitionRefused as exc:
            if exc.current is None:
                return _error(404, str(exc))
            return _error(409, str(exc), current_status=exc.current)
        except DB_ERRORS:
            return _error(503, "database unreachable")
        return web.json_response({"id": cid, "status": status})


@cache
def openapi_document() -> bytes:
    return files("sender").joinpath("openapi.json").read_bytes()
