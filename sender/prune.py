"""`sender prune`: delete the recipient rows of campaigns that finished long ago, in short chunked
transactions that never wait on a row sending holds; campaign rows and their counters stay."""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TextIO

import asyncpg

from sender.cli_errors import bad_option
from sender.config import Settings
from sender.db import QUERIES, connect

_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]+)\s*$", re.IGNORECASE)
_UNITS = {
    "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
    "w": 604800, "week": 604800, "weeks": 604800,
}


class AgeError(ValueError):
    """A --finished-before value that is not an age; the message says what is expected."""


def parse_age(text: str) -> timedelta:
    """'30d', '12h', '90m', '2w', '45s' (or '30 days') as a timedelta."""
    match = _AGE.match(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise AgeError(f"expected an age such as 30d, 12h, 90m or 2w (units s, m, h, d, w), got {text!r}")
    seconds = float(match.group(1)) * _UNITS[unit]
    if seconds > 100 * 365 * 86400:
        raise AgeError(f"{text!r} is more than 100 years")
    return timedelta(seconds=seconds)


@dataclass
class Pruned:
    campaign_id: int
    name: str
    status: str
    finished_at: datetime
    rows: int


async def prune(conn: asyncpg.Connection, age: timedelta, *, dry_run: bool = False, chunk: int = 2000,
                out: TextIO | None = None) -> list[Pruned]:
    """Remove (or with dry_run, count) the recipient rows of campaigns finished before now - age."""
    cutoff = await conn.fetchval(QUERIES["prune_cutoff"], age)
    done: list[Pruned] = []
    for row in await conn.fetch(QUERIES["prune_candidates"], cutoff):
        item = Pruned(row["id"], row["name"], row["status"], row["finished_at"], 0)
        if dry_run:
            item.rows = row["recipients"]
        else:
            while True:  # each chunk its own short transaction (autocommit)
                removed = int(await conn.fetchval(QUERIES["prune_recipients_chunk"], item.campaign_id, cutoff, chunk))
                item.rows += removed
                if removed < chunk:
                    break
        if out is not None:
            verb = "would remove" if dry_run else "removed"
            out.write(f"campaign {item.campaign_id} ({item.status}, finished {item.finished_at:%Y-%m-%d %H:%M}): "
                      f"{verb} {item.rows} recipient rows\n")
        done.append(item)
    return done


async def prune_command(settings: Settings, args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    try:
        age = parse_age(args.finished_before)
    except AgeError as exc:
        return bad_option("--finished-before", exc)
    if args.chunk < 1:
        return bad_option("--chunk", "must be a positive whole number")
    conn = await connect(settings.require_database())
    try:
        done = await prune(conn, age, dry_run=args.dry_run, chunk=args.chunk, out=out)
    finally:
        await conn.close()
    total = sum(p.rows for p in done)
    verb = "would remove" if args.dry_run else "removed"
    out.write(f"{verb} {total} recipient rows of {len(done)} campaign(s) finished more than "
              f"{args.finished_before} ago; campaigns and their counters are kept\n")
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("prune", help="delete recipient rows of campaigns that finished before AGE")
    p.add_argument("--finished-before", required=True, metavar="AGE",
                   help="e.g. 90d, 12h, 2w: campaigns that finished longer ago than this")
    p.add_argument("--dry-run", action="store_true", help="only count what would be removed")
    p.add_argument("--chunk", type=int, default=2000, help="rows per transaction (default 2000)")
