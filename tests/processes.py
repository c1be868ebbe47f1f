"""The daemon and the CLI as real processes: environments and launchers shared by the end-to-end tests."""

from __future__ import annotations

import asyncio
import os
import sys

from sender.config import Settings


def daemon_env(settings: Settings, **extra: str) -> dict[str, str]:
    dropped = ("SENDER_", "DATABASE_URL", "SES_", "AWS_ENDPOINT")
    base = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    return base | {
        "DATABASE_URL": settings.database_url or "",
        "AWS_ENDPOINT_URL_SESV2": settings.endpoint_url or "",
        "SES_FROM_EMAIL": settings.from_email or "",
        "SENDER_POLL_INTERVAL": "0.1",
        "SENDER_FLUSH_INTERVAL": "0.05",
        "SENDER_LOG_FORMAT": "json",
        "SENDER_ENV_FILE": "/nonexistent",
        "SENDER_HTTP_PORT": "0",
    } | extra


async def start_daemon(settings: Settings, **extra: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sender", "run", env=daemon_env(settings, **extra),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def sender_cli(dsn: str, *args: str, **extra: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SENDER_", "DATABASE_URL"))} | {
        "DATABASE_URL": dsn, "SENDER_ENV_FILE": "/nonexistent"} | extra
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "sender", *args, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return int(proc.returncode or 0), out.decode(), err.decode()
