"""Every log line is one JSON object, whoever logs it: stdlib loggers (asyncpg, asyncio) included."""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Iterator

import asyncpg
import pytest

from sender.logs import configure_logging, get_logger


@pytest.fixture
def json_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("json", "DEBUG", stream=stream)
    yield stream
    configure_logging("console", "INFO")


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_stdlib_traceback_is_one_json_line_with_addresses_masked(json_stream: io.StringIO) -> None:
    try:
        raise ValueError("cannot deliver to ann.lee@example.org\nsecond line")
    except ValueError:
        logging.getLogger("asyncpg.pool").exception("connection to %s failed", "bob.stone@example.net")
    records = _lines(json_stream)
    assert len(records) == 1
    record = records[0]
    assert record["event"] == "connection to b***@example.net failed"
    assert (record["level"], record["logger"]) == ("error", "asyncpg.pool")
    assert "Traceback" in str(record["exception"]) and "ValueError" in str(record["exception"])
    assert "ann.lee@" not in json_stream.getvalue() and "bob.stone@" not in json_stream.getvalue()


async def test_real_asyncpg_error_logged_from_stdlib_is_json(json_stream: io.StringIO) -> None:
    """A real failing connection, logged the way libraries do (logger.exception), stays one JSON line."""
    with pytest.raises(OSError) as err:
        await asyncpg.connect("postgresql://u@127.0.0.1:1/db", timeout=5)
    logging.getLogger("asyncpg").error("connect failed", exc_info=err.value)
    records = [r for r in _lines(json_stream) if r["logger"] == "asyncpg"]  # every line parses as JSON
    assert len(records) == 1 and "ConnectionRefusedError" in str(records[0]["exception"])


def test_warnings_and_structlog_events_share_the_stream() -> None:
    stream = io.StringIO()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        configure_logging("json", "INFO", stream=stream)  # inside: pytest swaps the warning hook per test
        try:
            get_logger("sender.test").info("campaign_started", campaign_id=3, to="cara@example.com")
            warnings.warn("deprecated thing", DeprecationWarning, stacklevel=1)
        finally:
            configure_logging("console", "INFO")
    records = _lines(stream)
    assert [r.get("campaign_id") for r in records][:1] == [3]
    assert records[0]["to"] == "c***@example.com"
    assert any("deprecated thing" in str(r["event"]) for r in records[1:])


def test_reconfiguring_does_not_duplicate_lines() -> None:
    stream = io.StringIO()
    try:
        configure_logging("json", "INFO", stream=stream)
        configure_logging("json", "INFO", stream=stream)
        logging.getLogger("aiohttp.access").info("GET /healthz")
    finally:
        configure_logging("console", "INFO")
    assert len(stream.getvalue().splitlines()) == 1


def test_chatty_libraries_stay_quiet_at_debug(json_stream: io.StringIO) -> None:
    logging.getLogger("botocore.endpoint").debug("Sending http request: body with content")
    logging.getLogger("asyncio").debug("selector chosen")
    assert "body with content" not in json_stream.getvalue()
    assert "selector chosen" in json_stream.getvalue()
