"""`sender health`: the one-line probe of this instance's own /healthz (container HEALTHCHECK)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from sender.cli import main
from sender.config import Settings
from sender.health_cli import check_health, health_url
from tests.helpers import running_daemon, wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def health_command(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                         host: str, port: int) -> tuple[int, str]:
    """`sender health` as the HEALTHCHECK runs it: settings from the environment, one line out."""
    monkeypatch.setenv("SENDER_HTTP_HOST", host)
    monkeypatch.setenv("SENDER_HTTP_PORT", str(port))
    capsys.readouterr()
    code = await asyncio.to_thread(main, ["health"])  # blocking probe; the daemon keeps its loop
    # an in-process daemon may log to the same stdout meanwhile: keep the probe's own lines
    lines = [line for line in capsys.readouterr().out.splitlines(keepends=True)
             if line.startswith(("healthy:", "unhealthy:"))]
    return code, "".join(lines)


def test_health_url_asks_wildcard_listeners_on_loopback() -> None:
    assert health_url(Settings(http_host="0.0.0.0", http_port=8081)) == "http://127.0.0.1:8081/healthz"
    assert health_url(Settings(http_host="::", http_port=9)) == "http://[::1]:9/healthz"
    assert health_url(Settings(http_host="10.0.0.5", http_port=80)) == "http://10.0.0.5:80/healthz"
    assert health_url(Settings(http_host="fd00::1", http_port=80)) == "http://[fd00::1]:80/healthz"


async def test_health_is_0_against_a_running_daemon_on_a_non_default_port(
        settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    async with running_daemon(settings.with_overrides(http_host="0.0.0.0")) as daemon:
        port = await wait_for(lambda: asyncio.sleep(0, daemon.ops.port))
        probe = settings.with_overrides(http_host="0.0.0.0", http_port=port)
        await wait_for(lambda: asyncio.to_thread(lambda: check_health(probe)[0] == 0))
        code, out = await health_command(monkeypatch, capsys, "0.0.0.0", port)
    assert port != 8080
    assert (code, out) == (0, f"healthy: http://127.0.0.1:{port}/healthz answered 200\n")


async def test_health_is_1_when_nothing_listens(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    code, out = await health_command(monkeypatch, capsys, "127.0.0.1", port)
    assert code == 1
    assert out.startswith(f"unhealthy: nothing answers at http://127.0.0.1:{port}/healthz (")
    assert out.count("\n") == 1


@pytest.fixture
async def stalled_listener() -> AsyncIterator[int]:
    """A listener that answers /healthz the way a daemon whose database loop stalled does."""
    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "stalled"}, status=503)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield int(runner.addresses[0][1])
    await runner.cleanup()


async def test_health_is_1_when_healthz_answers_503(stalled_listener: int, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    code, out = await health_command(monkeypatch, capsys, "127.0.0.1", stalled_listener)
    assert (code, out) == (1, f"unhealthy: http://127.0.0.1:{stalled_listener}/healthz answered 503 stalled\n")


async def test_health_with_port_0_says_there_is_nothing_to_probe(monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code, out = await health_command(monkeypatch, capsys, "127.0.0.1", 0)
    assert (code, out) == (1, "unhealthy: SENDER_HTTP_PORT is 0 (a random port): nothing to probe\n")


async def test_health_with_a_bad_port_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SENDER_HTTP_PORT", "eighty")
    assert main(["health"]) == 2
    assert "SENDER_HTTP_PORT" in capsys.readouterr().err
