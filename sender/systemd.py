"""sd_notify over NOTIFY_SOCKET (READY, WATCHDOG, STOPPING, STATUS) without a libsystemd dependency."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable, Mapping


class SystemdNotifier:
    """Datagrams to the socket systemd named; a no-op when not run by systemd with Type=notify."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        watchdog_pid = env.get("WATCHDOG_PID")
        usec = env.get("WATCHDOG_USEC", "")
        mine = watchdog_pid is None or watchdog_pid == str(os.getpid())
        self.watchdog_interval = int(usec) / 2_000_000 if usec.isdigit() and mine and int(usec) > 0 else None

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def notify(self, *fields: str) -> bool:
        if not self._address:
            return False
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(self._address)
            sock.sendall("\n".join(fields).encode())
            return True
        return False

    async def watch(self, ready: asyncio.Event, healthy: Callable[[], bool], stop: asyncio.Event, status: str) -> None:
        """READY=1 after the first good tick; then WATCHDOG=1 every half WatchdogSec, only while healthy,
        so systemd restarts an instance that is alive but not working."""
        if not self.enabled:
            return
        await ready.wait()
        self.notify("READY=1", f"STATUS={status}")
        interval = self.watchdog_interval
        while interval and not stop.is_set():
            if healthy():
                self.notify("WATCHDOG=1")
            await asyncio.sleep(interval)
