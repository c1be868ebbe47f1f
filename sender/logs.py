"""structlog set-up: JSON off a TTY, readable on one; addresses are masked before they are logged."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_ADDRESS = re.compile(r"([A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]*@([A-Za-z0-9.\-]+\.[A-Za-z]{2,})")


def mask_email(address: str | None) -> str:
    """`a***@example.com`: enough to recognise a domain problem, not enough to identify anyone."""
    if not address or "@" not in address:
        return "***"
    local, domain = address.rsplit("@", 1)
    return f"{local[:1]}***@{domain}"


def scrub_addresses(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Last line of defence: any address in any logged string is masked, whoever logged it."""
    for key, value in event.items():
        if isinstance(value, str) and "@" in value:
            event[key] = _ADDRESS.sub(r"\1***@\2", value)
    return event


_HANDLER_MARK = "_sender_structlog_handler"
# Loggers that print request bodies (message content) at DEBUG: kept at INFO or above.
_CHATTY = ("botocore", "aiobotocore", "aioboto3", "urllib3")


def configure_logging(fmt: str | None = None, level: str = "INFO", stream: Any = None) -> None:
    """structlog for our own events, and the stdlib root logger (asyncpg, aiohttp, botocore, asyncio,
    warnings) routed through the same processors, so every line is one JSON object with addresses masked
    and tracebacks folded into an `exception` field."""
    stream = stream or sys.stderr
    if fmt is None:
        fmt = "console" if getattr(stream, "isatty", lambda: False)() else "json"
    renderer: Any = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    numeric_level = getattr(logging, level.upper(), logging.INFO)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, scrub_addresses, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    _route_stdlib_logging(stream, numeric_level, shared, renderer)


def _route_stdlib_logging(stream: Any, level: int, shared: list[Any], renderer: Any) -> None:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            scrub_addresses,
            renderer,
        ],
    ))
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in _CHATTY:
        logging.getLogger(name).setLevel(max(level, logging.INFO))
    logging.captureWarnings(False)  # re-install even if something replaced warnings.showwarning since
    logging.captureWarnings(True)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
