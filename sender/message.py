"""One recipient row -> a ready SendEmail request, or the outcome that says why it is not sent.

Everything decided from the row alone happens here, before the row waits for a rate slot: the
contact's status, a deleted contact, the address, and the rendered message. Only a ready message
uses a slot of the campaign's or the account's rate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from sender.addresses import AddressError, normalise_address
from sender.campaigns import CampaignPlan
from sender.config import Settings
from sender.render import Contact, TemplateProblem
from sender.ses import OutgoingEmail
from sender.tokens import unsubscribe_token


@dataclass(slots=True)
class Claimed:
    """A recipient row this instance holds (status `sending`, claimed by it at `claimed_at`)."""

    id: int
    email: str
    attempts: int
    contact: Contact
    contact_status: str | None
    contact_deleted: bool = False
    suppressed: bool = False
    fresh: bool = True  # never tried before this claim (the claimer's keyset bound moves past these only)
    claimed_at: float = field(default_factory=time.monotonic)

    @classmethod
    def from_record(cls, r: asyncpg.Record) -> Claimed:
        return cls(
            id=r["id"], email=r["email"], attempts=r["attempts"],
            contact=Contact(email=r["email"], first_name=r["first_name"], last_name=r["last_name"],
                            country=r["country"], attributes=r["attributes"]),
            contact_status=r["contact_status"], contact_deleted=bool(r["contact_deleted"]),
            suppressed=bool(r["suppressed"]), fresh=bool(r["fresh"]),
        )


@dataclass(slots=True)
class Outcome:
    """What happened to one claimed row; `pending` outcomes hand the row back (retry_in seconds)."""

    id: int
    status: str
    attempts: int
    message_id: str | None = None
    error_code: str | None = None
    error: str | None = None
    retry_in: float | None = None
    sent_at: datetime | None = None

    @classmethod
    def handed_back(cls, row: Claimed) -> Outcome:
        """Unsent and unattempted: the row goes back to pending for anyone to send now."""
        return cls(row.id, "pending", row.attempts, retry_in=0.0)


SKIP_REASONS = {
    "unsubscribed": ("ContactUnsubscribed", "contact unsubscribed before send time"),
    "bounced": ("ContactBounced", "contact address bounced before"),
    "complained": ("ContactComplained", "contact complained before"),
}


def compose(plan: CampaignPlan, settings: Settings, contact: Contact, *, to: str, recipient_id: int | None,
            subject_prefix: str = "") -> OutgoingEmail:
    """The SendEmail request for one recipient: unsubscribe link and headers (RFC 8058),
    rendered parts, tags for configuration-set events. Raises TemplateProblem."""
    headers: tuple[tuple[str, str], ...] = ()
    unsubscribe_url = ""
    if settings.unsubscribe_url and settings.unsubscribe_secret:
        token = unsubscribe_token(settings.unsubscribe_secret, plan.id, recipient_id or 0)
        unsubscribe_url = settings.unsubscribe_url.replace("{token}", token)
        headers = (("List-Unsubscribe", f"<{unsubscribe_url}>"),
                   ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
    rendered = plan.templates.render(contact, unsubscribe_url=unsubscribe_url)
    return OutgoingEmail(
        to=to, from_email=plan.from_email, subject=subject_prefix + rendered.subject, html=rendered.html,
        text=rendered.text, reply_to=plan.reply_to, headers=headers,
        tags=(("campaign_id", str(plan.id)),
              ("recipient_id", "test" if recipient_id is None else str(recipient_id))),
        configuration_set=settings.configuration_set,
    )


def skip_reason(row: Claimed) -> Outcome | None:
    """`skipped` when the contact may not receive mail any more (SPEC §3), else None."""
    if row.contact_deleted:
        return Outcome(row.id, "skipped", row.attempts, error_code="ContactDeleted",
                       error="contact deleted before send time")
    if row.contact_status and row.contact_status != "subscribed":
        code, text = SKIP_REASONS.get(row.contact_status, ("ContactInactive", "contact not subscribed"))
        return Outcome(row.id, "skipped", row.attempts, error_code=code, error=text)
    if row.suppressed:
        return Outcome(row.id, "skipped", row.attempts, error_code="Suppressed", error="address is suppressed")
    return None


def prepare(plan: CampaignPlan, settings: Settings, row: Claimed) -> OutgoingEmail | Outcome:
    """The message for this row, or the final outcome when it must not or cannot be sent."""
    skipped = skip_reason(row)
    if skipped is not None:
        return skipped
    try:
        to = normalise_address(row.email)
    except AddressError as exc:
        return Outcome(row.id, "failed", row.attempts, error_code="InvalidAddress", error=str(exc))
    try:
        return compose(plan, settings, row.contact, to=to, recipient_id=row.id)
    except TemplateProblem as exc:
        return Outcome(row.id, "failed", row.attempts, error_code=exc.code,
                       error=str(exc)[:500])
