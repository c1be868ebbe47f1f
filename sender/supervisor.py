"""Supervision of the daemon's long-lived tasks: a task that dies is noticed at once, never at shutdown.

A crashed task is logged with its traceback, counted, and restarted after a short backoff; while
it is down /healthz answers 503. A task that keeps crashing (more than `max_restarts` within
`window` seconds) is given up on: the supervisor sets `fatal`, and the daemon stops and exits
non-zero so that systemd or the container runtime restarts the whole process.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

from sender.backoff import Backoff
from sender.logs import get_logger
from sender.metrics import Metrics

log = get_logger("sender.supervisor")

TaskFactory = Callable[[], Coroutine[Any, Any, None]]


class Supervisor:
    def __init__(self, metrics: Metrics, stop: asyncio.Event, *, max_restarts: int = 5, window: float = 60.0) -> None:
        self._metrics = metrics
        self._stop = stop
        self._max_restarts = max_restarts
        self._window = window
        self._watchers: list[asyncio.Task[None]] = []
        self.down: set[str] = set()
        self.fatal: str | None = None

    @property
    def healthy(self) -> bool:
        return not self.down and self.fatal is None

    def start(self, name: str, factory: TaskFactory) -> None:
        """Run `factory()` until the daemon stops; restart it whenever it ends unexpectedly."""
        self._metrics.task_restarts.labels(task=name)  # the series exists (at 0) before any crash
        self._watchers.append(asyncio.create_task(self._watch(name, factory), name=f"supervise-{name}"))

    async def _watch(self, name: str, factory: TaskFactory) -> None:
        crashes: deque[float] = deque()
        backoff = Backoff(initial=0.1, cap=2.0)
        while not self._stop.is_set():
            task = asyncio.create_task(factory(), name=name)
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                raise
            except Exception as exc:
                log.error("task_crashed", task=name, error=f"{type(exc).__name__}: {exc}"[:300], exc_info=exc)
            else:
                return  # finished its work (e.g. the systemd loop without systemd)
            self._metrics.task_restarts.labels(task=name).inc()
            self.down.add(name)
            now = time.monotonic()
            crashes.append(now)
            while crashes and now - crashes[0] > self._window:
                crashes.popleft()
            if len(crashes) > self._max_restarts:
                self.fatal = f"task {name} crashed {len(crashes)} times in {self._window:g} s"
                log.critical("task_given_up", task=name, reason=self.fatal)
                self._stop.set()
                return
            await backoff.wait(self._stop)
            self.down.discard(name)

    async def close(self) -> None:
        for watcher in self._watchers:
            watcher.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        self._watchers.clear()
