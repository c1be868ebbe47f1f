"""Campaign lifecycle: queued -> checked and started -> recipients materialised in chunks -> sent.

Starting takes a due campaign under `FOR UPDATE SKIP LOCKED`, so exactly one instance checks its
template and rules and moves it to `sending` (or `failed` with a clear `error`, before any mail
goes out). Materialising its recipients then runs off the tick, in short keyset chunks of
contacts, so a million-contact campaign never holds a long statement, never stalls the tick, and
survives a statement timeout or a crash: another instance carries on from the saved cursor.
A campaign is only complete once materialisation has finished.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import asyncpg

from sender.addresses import AddressError, normalise_address
from sender.config import Settings
from sender.db import DB_ERRORS, QUERIES
from sender.render import CampaignTemplates, TemplateProblem
from sender.targeting import RuleError, compile_rules


class CampaignProblem(Exception):
    """The campaign cannot be sent as configured; the message goes to campaigns.error."""


@dataclass(frozen=True)
class CampaignPlan:
    """Everything an instance needs to send one campaign, checked and compiled once."""

    id: int
    name: str
    templates: CampaignTemplates
    from_email: str
    reply_to: str | None


def build_plan(row: asyncpg.Record | dict[str, Any], settings: Settings) -> CampaignPlan:
    """Check the template, sender and reply-to of a campaign row; CampaignProblem names what is wrong."""
    if row["template_id"] is None:
        raise CampaignProblem("campaign has no template_id")
    if row["found_template_id"] is None:
        raise CampaignProblem(f"template {row['template_id']} does not exist (deleted?)")
    subject = row["campaign_subject"] or row["template_subject"] or ""
    try:
        templates = CampaignTemplates(
            subject, row["content_html"] or "", row["content_text"], max_bytes=settings.template_max_bytes,
            budget_ms=settings.render_budget_ms, message_max_bytes=settings.message_max_bytes,
        )
    except TemplateProblem as exc:
        raise CampaignProblem(str(exc)) from None
    from_email = row["from_email"] or settings.from_email
    if not from_email:
        raise CampaignProblem("campaign has no from_email and SES_FROM_EMAIL is not set")
    try:
        from_email = normalise_address(from_email, allow_display_name=True)
        reply_to = normalise_address(row["reply_to"]) if row["reply_to"] else None
    except AddressError as exc:
        raise CampaignProblem(f"sender address: {exc}") from None
    return CampaignPlan(id=row["id"], name=row["name"], templates=templates, from_email=from_email,
                        reply_to=reply_to)


async def load_plan(conn: asyncpg.Connection | asyncpg.Pool, campaign_id: int, settings: Settings) -> CampaignPlan:
    row = await conn.fetchrow(QUERIES["load_campaign"], campaign_id)
    if row is None:
        raise CampaignProblem(f"campaign {campaign_id} does not exist")
    return await compile_plan(row, settings)


async def compile_plan(row: asyncpg.Record | dict[str, Any], settings: Settings) -> CampaignPlan:
    """build_plan in a worker thread: compiling a large template takes seconds of CPU, and the event
    loop (heartbeat, health, every other campaign) must keep running meanwhile."""
    return await asyncio.to_thread(build_plan, row, settings)


MATERIALISE_FIRST_RULE_PARAM = 5


def materialise_sql(target_rules: Any) -> tuple[str, list[Any]]:
    """The chunk statement for these rules; rule parameters are numbered after the fixed four."""
    predicate, params = compile_rules(target_rules, first_param=MATERIALISE_FIRST_RULE_PARAM)
    return QUERIES["materialise_chunk"].replace("/*RULES*/", predicate), params


@dataclass(frozen=True)
class StartResult:
    campaign_id: int
    started: bool
    error: str | None = None


async def start_next_queued(pool: asyncpg.Pool, settings: Settings) -> StartResult | None:
    """Take one due queued campaign, check it and mark it sending (or failed). None when none is due.

    Only checks run here (template, sender, rules): recipients are materialised afterwards by
    `materialise_step`, so starting is quick whatever the campaign's size.
    """
    async with pool.acquire() as conn, conn.transaction():
        campaign_id = await conn.fetchval(QUERIES["next_queued_campaign"], timeout=10)
        if campaign_id is None:
            return None
        try:
            row = await conn.fetchrow(QUERIES["load_campaign"], campaign_id, timeout=10)
            await compile_plan(row, settings)
            if row["target_rules"] is not None:
                materialise_sql(row["target_rules"])
        except (CampaignProblem, RuleError) as exc:
            error = str(exc)
        except DB_ERRORS:
            raise
        except Exception as exc:  # whatever a hostile row makes the checks raise: this campaign fails alone
            error = f"cannot start the campaign: {type(exc).__name__}: {exc}"
        else:
            await conn.execute(QUERIES["campaign_start"], campaign_id, settings.instance_id, timeout=10)
            return StartResult(campaign_id, started=True)
        await conn.execute(QUERIES["campaign_fail"], campaign_id, error[:1000], timeout=10)
        return StartResult(campaign_id, started=False, error=error)


@dataclass(frozen=True)
class MaterialiseStep:
    campaign_id: int
    added: int
    done: bool


async def materialise_step(pool: asyncpg.Pool, settings: Settings, *, chunk: int) -> MaterialiseStep | None:
    """Materialise the next chunk of contacts of one campaign this instance may work on; None when
    no campaign needs it. Each chunk is one short statement that also saves the cursor, so an
    interrupted campaign resumes where it stopped (ON CONFLICT keeps it idempotent)."""
    me = settings.instance_id
    async with pool.acquire() as conn:
        row = await conn.fetchrow(QUERIES["materialise_take"], me, settings.instance_timeout, timeout=10)
        if row is None:
            return None
        try:
            sql, params = materialise_sql(row["target_rules"])
        except RuleError as exc:  # rules changed after start: fail it, naming the part
            await conn.execute(QUERIES["campaign_fail"], row["id"], str(exc), timeout=10)
            return MaterialiseStep(row["id"], 0, True)
        result = await conn.fetchrow(sql, row["id"], row["materialise_cursor"], chunk, me, *params,
                                     timeout=max(10.0, settings.poll_interval * 10))
    if result is None:  # another instance took it over meanwhile
        return MaterialiseStep(row["id"], 0, False)
    return MaterialiseStep(row["id"], int(result["added"]), bool(result["done"]))


# What the CLI and the admin API call an action -> the transition campaign_set_status applies.
ACTIONS = {"send": "send", "pause": "paused", "resume": "resume", "cancel": "cancelled"}


class TransitionRefused(Exception):
    """The campaign does not exist (`current` None) or its status does not allow the action."""

    def __init__(self, campaign_id: int, action: str, current: str | None) -> None:
        self.current = current
        message = (f"campaign {campaign_id} does not exist" if current is None
                   else f"campaign {campaign_id} is {current}: cannot {action} it")
        super().__init__(message)


async def apply_action(conn: asyncpg.Connection | asyncpg.Pool, campaign_id: int, action: str,
                       rate_per_sec: float | None = None) -> str:
    """send/pause/resume/cancel a campaign; the new status, or TransitionRefused saying why not."""
    row = await conn.fetchrow(QUERIES["campaign_set_status"], campaign_id, ACTIONS[action], rate_per_sec, timeout=10)
    if row is not None:
        return str(row["status"])
    current = await conn.fetchval(QUERIES["campaign_status"], campaign_id, timeout=10)
    raise TransitionRefused(campaign_id, action, current)
