"""What the database loop last saw, in the server's own words with secrets redacted, and for how
long it has failed without a break: read by /readyz, /healthz, the systemd watchdog and the logs."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from sender.redact import redact


@dataclass(frozen=True)
class DatabaseProblem:
    code: str  # the exception class (TooManyConnectionsError, ConnectionRefusedError, …)
    reason: str  # the server's message (or the socket's), one line, secrets redacted
    sqlstate: str | None = None


def describe(exc: BaseException, *dsns: str | None) -> DatabaseProblem:
    """One line an operator can act on: "remaining connection slots are reserved …", not a class name."""
    sqlstate = getattr(exc, "sqlstate", None) if isinstance(exc, asyncpg.PostgresError) else None
    if isinstance(exc, TimeoutError):
        message = "timed out talking to the database"
    else:
        message = str(exc).strip() or type(exc).__name__
        detail = getattr(exc, "detail", None)
        if isinstance(exc, asyncpg.PostgresError) and detail:
            message = f"{message} ({detail})"
    one_line = " ".join(message.split())
    return DatabaseProblem(type(exc).__name__, redact(one_line, *dsns)[:500], sqlstate)


class DatabaseHealth:
    """The database loop's state: ok, or failing since when and why.

    Unhealthy (so /healthz 503 and no systemd WATCHDOG=1) once it has failed continuously for
    `unhealthy_after` seconds, counted from start-up when it never connected: an instance that
    holds a slot but cannot work is restarted rather than left idle.
    """

    def __init__(self, unhealthy_after: float, *dsns: str | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.unhealthy_after = unhealthy_after
        self._dsns = dsns
        self._clock = clock
        self.ok = False
        self.problem: DatabaseProblem | None = None
        self._failing_since: float | None = clock()  # not connected yet counts as not working
        self._failing_since_wall: datetime | None = None

    def succeeded(self) -> None:
        self.ok = True
        self.problem = None
        self._failing_since = None
        self._failing_since_wall = None

    def failed(self, exc: BaseException) -> DatabaseProblem:
        self.ok = False
        self.problem = describe(exc, *self._dsns)
        if self._failing_since is None:
            self._failing_since = self._clock()
        if self._failing_since_wall is None:
            self._failing_since_wall = datetime.now(UTC)
        return self.problem

    def failing_for(self) -> float:
        return 0.0 if self._failing_since is None else self._clock() - self._failing_since

    def unhealthy(self) -> bool:
        return not self.ok and self.failing_for() > self.unhealthy_after

    def readiness(self) -> dict[str, Any] | None:
        """The /readyz reason while the database is not usable, None when it is."""
        if self.ok:
            return None
        if self.problem is None:
            return {"check": "database", "code": "Connecting", "reason": "connecting to the database"}
        return {"check": "database", "code": self.problem.code, "sqlstate": self.problem.sqlstate,
                "reason": self.problem.reason, "failing_seconds": round(self.failing_for(), 1),
                "since": self._failing_since_wall.isoformat() if self._failing_since_wall else None}
