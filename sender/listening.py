"""An aiohttp application on host:port, for the ops and public listeners (and the demo's fakes) alike."""

from __future__ import annotations

from typing import Any

from aiohttp import web


class Listener:
    """Start an app, learn the port it got (port 0 picks a free one), stop it."""

    def __init__(self, *, shutdown_timeout: float = 1.0) -> None:
        self._runner: web.AppRunner | None = None
        self._shutdown_timeout = shutdown_timeout
        self.port = 0

    async def start(self, app: web.Application, host: str, port: int) -> int:
        """Listen; OSError (port taken, bad address) propagates after cleaning up."""
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                    shutdown_timeout=self._shutdown_timeout)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        try:
            await site.start()
        except OSError:
            await self.stop()
            raise
        server: Any = site._server
        self.port = server.sockets[0].getsockname()[1] if server is not None else port
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
