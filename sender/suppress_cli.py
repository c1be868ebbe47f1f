"""`sender suppress list|add|remove|import FILE|export`: the suppression list from the shell."""

from __future__ import annotations

import argparse
import csv
import sys
from typing import Any, TextIO

from sender.addresses import AddressError
from sender.config import Settings
from sender.db import QUERIES, connect
from sender.logs import mask_email
from sender.suppression import REASONS, Suppression, checked_key, iterate, parse_import_line, suppress, unsuppress

EXPORT_COLUMNS = ("email", "reason", "source", "detail", "campaign_id", "first_seen", "last_seen")


def add_parser(sub: Any) -> None:
    """The `suppress` sub-command and its actions, for cli.py."""
    p = sub.add_parser("suppress", help="list, add, remove, import or export suppressed addresses")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="counts by reason, and the addresses (masked) with --show")
    listing.add_argument("--reason", choices=REASONS)
    listing.add_argument("--show", type=int, default=0, metavar="N", help="also list the first N entries")
    add = actions.add_parser("add", help="suppress addresses")
    add.add_argument("addresses", nargs="+")
    add.add_argument("--reason", choices=REASONS, default="manual")
    add.add_argument("--note", help="stored as the detail")
    remove = actions.add_parser("remove", help="stop suppressing addresses")
    remove.add_argument("addresses", nargs="+")
    imp = actions.add_parser("import", help="suppress every address in a file (one per line, or CSV first column)")
    imp.add_argument("file")
    imp.add_argument("--reason", choices=REASONS, default="manual")
    exp = actions.add_parser("export", help="CSV of the whole list to stdout (full addresses)")
    exp.add_argument("--reason", choices=REASONS)


async def suppress_command(settings: Settings, args: argparse.Namespace, out: TextIO = sys.stdout,
                           err: TextIO = sys.stderr) -> int:
    conn = await connect(settings.require_database())
    try:
        if args.action == "list":
            counts = await conn.fetch(QUERIES["suppress_count"])
            total = sum(r["n"] for r in counts)
            print(f"{total} suppressed address(es)" + "".join(f"; {r['reason']} {r['n']}" for r in counts), file=out)
            shown = 0
            async for row in iterate(conn, reason=args.reason, page=max(1, min(args.show, 5000))):
                if shown >= args.show:
                    break
                print(f"{mask_email(row['email'])}  {row['reason']}  {row['source']}  "
                      f"last seen {row['last_seen']:%Y-%m-%d %H:%M}", file=out)
                shown += 1
            return 0
        if args.action in ("add", "import"):
            try:
                keys = _keys_from_args(args) if args.action == "add" else _keys_from_file(args.file)
            except (AddressError, OSError) as exc:
                print(f"sender suppress {args.action}: {exc}; nothing was changed", file=err)
                return 1
            new = 0
            for start in range(0, len(keys), 5000):
                chunk = keys[start:start + 5000]
                new += await suppress(conn, [Suppression(k, args.reason, "cli", getattr(args, "note", None))
                                             for k in chunk])
            print(f"suppressed {len(keys)} address(es), {new} new", file=out)
            return 0
        if args.action == "remove":
            removed = await unsuppress(conn, args.addresses)
            print(f"removed {len(removed)} of {len(args.addresses)} address(es)", file=out)
            return 0 if removed else 1
        if args.action == "export":
            writer = csv.writer(out)
            writer.writerow(EXPORT_COLUMNS)
            async for row in iterate(conn, reason=args.reason):
                writer.writerow([row[c].isoformat() if c in ("first_seen", "last_seen") else row[c]
                                 for c in EXPORT_COLUMNS])
            return 0
    finally:
        await conn.close()
    return 2


def _keys_from_args(args: argparse.Namespace) -> list[str]:
    keys = []
    for n, address in enumerate(args.addresses, 1):
        try:
            keys.append(checked_key(address))
        except AddressError as exc:
            raise AddressError(f"argument {n}: {exc}") from None
    return keys


def _keys_from_file(path: str) -> list[str]:
    """Every address in the file, or AddressError naming the first bad line (all or nothing)."""
    keys: list[str] = []
    with open(path, encoding="utf-8", errors="strict") as fh:
        try:
            for lineno, line in enumerate(fh, 1):
                key = parse_import_line(line, lineno)
                if key is not None:
                    keys.append(key)
        except UnicodeDecodeError:
            raise AddressError("the file is not UTF-8 text") from None
    return keys
