"""Named SQL from queries.sql, loaded once: code says QUERIES["claim_fresh"], never builds SQL."""

from __future__ import annotations

import re
from importlib.resources import files

_HEADER = re.compile(r"^-- ([a-z_]+) --$", re.MULTILINE)
_INCLUDE = re.compile(r"/\*@([a-z_]+)\*/")


def parse_queries(text: str) -> dict[str, str]:
    """Split a file of `-- name --` blocks into {name: sql}; `/*@name*/` includes another block."""
    parts = _HEADER.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = body.strip()

    def include(match: re.Match[str]) -> str:
        if match.group(1) not in queries:
            raise ValueError(f"query includes unknown block {match.group(1)!r}")
        return queries[match.group(1)]

    return {name: _INCLUDE.sub(include, sql) for name, sql in queries.items()}


QUERIES: dict[str, str] = parse_queries(files("sender.db").joinpath("queries.sql").read_text())
