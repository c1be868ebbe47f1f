"""Campaign lifecycle: queued -> materialise recipients -> sending -> sent (SPEC §3, §4).

A campaign is taken under `FOR UPDATE SKIP LOCKED`, so exactly one instance checks its template
and rules, materialises its recipients (idempotently) and moves it to `sending`. A bad template,
bad rules or a missing template fail it with a clear `error` before any mail goes out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

from sender.addresses import AddressError, normalise_address
from sender.config import Settings
from sender.db import QUERIES
from sender.render import CampaignTemplates, Contact, TemplateProblem
from sender.ses import OutgoingEmail
from sender.targeting import RuleError, compile_rules
from sender.tokens import unsubscribe_token


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
    rate_per_sec: float | None

    def compose(self, settings: Settings, contact: Contact, *, to: str, recipient_id: int | None,
                subject_prefix: str = "") -> OutgoingEmail:
        """The SendEmail request for one recipient: unsubscribe link and headers (RFC 8058),
        rendered parts, tags for configuration-set events. Raises TemplateProblem."""
        headers: tuple[tuple[str, str], ...] = ()
        unsubscribe_url = ""
        if settings.unsubscribe_url and settings.unsubscribe_secret:
            token = unsubscribe_token(settings.unsubscribe_secret, self.id, recipient_id or 0)
            unsubscribe_url = settings.unsubscribe_url.replace("{token}", token)
            headers = (("List-Unsubscribe", f"<{unsubscribe_url}>"),
                       ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
        rendered = self.templates.render(contact, unsubscribe_url=unsubscribe_url)
        return OutgoingEmail(
            to=to, from_email=self.from_email, subject=subject_prefix + rendered.subject, html=rendered.html,
            text=rendered.text, reply_to=self.reply_to, headers=headers,
            tags=(("campaign_id", str(self.id)),
                  ("recipient_id", "test" if recipient_id is None else str(recipient_id))),
            configuration_set=settings.configuration_set,
        )


def build_plan(row: asyncpg.Record | dict[str, Any], settings: Settings) -> CampaignPlan:
    if row["template_id"] is None:
        raise CampaignProblem("campaign has no template_id")
    if row["found_template_id"] is None:
        raise CampaignProblem(f"template {row['template_id']} does not exist (deleted?)")
    subject = row["campaign_subject"] or row["template_subject"] or ""
    try:
        templates = CampaignTemplates(
            subject, row["content_html"] or "", row["content_text"], max_bytes=settings.template_max_bytes
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
    return CampaignPlan(
        id=row["id"], name=row["name"], templates=templates, from_email=from_email,
        reply_to=reply_to, rate_per_sec=row["rate_per_sec"],
    )


async def load_plan(conn: asyncpg.Connection | asyncpg.Pool, campaign_id: int, settings: Settings) -> CampaignPlan:
    row = await conn.fetchrow(QUERIES["load_campaign"], campaign_id)
    if row is None:
        raise CampaignProblem(f"campaign {campaign_id} does not exist")
    return build_plan(row, settings)


def materialise_sql(target_rules: Any) -> tuple[str, list[Any]]:
    """The INSERT … SELECT for these rules, parameters numbered after the campaign id ($1)."""
    predicate, params = compile_rules(target_rules, first_param=2)
    return QUERIES["materialise_recipients"].replace("/*RULES*/", predicate), params


@dataclass(frozen=True)
class StartResult:
    campaign_id: int
    started: bool
    total: int = 0
    error: str | None = None


async def start_next_queued(pool: asyncpg.Pool, settings: Settings) -> StartResult | None:
    """Take one due queued campaign, materialise it and mark it sending (or failed)."""
    async with pool.acquire() as conn, conn.transaction():
        campaign_id = await conn.fetchval(QUERIES["next_queued_campaign"])
        if campaign_id is None:
            return None
        row = await conn.fetchrow(QUERIES["load_campaign"], campaign_id)
        try:
            build_plan(row, settings)
            if row["target_rules"] is not None:
                sql, params = materialise_sql(row["target_rules"])
                await conn.execute(sql, campaign_id, *params)
        except (CampaignProblem, RuleError) as exc:
            await conn.execute(QUERIES["campaign_fail"], campaign_id, str(exc))
            return StartResult(campaign_id, started=False, error=str(exc))
        total = await conn.fetchval(QUERIES["campaign_start"], campaign_id)
        return StartResult(campaign_id, started=True, total=int(total))


async def set_status(conn: asyncpg.Connection | asyncpg.Pool, campaign_id: int, action: str,
                     rate_per_sec: float | None = None) -> str | None:
    """Apply send/paused/resume/cancelled; the new status, or None when not allowed from here."""
    row = await conn.fetchrow(QUERIES["campaign_set_status"], campaign_id, action, rate_per_sec)
    return None if row is None else str(row["status"])
