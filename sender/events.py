"""SES events (bounce, complaint, delivery, …) parsed from any envelope and applied in batches.

Accepts configuration-set events (`eventType`) and identity notifications (`notificationType`),
bare, inside an SNS envelope, or inside an EventBridge envelope. Each event becomes one effect per
recipient; a batch of effects is applied in one transaction of a few `unnest` statements.

Idempotent: every effect has an identity (`event_key`) recorded in `ses_events`; a replay changes
nothing. Order-safe: recipient columns are set once (first wins), so a late Delivery never clears
a Bounce. Events for unknown message ids still suppress the address.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from sender.db import QUERIES
from sender.suppression import suppression_key

MAX_EVENT_BYTES = 300 * 1024
UNKEYED = frozenset({"delivered"})


class EventError(ValueError):
    """A message that is not an SES event we can read; the message says why (no addresses)."""


@dataclass(frozen=True, slots=True)
class Effect:
    """What one event means for one recipient address."""

    key: str
    kind: str
    message_id: str | None
    email: str | None
    campaign_id: int | None
    recipient_id: int | None
    at: datetime | None
    detail: str | None = None


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise EventError(f"{what} is not a JSON object")
    return value


def _str(value: Any, what: str, *, required: bool = False) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value):
        raise EventError(f"{what} is not a string")
    return value


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _tag_id(tags: Any, name: str) -> int | None:
    if not isinstance(tags, dict):
        return None
    values = tags.get(name)
    if isinstance(values, list) and values and isinstance(values[0], str) and values[0].isascii() \
            and values[0].isdigit() and len(values[0]) <= 18:
        return int(values[0])
    return None


def _addresses(items: Any, field: str, what: str) -> list[str]:
    if not isinstance(items, list):
        raise EventError(f"{what} is not a list")
    out = []
    for item in items:
        address = item.get(field) if isinstance(item, dict) else item
        if not isinstance(address, str) or "@" not in address or len(address) > 320:
            raise EventError(f"{what} holds an entry that is not an address")
        out.append(address)
    return out


def unwrap(body: str | bytes | dict[str, Any]) -> dict[str, Any]:
    """The SES event inside a bare, SNS or EventBridge message."""
    if isinstance(body, (str, bytes)):
        if len(body) > MAX_EVENT_BYTES:
            raise EventError(f"message larger than {MAX_EVENT_BYTES} bytes")
        try:
            body = json.loads(body)
        except (ValueError, RecursionError):
            raise EventError("message is not valid JSON") from None
    doc = _obj(body, "message")
    if doc.get("Type") == "Notification" and "Message" in doc:  # SNS envelope
        return unwrap(_str(doc["Message"], "SNS Message", required=True) or "")
    if "detail" in doc and "detail-type" in doc:  # EventBridge
        return _obj(doc["detail"], "EventBridge detail")
    return doc


@dataclass(frozen=True, slots=True)
class _Reading:
    """What an event's own section says: its effect kind, the addresses it concerns, its identity."""

    kind: str
    addresses: list[str]
    identity: Any
    when: datetime | None
    detail: str | None = None


# event type -> (effect kind, the document's section for it), for the types read the same way
_SIMPLE = {"Reject": ("reject", "reject"), "Rendering Failure": ("rendering_failure", "failure"),
           "DeliveryDelay": ("delay", "deliveryDelay"), "Subscription": ("unsubscribe", "subscription"),
           "Send": ("send", "send"), "Open": ("open", "open"), "Click": ("click", "click")}


def parse_event(body: str | bytes | dict[str, Any]) -> list[Effect]:
    """The effects of one message; EventError when it cannot be read."""
    doc = unwrap(body)
    event_type = doc.get("eventType", doc.get("notificationType"))
    if not isinstance(event_type, str):
        raise EventError("neither eventType nor notificationType is a string")
    mail = _obj(doc.get("mail"), "mail")
    message_id = _str(mail.get("messageId"), "mail.messageId")
    tags = mail.get("tags")
    campaign_id, recipient_id = _tag_id(tags, "campaign_id"), _tag_id(tags, "recipient_id")
    when = _time(mail.get("timestamp"))
    if event_type == "Bounce":
        read = _bounce(doc, when)
    elif event_type == "Complaint":
        read = _complaint(doc, when)
    elif event_type == "Delivery":
        read = _delivery(doc, mail, when)
    else:
        read = _simple(event_type, doc, mail, when)
    if message_id is None and not read.addresses:
        raise EventError("event names neither a message id nor a recipient")
    effects = []
    for address in read.addresses or [None]:  # type: ignore[list-item]
        raw = f"{read.kind}|{message_id}|{address and suppression_key(address)}|{read.identity}"
        key = hashlib.sha256(raw.encode()).hexdigest()[:32]
        effects.append(Effect(key, read.kind, message_id, address, campaign_id, recipient_id, read.when,
                              read.detail))
    return effects


def _bounce(doc: dict[str, Any], when: datetime | None) -> _Reading:
    bounce = _obj(doc.get("bounce"), "bounce")
    bounce_type = _str(bounce.get("bounceType"), "bounce.bounceType", required=True)
    addresses = _addresses(bounce.get("bouncedRecipients"), "emailAddress", "bounce.bouncedRecipients")
    return _Reading("hard_bounce" if bounce_type == "Permanent" else "soft_bounce", addresses,
                    bounce.get("feedbackId"), _time(bounce.get("timestamp")) or when,
                    f"{bounce_type}/{bounce.get('bounceSubType')}")


def _complaint(doc: dict[str, Any], when: datetime | None) -> _Reading:
    complaint = _obj(doc.get("complaint"), "complaint")
    feedback = complaint.get("complaintFeedbackType")
    addresses = _addresses(complaint.get("complainedRecipients"), "emailAddress", "complaint.complainedRecipients")
    return _Reading("complaint", addresses, complaint.get("feedbackId"), _time(complaint.get("timestamp")) or when,
                    feedback if isinstance(feedback, str) else None)


def _delivery(doc: dict[str, Any], mail: dict[str, Any], when: datetime | None) -> _Reading:
    delivery = _obj(doc.get("delivery"), "delivery")
    addresses = _addresses(delivery.get("recipients", mail.get("destination")), "", "delivery.recipients")
    return _Reading("delivered", addresses, delivery.get("timestamp"), _time(delivery.get("timestamp")) or when)


def _simple(event_type: str, doc: dict[str, Any], mail: dict[str, Any], when: datetime | None) -> _Reading:
    """Reject, Rendering Failure, DeliveryDelay, Subscription, Send, Open, Click."""
    if event_type not in _SIMPLE:
        raise EventError(f"unknown event type {event_type[:40]!r}")
    kind, name = _SIMPLE[event_type]
    section = doc.get(name)
    section = section if isinstance(section, dict) else {}
    detail = None
    if kind == "reject":
        detail = str(section.get("reason", "rejected"))[:500]
    elif kind == "rendering_failure":
        detail = str(section.get("errorMessage", "rendering failure"))[:500]
    elif kind == "delay":
        detail = str(section.get("delayType", "delayed"))[:100]
    if kind == "delay" and isinstance(section.get("delayedRecipients"), list):
        addresses = _addresses(section["delayedRecipients"], "emailAddress", "deliveryDelay.delayedRecipients")
    else:
        addresses = _addresses(mail.get("destination", []), "", "mail.destination")
    identity = section.get("timestamp") if isinstance(section.get("timestamp"), str) else None
    return _Reading(kind, addresses, identity, _time(identity) or when, detail)


@dataclass
class Applied:
    """What a batch did: fresh effects by kind, duplicates skipped, suppressions added,
    and per-campaign counter moves (for metrics and the guard)."""

    by_kind: Counter[str]
    duplicates: int
    suppressed: int
    campaigns: dict[int, Counter[str]]


async def apply_effects(conn: asyncpg.Connection, effects: Sequence[Effect], *, soft_bounce_limit: int = 3,
                        soft_bounce_days: float = 30.0) -> Applied:
    """Apply a batch in one transaction. Replayed effects (same key) change nothing."""
    applied = Applied(Counter(), 0, 0, {})
    if not effects:
        return applied
    async with conn.transaction():
        # Delivery (the bulk: one per message) is idempotent by construction (delivered_at is set
        # once, counted on that transition), so only the other kinds pay for an identity row.
        keyed = [e for e in effects if e.kind not in UNKEYED]
        fresh = {r["event_key"] for r in await conn.fetch(
            QUERIES["events_record"], [e.key for e in keyed], [e.kind for e in keyed], [e.message_id for e in keyed],
            [e.email and suppression_key(e.email) for e in keyed])} if keyed else set()
        todo = []
        for e in effects:  # a key twice in one batch is applied once
            if e.kind in UNKEYED:
                todo.append(e)
            elif e.key in fresh:
                fresh.discard(e.key)
                todo.append(e)
        applied.duplicates = len(effects) - len(todo)
        if not todo:
            return applied
        applied.by_kind.update(e.kind for e in todo)
        rows = await conn.fetch(
            QUERIES["events_apply_recipients"],
            [e.kind for e in todo], [e.message_id for e in todo], [e.campaign_id for e in todo],
            [e.recipient_id for e in todo], [e.at for e in todo], [e.detail for e in todo],
            [e.email and suppression_key(e.email) for e in todo],
        )
        for r in rows:
            moved = applied.campaigns.setdefault(r["campaign_id"], Counter())
            for name in ("delivered", "hard_bounced", "soft_bounced", "complained", "unsubscribed"):
                moved[name] += r[name]
        contact_kinds = [e for e in todo if e.kind in ("hard_bounce", "complaint", "unsubscribe") and e.email]
        if contact_kinds:
            await conn.execute(QUERIES["events_apply_contacts"], [e.kind for e in contact_kinds],
                               [suppression_key(e.email or "") for e in contact_kinds])
        reasons = {"hard_bounce": "bounced", "complaint": "complained", "unsubscribe": "unsubscribed"}
        suppress = [(suppression_key(e.email), reasons[e.kind], e.detail, e.campaign_id)
                    for e in todo if e.kind in reasons and e.email]
        soft = sorted({suppression_key(e.email) for e in todo if e.kind == "soft_bounce" and e.email})
        if soft:
            over = await conn.fetch(QUERIES["events_soft_bounces_over"], soft, soft_bounce_days, soft_bounce_limit)
            suppress += [(r["email"], "soft_bounced", f"{r['n']} soft bounces in {soft_bounce_days:g} days", None)
                         for r in over]
        if suppress:
            rows = await conn.fetch(QUERIES["suppress_many"], [s[0] for s in suppress], [s[1] for s in suppress],
                                    ["ses_event"] * len(suppress), [s[2] for s in suppress],
                                    [s[3] for s in suppress])
            applied.suppressed = sum(1 for r in rows if r["inserted"])
    return applied
