"""Campaign lifecycle: queued -> checked and started -> recipients materialised in chunks -> sent.

Starting takes due campaigns in batches under `FOR UPDATE SKIP LOCKED`, so exactly one instance
checks each one's template and rules and moves it to `sending` (or `failed` with a clear `error`,
before any mail goes out), in a fixed number of statements for the whole batch. Materialising
recipients then runs off the tick, in short keyset chunks of contacts, least advanced campaign
first, so a million-contact campaign never holds a long statement, never stalls the tick or the
campaigns started after it, and survives a statement timeout or a crash: another instance
carries on from the saved cursor.
A campaign is only complete once materialisation has finished.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import asyncpg

from sender.addresses import AddressError, normalise_address
from sender.config import Settings
from sender.db import QUERIES
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


def build_plan(row: asyncpg.Record | dict[str, Any], settings: Settings,
               compiled: dict[tuple[Any, ...], CampaignTemplates | CampaignProblem] | None = None) -> CampaignPlan:
    """Check the template, sender and reply-to of a campaign row; CampaignProblem names what is wrong.

    `compiled` shares compiled templates (and template problems) between rows with the same sources."""
    if row["template_id"] is None:
        raise CampaignProblem("campaign has no template_id")
    if row["found_template_id"] is None:
        raise CampaignProblem(f"template {row['template_id']} does not exist (deleted?)")
    subject = row["campaign_subject"] or row["template_subject"] or ""
    key = (subject, row["content_html"] or "", row["content_text"])
    templates = compiled.get(key) if compiled is not None else None
    if templates is None:
        try:
            templates = CampaignTemplates(
                subject, row["content_html"] or "", row["content_text"], max_bytes=settings.template_max_bytes,
                budget_ms=settings.render_budget_ms, message_max_bytes=settings.message_max_bytes,
            )
        except TemplateProblem as exc:
            templates = CampaignProblem(str(exc))
        if compiled is not None:
            compiled[key] = templates
    if isinstance(templates, CampaignProblem):
        raise CampaignProblem(str(templates))
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


async def load_plans(conn: asyncpg.Connection | asyncpg.Pool, campaign_ids: list[int],
                     settings: Settings) -> list[StartResult]:
    """The plans of several campaigns in one round trip, compiled in one worker thread; a campaign
    that cannot be compiled comes back with its error (a missing campaign is left out)."""
    rows = await conn.fetch(QUERIES["load_campaigns"], campaign_ids, timeout=10)
    return await asyncio.to_thread(check_campaigns, rows, settings, rules=False)


async def compile_plan(row: asyncpg.Record | dict[str, Any], settings: Settings) -> CampaignPlan:
    """build_plan in a worker thread: compiling a large template takes seconds of CPU, and the event
    loop (heartbeat, health, every other campaign) must keep running meanwhile."""
    return await asyncio.to_thread(build_plan, row, settings)


MATERIALISE_FIRST_RULE_PARAM = 5


def materialise_sql(target_rules: Any) -> tuple[str, list[Any]]:
    """The chunk statement for these rules; rule parameters are numbered after the fixed four."""
    predicate, params = compile_rules(target_rules, first_param=MATERIALISE_FIRST_RULE_PARAM)
    return QUERIES["materialise_chunk"].replace("/*RULES*/", predicate), params


STARTS_PER_STATEMENT = 500  # campaigns one batched start takes at most; the tick repeats while more are due


@dataclass(frozen=True)
class StartResult:
    campaign_id: int
    started: bool
    error: str | None = None
    plan: CampaignPlan | None = None  # compiled by the checks; the runner can start from it


def check_campaigns(rows: list[asyncpg.Record], settings: Settings, *, rules: bool = True) -> list[StartResult]:
    """The start checks of a batch (template, sender, rules), each campaign on its own: whatever one
    row makes the checks raise fails that campaign alone. Campaigns with the same template sources
    share one compiled copy (compiled templates are immutable), so a batch of a thousand campaigns
    of one template compiles it once."""
    compiled: dict[tuple[Any, ...], CampaignTemplates | CampaignProblem] = {}
    results: list[StartResult] = []
    for row in rows:
        try:
            plan = build_plan(row, settings, compiled)
            if rules and row["target_rules"] is not None:
                materialise_sql(row["target_rules"])
        except (CampaignProblem, RuleError) as exc:
            results.append(StartResult(row["id"], started=False, error=str(exc)[:1000]))
        except Exception as exc:  # whatever a hostile row makes the checks raise: this campaign fails alone
            results.append(StartResult(row["id"], started=False,
                                       error=f"cannot check the campaign: {type(exc).__name__}: {exc}"[:1000]))
        else:
            results.append(StartResult(row["id"], started=True, plan=plan))
    return results


async def start_queued(pool: asyncpg.Pool, settings: Settings, *,
                       limit: int = STARTS_PER_STATEMENT) -> list[StartResult]:
    """Start up to `limit` due queued campaigns in a fixed number of statements, whatever their count.

    One statement takes and locks them (`FOR UPDATE SKIP LOCKED`, so two instances never take one
    campaign) with what the checks need; the checks run in a worker thread; one more statement
    starts the good ones and fails the bad ones, each with its reason. Recipients are materialised
    afterwards by `materialise_step` (or were supplied by the main app), so starting is quick
    whatever the campaigns' sizes.
    """
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(QUERIES["queued_take"], limit, timeout=10)
        if not rows:
            return []
        results = await asyncio.to_thread(check_campaigns, rows, settings)
        await conn.execute(QUERIES["campaigns_start_checked"], [r.campaign_id for r in results],
                           [r.error for r in results], settings.instance_id, timeout=30)
    return results


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
