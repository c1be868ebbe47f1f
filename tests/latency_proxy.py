"""A TCP proxy that adds latency to every chunk of a real PostgreSQL connection (a slow network)."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import parse_qs, urlsplit, urlunsplit


class LatencyProxy:
    """Listens on loopback and forwards to PostgreSQL's unix socket (or host:port) with a delay each way."""

    def __init__(self, dsn: str, delay: float) -> None:
        self.dsn = dsn
        self.delay = delay
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    def _target(self) -> tuple[str | None, str | None, int]:
        parts = urlsplit(self.dsn)
        host = parse_qs(parts.query).get("host", [parts.hostname or "127.0.0.1"])[0]
        port = parts.port or 5432
        if host.startswith("/"):
            return f"{host}/.s.PGSQL.{port}", None, port
        return None, host, port

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        parts = urlsplit(self.dsn)
        user = parts.username or "postgres"
        return urlunsplit(("postgresql", f"{user}@127.0.0.1:{port}", parts.path, "", ""))

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        path, host, port = self._target()
        if path is not None:
            up_reader, up_writer = await asyncio.open_unix_connection(path)
        else:
            up_reader, up_writer = await asyncio.open_connection(host, port)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                await asyncio.sleep(self.delay)
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                dst.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
