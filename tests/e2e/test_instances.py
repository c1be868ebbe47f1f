"""Two instances of config/sender@.service on one host, as real processes: each listens on its own
port, answers `sender health` there, and beats under its own name."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from contextlib import ExitStack

import aiohttp
import asyncpg

from sender.config import Settings
from sender.demo.fakeses import FakeSES
from tests.helpers import wait_for
from tests.processes import daemon_env
from tests.units import TEMPLATE, instance_environment


def two_free_ports() -> int:
    """A base such that base + 1 and base + 2 are free right now."""
    while True:
        with ExitStack() as stack:
            first = stack.enter_context(socket.socket())
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            second = stack.enter_context(socket.socket())
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port - 1


async def _healthy(port: int) -> bool:
    try:
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/healthz") as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


async def test_two_template_instances_listen_on_their_own_ports_under_their_own_names(
        db: asyncpg.Connection, settings: Settings, fake_ses: FakeSES) -> None:
    base = two_free_ports()
    envs = {}
    for n in (1, 2):
        env = daemon_env(settings) | instance_environment(TEMPLATE, instance=str(n))
        del env["SENDER_HTTP_PORT"]  # the template's way: SENDER_HTTP_PORT_BASE + the instance number
        envs[n] = env | {"SENDER_HTTP_PORT_BASE": str(base)}
    procs = [await asyncio.create_subprocess_exec(sys.executable, "-m", "sender", "run", env=envs[n],
                                                  stdout=asyncio.subprocess.DEVNULL,
                                                  stderr=asyncio.subprocess.PIPE) for n in (1, 2)]
    try:
        for n in (1, 2):
            await wait_for(lambda n=n: _healthy(base + n), timeout=60)  # type: ignore[misc]
            health = await asyncio.create_subprocess_exec(sys.executable, "-m", "sender", "health", env=envs[n],
                                                          stdout=asyncio.subprocess.PIPE)
            out, _ = await asyncio.wait_for(health.communicate(), 60)
            assert health.returncode == 0 and f":{base + n}/healthz" in out.decode(), out.decode()
        ids = await wait_for(lambda: _instance_ids(db), timeout=30)
        host = socket.gethostname()
        assert len(ids) == 2 and ids[0].startswith(f"{host}@1-") and ids[1].startswith(f"{host}@2-"), ids
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        results = [await asyncio.wait_for(proc.communicate(), 60) for proc in procs]
    for proc, (_, stderr) in zip(procs, results, strict=True):
        assert proc.returncode == 0, stderr.decode()[-2000:]


async def _instance_ids(db: asyncpg.Connection) -> list[str] | None:
    ids = sorted(r["id"] for r in await db.fetch("SELECT id FROM sender_instances"))
    return ids if len(ids) >= 2 else None
