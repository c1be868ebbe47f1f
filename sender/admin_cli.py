"""`sender campaign …` and `sender send-test`: operations straight on the database and SES."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict
from datetime import datetime
from typing import Any, TextIO

import asyncpg

from sender.campaigns import CampaignProblem, TransitionRefused, apply_action, load_plan
from sender.cli_errors import bad_option
from sender.config import Settings
from sender.db import QUERIES, connect
from sender.guard import deliverability_by_campaign, format_deliverability
from sender.logs import mask_email
from sender.progress import Progress, format_progress, progress_from
from sender.render import Contact

RECENT_FINISHED = 5  # finished campaigns it lists after them
ACTIVE = ("sending", "paused", "queued")


async def campaign_command(settings: Settings, args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    conn = await connect(settings.require_database())
    try:
        if args.action == "status":
            return await _status(conn, args, out)
        rate = getattr(args, "rate", None)
        if rate is not None and rate <= 0:
            return bad_option("--rate", "must be a positive number")
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
        return await _overview(conn, args, out)
    while True:
        row = await conn.fetchrow(QUERIES["campaign_summary"], args.id)
        if row is None:
            print(f"sender: campaign {args.id} does not exist", file=sys.stderr)
            return 1
        progress = [progress_from(row)]
        events = await deliverability_by_campaign(conn, [args.id])  # deliverability (issue 11)
        senders = await _senders(conn, args.id)
        if args.json:
            out.write(json.dumps([{**asdict(p), **events.get(p.id, {}), "instances": senders}
                                  for p in progress]) + "\n")
        else:
            out.write(_lines(progress, events) + _senders_text(senders)
                      + f"\n({datetime.now().strftime('%H:%M:%S')})\n")
        out.flush()
        if not args.watch or progress[0].status not in ("queued", "sending"):
            return 0
        await asyncio.sleep(1.0)


def _lines(progress: list[Progress], events: dict[int, dict[str, Any]]) -> str:
    return "\n".join(format_progress(p) + format_deliverability(events.get(p.id)) for p in progress)


async def _overview(conn: asyncpg.Connection, args: argparse.Namespace, out: TextIO) -> int:
    """Without an id: a summary by status first, then the active campaigns (sending, paused, queued)
    up to --limit, then the most recently finished few; --all lists every campaign. A handful of
    statements whatever the number of campaigns."""
    limit = None if args.all else max(0, args.limit)
    recent = None if args.all else RECENT_FINISHED
    while True:
        by_status = {r["status"]: dict(r) for r in await conn.fetch(QUERIES["campaigns_by_status"])}
        active_ids = [r["id"] for r in await conn.fetch(QUERIES["campaigns_active_ids"], limit)]
        finished_ids = [r["id"] for r in await conn.fetch(QUERIES["campaigns_finished_ids"], recent)]
        rows = {r["id"]: progress_from(r)
                for r in await conn.fetch(QUERIES["campaign_summaries"], active_ids + finished_ids)}
        events = await deliverability_by_campaign(conn, list(rows))
        active = [rows[i] for i in active_ids if i in rows]
        finished = [rows[i] for i in finished_ids if i in rows]
        summary = _summary(by_status)
        summary["instances"] = await _instances(conn)
        if args.json:
            out.write(json.dumps({
                "summary": summary,
                "active": [{**asdict(p), **events.get(p.id, {})} for p in active],
                "active_total": summary["active"],
                "recent": [{**asdict(p), **events.get(p.id, {})} for p in finished],
            }) + "\n")
        else:
            stamp = datetime.now().strftime("%H:%M:%S")
            out.write(_overview_text(summary, active, finished, events) + f"\n({stamp})\n")
        out.flush()
        if not args.watch or summary["active"] == 0:
            return 0
        await asyncio.sleep(1.0)


async def _instances(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    """Live instances (heartbeat younger than the default instance timeout) as their heartbeats report them."""
    return [{"id": r["id"], "send_rate": round(float(r["send_rate"]), 2), "campaigns": list(r["campaigns"])}
            for r in await conn.fetch(QUERIES["live_instances"], Settings().instance_timeout)]


def _instances_text(instances: list[dict[str, Any]]) -> str:
    total = sum(i["send_rate"] for i in instances)
    each = "; ".join(f"{i['id']} {i['send_rate']:.1f}/s" + (f" (campaigns {', '.join(map(str, i['campaigns']))})"
                                                            if i["campaigns"] else "") for i in instances)
    return f"instances: {len(instances)} live, {total:.1f}/s together: {each}"


async def _senders(conn: asyncpg.Connection, campaign_id: int) -> list[dict[str, Any]]:
    """The live instances sending the campaign, with their share of its own rate when it has one
    (`rate_units`: whole sends per window, sender.campaign_share)."""
    units = {r["instance_id"]: int(r["units"]) for r in await conn.fetch(QUERIES["campaign_shares_held"], campaign_id)}
    senders = [i for i in await _instances(conn) if campaign_id in i["campaigns"]]
    return [{**i, "rate_units": units[i["id"]]} if i["id"] in units else i for i in senders]


def _senders_text(senders: list[dict[str, Any]]) -> str:
    if not senders:
        return ""
    return "\n  sending from: " + ", ".join(
        f"{i['id']} ({i['send_rate']:.1f}/s" + (f", {i['rate_units']} units of its rate" if "rate_units" in i else "")
        + ")" for i in senders)


def _summary(by_status: dict[str, dict[str, Any]]) -> dict[str, Any]:
    count = {status: int(r["campaigns"]) for status, r in by_status.items()}
    sending = by_status.get("sending", {})
    return {
        "campaigns": sum(count.values()),
        "by_status": count,
        "active": sum(count.get(s, 0) for s in ACTIVE),
        "sending": {"campaigns": count.get("sending", 0), "total": int(sending.get("total", 0)),
                    "sent": int(sending.get("sent", 0)), "failed": int(sending.get("failed", 0)),
                    "skipped": int(sending.get("skipped", 0))},
        "rate": round(float(sending.get("rate", 0.0)), 2),
    }


def _overview_text(summary: dict[str, Any], active: list[Progress], finished: list[Progress],
                   events: dict[int, dict[str, Any]]) -> str:
    if not summary["campaigns"]:
        return "no campaigns"
    counts = ", ".join(f"{status} {n}" for status, n in sorted(summary["by_status"].items()))
    s = summary["sending"]
    done = s["sent"] + s["failed"] + s["skipped"]
    lines = [f"{summary['campaigns']} campaigns: {counts}",
             f"sending: {s['campaigns']} campaigns, {done}/{s['total']} done, sent={s['sent']} failed={s['failed']} "
             f"skipped={s['skipped']}, {summary['rate']:.1f}/s together"]
    if summary["instances"]:
        lines.append(_instances_text(summary["instances"]))
    if active:
        more = summary["active"] - len(active)
        lines.append(f"active ({len(active)} of {summary['active']}"
                     + (f"; --limit N or --all for the other {more})" if more > 0 else ")") + ":")
        lines.append(_lines(active, events))
    if finished:
        lines.append("recently finished:")
        lines.append(_lines(finished, events))
    return "\n".join(lines)


async def send_test(settings: Settings, args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    """Render the campaign for ADDRESS (with its contact data when it is a contact) and send it."""
    from sender.addresses import AddressError, normalise_address
    from sender.message import compose
    from sender.render import TemplateProblem
    from sender.ses import classify, open_ses

    try:
        to = normalise_address(args.to)
    except AddressError as exc:
        return bad_option("--to", exc)
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
