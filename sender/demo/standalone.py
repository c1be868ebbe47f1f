"""A fake run on its own (`python -m sender.demo.fakeses`, `python -m sender.demo.fakesqs`): one JSON
line saying where it listens, then serve until interrupted."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any


def serve_until_interrupted(start: Callable[[], Awaitable[dict[str, Any]]]) -> int:
    """Run `start` (which starts the fake and says where it is) on uvloop when installed, then wait."""

    async def serve() -> None:
        print(json.dumps(await start()), flush=True)
        await asyncio.Event().wait()

    run: Callable[[Any], Any]
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    with contextlib.suppress(KeyboardInterrupt):
        run(serve())
    return 0
