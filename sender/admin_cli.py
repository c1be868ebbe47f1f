"""`sender campaign …` and `sender send-test`: operations straight on the database and SES."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, TextIO

import asyncpg

from sender.campaigns import CampaignProblem, load_plan, set_status
from sender.config import ConfigError, Settings
from sender.db import QUERIES, connect
from sender.guard import deliverability_by_campaign, format_deliverability
from sender.logs import mask_email
from sender.render import Contact

ACTIONS = {"send": "send", "pause": "paused", "resume": "resume", "cancel": "cancelled"}


@dataclass
class Progress:
    id: int
    name: str
    status: str
    total: int
    sent: int
    failed: int
    skipped: int
    in_flight: int
    pending: int
    rate: float
    eta_seconds: float | None
    error: str | None

    @property
    def done(self) -> int:
        return self.sent + self.failed + self.skipped


def progress_from(row: asyncpg.Record | dict[str, Any]) -> Progress:
    """Counts, achieved rate (between first and last send) and ETA at that rate."""
    first, last = row["first_sent_at"], row["last_sent_at"]
    span = (last - first).total_seconds() if first and last else 0.0
    rate = (row["sent_count"] - 1) / span if span > 0 else 0.0
    done = row["sent_count"] + row["failed_count"] + row["skipped_count"]
    pending = max(0, row["total_count"] - done - row["in_flight"])
    eta = (pending + row["in_flight"]) / rate if rate > 0 and row["status"] == "sending" else None
    return Progress(
        id=row["id"], name=row["name"], status=row["status"], total=row["total_count"],
        sent=row["sent_count"], failed=row["failed_count"], skipped=row["skipped_count"],
        in_flight=row["in_flight"], pending=pending, rate=round(rate, 2),
        eta_seconds=None if eta is None else round(eta, 1), error=row["error"],
    )


def format_progress(p: Progress, width: int = 30) -> str:
    filled = int(width * p.done / p.total) if p.total else (width if p.status == "sent" else 0)
    eta = f" eta {p.eta_seconds:.0f}s" if p.eta_seconds is not None else ""
    line = (f"#{p.id} {p.name[:30]:<30} {p.status:<9} [{'#' * filled}{'-' * (width - filled)}] "
            f"{p.done}/{p.total} sent={p.sent} failed={p.failed} skipped={p.skipped} "
            f"in_flight={p.in_flight} {p.rate:.1f}/s{eta}")
    return line + (f"\n    error: {p.error}" if p.error else "")


async def _open(settings: Settings) -> asyncpg.Connection:
    if not settings.database_url:
        raise ConfigError("DATABASE_URL is not set: point it at the PostgreSQL database")
    return await connect(settings.database_url)


async def campaign_command(settings: Settings, args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    conn = await _open(settings)
    try:
        if args.action == "status":
            return await _status(conn, args, out)
        rate = getattr(args, "rate", None)
        if rate is not None and rate <= 0:
            print("sender: --rate must be a positive number", file=sys.stderr)
            return 2
        new_status = await set_status(conn, args.id, ACTIONS[args.action], rate)
        if new_status is None:
            current = await conn.fetchval("SELECT status FROM campaigns WHERE id = $1", args.id)
            if current is None:
                print(f"sender: campaign {args.id} does not exist", file=sys.stderr)
            else:
                print(f"sender: campaign {args.id} is {current}: cannot {args.action} it", file=sys.stderr)
            return 1
        out.write(f"campaign {args.id}: {new_status}\n")
        return 0
    finally:
        await conn.close()


async def _status(conn: asyncpg.Connection, args: argparse.Namespace, out: TextIO) -> int:
    if args.id is None:
        ids = [r["id"] for r in await conn.fetch("SELECT id FROM campaigns ORDER BY id DESC LIMIT 20")]
    else:
        ids = [args.id]
    while True:
        rows = [await conn.fetchrow(QUERIES["campaign_summary"], cid) for cid in ids]
        if args.id is not None and rows[0] is None:
            print(f"sender: campaign {args.id} does not exist", file=sys.stderr)
            return 1
        progress = [progress_from(r) for r in rows if r is not None]
        events = await deliverability_by_campaign(conn, [p.id for p in progress])  # deliverability (issue 11)
        if args.json:
            out.write(json.dumps([{**asdict(p), **events.get(p.id, {})} for p in progress]) + "\n")
        else:
            stamp = datetime.now().strftime("%H:%M:%S")
            body = "\n".join(format_progress(p) + format_deliverability(events.get(p.id)) for p in progress)
            out.write(f"{body}\n({stamp})\n" if progress else "no campaigns\n")
        out.flush()
        active = any(p.status in ("queued", "sending") for p in progress)
        if not args.watch or not active:
            return 0
        await asyncio.sleep(1.0)


async def send_test(settings: Settings, args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """Render the campaign for ADDRESS (with its contact data when it is a contact) and send it."""
    from sender.addresses import AddressError, normalise_address
    from sender.render import TemplateProblem
    from sender.ses import classify, open_ses

    try:
        to = normalise_address(args.to)
    except AddressError as exc:
        print(f"sender: --to: {exc}", file=sys.stderr)
        return 2
    conn = await _open(settings)
    try:
        try:
            plan = await load_plan(conn, args.campaign, settings)
        except CampaignProblem as exc:
            print(f"sender: campaign {args.campaign}: {exc}", file=sys.stderr)
            return 1
        row = await conn.fetchrow(
            "SELECT first_name, last_name, country, attributes FROM contacts WHERE lower(email) = lower($1)", to)
    finally:
        await conn.close()
    contact = Contact(email=to, **dict(row)) if row else Contact(email=to)
    try:
        email = plan.compose(settings, contact, to=to, recipient_id=None, subject_prefix="[TEST] ")
    except TemplateProblem as exc:
        print(f"sender: campaign {plan.id} does not render for {mask_email(to)}: {exc}", file=sys.stderr)
        return 1
    async with open_ses(settings, pool_size=1) as ses:
        try:
            message_id = await ses.send(email)
        except Exception as exc:
            failure = classify(exc, from_email=plan.from_email, default_from=settings.from_email)
            print(f"sender: SES refused the test message ({failure.code}): {failure.message}", file=sys.stderr)
            return 1
    out.write(f"sent test of campaign {plan.id} to {mask_email(to)}: message id {message_id}\n")
    return 0
