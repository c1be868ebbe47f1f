"""`sender campaign …` and `sender send-test`: operations straight on the database and SES."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict
from datetime import datetime
from typing import TextIO

import asyncpg

from sender.campaigns import CampaignProblem, TransitionRefused, apply_action, load_plan
from sender.config import Settings
from sender.db import QUERIES, connect
from sender.guard import deliverability_by_campaign, format_deliverability
from sender.logs import mask_email
from sender.progress import format_progress, progress_from
from sender.render import Contact

RECENT_CAMPAIGNS = 20


async def campaign_command(settings: Settings, args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    conn = await connect(settings.require_database())
    try:
        if args.action == "status":
            return await _status(conn, args, out)
        rate = getattr(args, "rate", None)
        if rate is not None and rate <= 0:
            print("sender: --rate must be a positive number", file=sys.stderr)
            return 2
        try:
            new_status = await apply_action(conn, args.id, args.action, rate)
        except TransitionRefused as exc:
            print(f"sender: {exc}", file=sys.stderr)
            return 1
        out.write(f"campaign {args.id}: {new_status}\n")
        return 0
    finally:
        await conn.close()


async def _status(conn: asyncpg.Connection, args: argparse.Namespace, out: TextIO) -> int:
    if args.id is None:
        ids = [r["id"] for r in await conn.fetch(QUERIES["recent_campaign_ids"], RECENT_CAMPAIGNS)]
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
    from sender.message import compose
    from sender.render import TemplateProblem
    from sender.ses import classify, open_ses

    try:
        to = normalise_address(args.to)
    except AddressError as exc:
        print(f"sender: --to: {exc}", file=sys.stderr)
        return 2
    conn = await connect(settings.require_database())
    try:
        try:
            plan = await load_plan(conn, args.campaign, settings)
        except CampaignProblem as exc:
            print(f"sender: campaign {args.campaign}: {exc}", file=sys.stderr)
            return 1
        row = await conn.fetchrow(QUERIES["contact_by_email"], to)
    finally:
        await conn.close()
    contact = Contact(email=to, **dict(row)) if row else Contact(email=to)
    try:
        email = compose(plan, settings, contact, to=to, recipient_id=None, subject_prefix="[TEST] ")
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
