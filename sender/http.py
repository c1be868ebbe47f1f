"""The ops listener: /healthz, /readyz, /metrics, and the bearer-token admin API (SPEC §6)."""

from __future__ import annotations

import hmac
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from sender.admin_cli import progress_from
from sender.campaigns import set_status
from sender.db import QUERIES
from sender.guard import deliverability_by_campaign
from sender.pipeline import DB_ERRORS

if TYPE_CHECKING:
    from sender.daemon import Daemon

ACTIONS = {"send": "send", "pause": "paused", "resume": "resume", "cancel": "cancelled"}


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


class OpsServer:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self._runner: web.AppRunner | None = None
        self.port = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
        if self.daemon.settings.admin_token:
            app.router.add_get("/campaigns/{id}", self.campaign)
            app.router.add_post("/campaigns/{id}/{action}", self.campaign_action)
        return app

    async def start(self) -> int:
        s = self.daemon.settings
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, s.http_host, s.http_port)
        await site.start()
        server: Any = site._server
        self.port = server.sockets[0].getsockname()[1] if server is not None else s.http_port
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- health -------------------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        """The event loop answers (we are here) and the database loop has ticked recently."""
        age = time.monotonic() - self.daemon.last_tick if self.daemon.last_tick else None
        limit = max(15.0, self.daemon.settings.poll_interval * 10)
        alive = age is not None and age < limit and self.daemon.tick_running()
        body = {"status": "ok" if alive else "stalled",
                "last_tick_seconds_ago": None if age is None else round(age, 2)}
        return web.json_response(body, status=200 if alive else 503)

    async def readyz(self, request: web.Request) -> web.Response:
        reasons: list[dict[str, Any]] = []
        if not self.daemon.db_ok:
            reasons.append({"check": "database", "reason": "database unreachable"})
        gate = self.daemon.gate
        if not gate.is_open:
            reasons.append({"check": "sending", "code": gate.code, "kind": str(gate.kind) if gate.kind else None,
                            "reason": gate.reason, "since": gate.since})
        deliverability = getattr(self.daemon, "deliverability", None)  # issue 11: guard pauses, as details
        details = deliverability.readiness() if deliverability is not None else {}
        if reasons:
            return web.json_response({"ready": False, "reasons": reasons, **details}, status=503)
        return web.json_response({"ready": True, "instances": self.daemon.instances,
                                  "rate_limit": round(self.daemon.current_rate(), 3), **details})

    async def metrics(self, request: web.Request) -> web.Response:
        self.daemon.refresh_gauges()
        return web.Response(body=self.daemon.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

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
        if not raw.isdigit() or len(raw) > 18:
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
        pool = self.daemon.pool
        try:
            row = await pool.fetchrow(QUERIES["campaign_summary"], cid, timeout=10)
            by_status = {r["status"]: r["n"] for r in await pool.fetch(
                "SELECT status, count(*) AS n FROM campaign_recipients WHERE campaign_id = $1 GROUP BY status",
                cid, timeout=10)} if row else {}
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
        pool = self.daemon.pool
        try:
            status = await set_status(pool, cid, ACTIONS[action], rate)
            current = None if status else await pool.fetchval("SELECT status FROM campaigns WHERE id = $1", cid)
        except DB_ERRORS:
            return _error(503, "database unreachable")
        if status is None and current is None:
            return _error(404, f"campaign {cid} does not exist")
        if status is None:
            return _error(409, f"campaign {cid} is {current}: cannot {action} it", current_status=current)
        return web.json_response({"id": cid, "status": status})
