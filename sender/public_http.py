"""The internet-facing listener: one-click unsubscribe (RFC 8058) and the SNS endpoint for SES events.

Kept apart from the ops listener (health, metrics, admin), which stays on loopback. A GET never
changes state (mail scanners prefetch links); every bad token gets the same neutral 400 page.
"""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable

import asyncpg
from aiohttp import web

from sender.config import ConfigError, Settings
from sender.db import DB_ERRORS, QUERIES
from sender.listening import Listener
from sender.logs import get_logger, mask_email
from sender.suppression import suppression_key
from sender.tokens import verify_unsubscribe_token

log = get_logger("sender.public_http")

UNSUBSCRIBE_MAX_BODY = 4096  # an RFC 8058 body is 26 bytes; a form adds little
EVENTS_MAX_BODY = 300 * 1024  # SNS messages are at most 256 KB, plus the envelope

EventsHandler = Callable[[web.Request], Awaitable[web.Response]]

_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                               "frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex, nofollow",
    "X-Content-Type-Options": "nosniff",
}

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;color:#222}}
button{{font-size:1rem;padding:.6rem 1.2rem}}</style></head>
<body><h1>{title}</h1>{body}</body></html>
"""


def page(status: int, title: str, body: str) -> web.Response:
    return web.Response(status=status, text=_PAGE.format(title=html.escape(title), body=body),
                        content_type="text/html", charset="utf-8", headers=_HEADERS)


def neutral_page() -> web.Response:
    """The one answer for every token that is not genuine: same status, same words, same size."""
    return page(400, "Link not valid", "<p>This unsubscribe link is not valid. If you keep receiving mail you "
                                       "did not ask for, reply to it and ask to be removed.</p>")


class PublicServer:
    """The public aiohttp listener on SENDER_PUBLIC_HTTP_HOST:SENDER_PUBLIC_HTTP_PORT."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool, *, events: EventsHandler | None = None,
                 on_unsubscribe: Callable[[int], None] | None = None) -> None:
        self.settings = settings
        self.pool = pool
        self._events = events
        self._on_unsubscribe = on_unsubscribe
        self._listener = Listener()
        self.port = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=EVENTS_MAX_BODY)
        app.router.add_get("/u/{token}", self.unsubscribe_page)
        app.router.add_post("/u/{token}", self.unsubscribe)
        app.router.add_get("/healthz", self.healthz)
        if self._events is not None:
            app.router.add_post("/ses/events", self._events)
        return app

    async def start(self) -> int:
        s = self.settings
        try:
            self.port = await self._listener.start(self.app(), s.public_http_host, s.public_http_port or 0)
        except OSError as exc:
            raise ConfigError(f"SENDER_PUBLIC_HTTP_PORT: cannot listen on {s.public_http_host}:"
                              f"{s.public_http_port} ({exc.strerror or exc})") from None
        return self.port

    async def stop(self) -> None:
        await self._listener.stop()

    async def healthz(self, request: web.Request) -> web.Response:
        """For load balancers and `sender doctor`: the public listener answers."""
        return web.json_response({"status": "ok"})

    def _token(self, request: web.Request) -> tuple[int, int] | None:
        secret = self.settings.unsubscribe_secret
        if not secret:
            return None
        return verify_unsubscribe_token(secret, request.match_info["token"])

    async def unsubscribe_page(self, request: web.Request) -> web.Response:
        """The confirmation page with one button. Reads only: scanners prefetch links."""
        ids = self._token(request)
        if ids is None:
            return neutral_page()
        try:
            row = await self.pool.fetchrow(QUERIES["unsubscribe_lookup"], *ids, timeout=10)
        except DB_ERRORS:
            return page(503, "Try again shortly", "<p>We could not load this page. Please try again in a minute.</p>")
        if row is None:
            return neutral_page()
        who = html.escape(mask_email(row["email"]))
        what = html.escape(row["campaign_name"] or "these emails")
        form = ('<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click">'
                '<button type="submit" id="unsubscribe">Unsubscribe</button></form>')
        return page(200, "Unsubscribe", f"<p>Unsubscribe <b>{who}</b> from <b>{what}</b>?</p>{form}")

    async def unsubscribe(self, request: web.Request) -> web.Response:
        """RFC 8058 one-click POST (or the page's form): unsubscribe, record, suppress. Idempotent."""
        length = request.content_length
        if length is not None and length > UNSUBSCRIBE_MAX_BODY:
            return page(413, "Bad request", "<p>Request body too large.</p>")
        ids = self._token(request)
        if ids is None:
            return neutral_page()
        try:  # a chunked body (no Content-Length) is capped as it is read
            form = await request.clone(client_max_size=UNSUBSCRIBE_MAX_BODY).post()
        except web.HTTPRequestEntityTooLarge:
            return page(413, "Bad request", "<p>Request body too large.</p>")
        except ValueError:
            return page(400, "Bad request", "<p>Malformed form body.</p>")
        if form.get("List-Unsubscribe") != "One-Click":
            return page(400, "Bad request", "<p>Expected the form field List-Unsubscribe=One-Click.</p>")
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                row = await conn.fetchrow(QUERIES["unsubscribe_lookup"], *ids, timeout=10)
                if row is None:
                    return neutral_page()
                result = await conn.fetchrow(QUERIES["unsubscribe_apply"], *ids, suppression_key(row["email"]),
                                             timeout=10)
        except DB_ERRORS as exc:
            log.warning("unsubscribe_failed", campaign_id=ids[0], recipient_id=ids[1], error=type(exc).__name__)
            return page(503, "Try again shortly", "<p>We could not record this right now. Please try again.</p>")
        if result["newly"]:
            log.info("unsubscribed", campaign_id=ids[0], recipient_id=ids[1])
            if self._on_unsubscribe is not None:
                self._on_unsubscribe(ids[0])
        return page(200, "Unsubscribed", f"<p id=\"done\">{html.escape(mask_email(row['email']))} will receive no "
                                         "more of these emails.</p>")
