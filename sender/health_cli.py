"""`sender health`: ask this instance's own /healthz, for container HEALTHCHECKs and exec probes.

Synchronous and light on imports: a HEALTHCHECK runs it every few seconds.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from sender.config import Settings

# a listener on every address is asked on loopback
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1", "[::]": "::1"}  # noqa: S104


def health_url(settings: Settings) -> str:
    """The /healthz URL of the listener `sender run` opens with these settings."""
    host = _WILDCARDS.get(settings.http_host, settings.http_host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{settings.http_port}/healthz"


def check_health(settings: Settings, *, timeout: float = 3.0) -> tuple[int, str]:
    """(exit code, one line): 0 when /healthz answers 200, 1 otherwise."""
    if settings.http_port == 0:
        return 1, "unhealthy: SENDER_HTTP_PORT is 0 (a random port): nothing to probe"
    url = health_url(settings)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via an HTTP proxy
    try:
        with opener.open(url, timeout=timeout) as resp:
            return 0, f"healthy: {url} answered {resp.status}"
    except urllib.error.HTTPError as exc:
        return 1, f"unhealthy: {url} answered {exc.code} {_reason(exc.read())}".rstrip()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return 1, f"unhealthy: nothing answers at {url} ({reason})"


def _reason(body: bytes) -> str:
    try:
        return str(json.loads(body).get("status", ""))
    except (ValueError, AttributeError):
        return ""
