"""structlog set-up: JSON off a TTY, readable on one; addresses are masked before they are logged."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog


def mask_email(address: str | None) -> str:
    """`a***@example.com`: enough to recognise a domain problem, not enough to identify anyone."""
    if not address or "@" not in address:
        return "***"
    local, domain = address.rsplit("@", 1)
    return f"{local[:1]}***@{domain}"


def configure_logging(fmt: str | None = None, level: str = "INFO", stream: Any = None) -> None:
    stream = stream or sys.stderr
    if fmt is None:
        fmt = "console" if getattr(stream, "isatty", lambda: False)() else "json"
    renderer: Any = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper(), logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
