"""SES events: every documented shape parses; hostile messages are refused with a reason; a batch
applies to recipients, contacts, suppressions and counters once, in any order."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import pytest

from sender.events import EventError, apply_effects, parse_event
from tests import ses_events as ev
from tests.helpers import seed_sent_campaign


@pytest.mark.parametrize(("build", "kind"), [
    (ev.bounce, "hard_bounce"), (lambda m, a: ev.bounce(m, a, bounce_type="Transient"), "soft_bounce"),
    (lambda m, a: ev.bounce(m, a, bounce_type="Undetermined"), "soft_bounce"),
    (ev.complaint, "complaint"), (ev.delivery, "delivered"), (ev.reject, "reject"),
    (ev.rendering_failure, "rendering_failure"), (ev.delivery_delay, "delay"), (ev.subscription, "unsubscribe"),
    (ev.send, "send"),
])
@pytest.mark.parametrize("wrap", ["bare", "identity", "sns", "eventbridge", "text"])
def test_documented_events_parse_in_every_envelope(build: Any, kind: str, wrap: str) -> None:
    event = build("m-1", "Jane@Example.com")
    body: Any = {"bare": event, "identity": ev.identity_notification(event), "sns": ev.sns_envelope(event),
                 "eventbridge": ev.eventbridge(event), "text": json.dumps(event)}[wrap]
    [effect] = parse_event(body)
    assert (effect.kind, effect.message_id, effect.email) == (kind, "m-1", "Jane@Example.com")
    assert effect.at is not None


def test_tags_and_details_are_read() -> None:
    [b] = parse_event(ev.bounce("m", "a@example.com", bounce_type="Transient", sub_type="MailboxFull",
                                tags={"campaign_id": ["12"], "recipient_id": ["345"]}))
    assert (b.campaign_id, b.recipient_id, b.detail) == (12, 345, "Transient/MailboxFull")
    [c] = parse_event(ev.complaint("m", "a@example.com", feedback_type="not-spam"))
    assert c.detail == "not-spam" and c.campaign_id is None
    assert parse_event(ev.bounce("m", "a@x.com"))[0].key != parse_event(ev.complaint("m", "a@x.com"))[0].key
    wrapped = ev.sns_envelope(ev.bounce("m", "a@x.com"))
    assert parse_event(ev.bounce("m", "a@x.com"))[0].key == parse_event(wrapped)[0].key


def _mutate(path: str, value: Any) -> dict[str, Any]:
    doc = ev.bounce("m-1", "a@example.com")
    target = doc
    *parents, last = path.split(".")
    for p in parents:
        target = target[p]
    target[last] = value
    return doc


@pytest.mark.parametrize(("body", "reason"), [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "not a JSON object"),
    ('"just a string"', "not a JSON object"),
    ("x" * (256 * 1024 + 1) * 2, "larger than"),
    ("[" * 100_000, "not valid JSON"),
    (json.dumps({"eventType": "Teleport", "mail": {"messageId": "m"}}), "unknown event type"),
    (json.dumps({"eventType": 7, "mail": {}}), "neither eventType"),
    (json.dumps({"mail": {"messageId": "m"}}), "neither eventType"),
    (json.dumps(_mutate("mail", ["m-1"])), "mail is not a JSON object"),
    (json.dumps(_mutate("mail.messageId", 5)), "mail.messageId is not a string"),
    (json.dumps(_mutate("bounce.bounceType", None)), "bounce.bounceType"),
    (json.dumps(_mutate("bounce.bouncedRecipients", "a@example.com")), "is not a list"),
    (json.dumps(_mutate("bounce.bouncedRecipients", [{"emailAddress": 5}])), "not an address"),
    (json.dumps(_mutate("bounce", None)), "bounce is not a JSON object"),
    (json.dumps({"Type": "Notification", "Message": {"eventType": "Bounce"}}), "SNS Message is not a string"),
    (json.dumps({"Type": "Notification", "Message": "{oops"}), "not valid JSON"),
    (json.dumps({"detail-type": "x", "detail": "nope"}), "EventBridge detail"),
])
def test_hostile_messages_are_refused_with_a_reason(body: str, reason: str) -> None:
    with pytest.raises(EventError, match=reason):
        parse_event(body)


async def apply(db: asyncpg.Connection, *events: dict[str, Any], limit: int = 3) -> Any:
    effects = [e for body in events for e in parse_event(body)]
    return await apply_effects(db, effects, soft_bounce_limit=limit)


async def counters(db: asyncpg.Connection, campaign: int) -> tuple[int, ...]:
    row = await db.fetchrow("SELECT delivered_count, hard_bounced_count, soft_bounced_count, complained_count, "
                            "unsubscribed_count FROM campaigns WHERE id = $1", campaign)
    return tuple(row)


async def test_effect_table(db: asyncpg.Connection) -> None:
    campaign, ids = await seed_sent_campaign(db, 6)
    result = await apply(db, ev.delivery("m-0", "user0@example.org"), ev.bounce("m-1", "user1@example.org"),
                         ev.complaint("m-2", "user2@example.org"), ev.reject("m-3", "user3@example.org"),
                         ev.subscription("m-4", "user4@example.org"), ev.delivery_delay("m-5", "user5@example.org"))
    assert result.duplicates == 0 and result.suppressed == 3
    rows = {r["id"]: r for r in await db.fetch("SELECT * FROM campaign_recipients")}
    assert rows[ids[0]]["delivered_at"] is not None and rows[ids[0]]["bounced_at"] is None
    assert rows[ids[1]]["bounce_type"] == "Permanent/General" and rows[ids[1]]["bounced_at"] is not None
    assert rows[ids[2]]["complained_at"] is not None and rows[ids[2]]["complaint_type"] == "abuse"
    assert rows[ids[3]]["event_error"] == "reject: Bad content"
    assert rows[ids[4]]["unsubscribed_at"] is not None
    assert rows[ids[5]]["delayed_at"] is not None
    statuses = dict(await db.fetch("SELECT email, status FROM contacts"))
    assert statuses == {"user0@example.org": "subscribed", "user1@example.org": "bounced",
                        "user2@example.org": "complained", "user3@example.org": "subscribed",
                        "user4@example.org": "unsubscribed", "user5@example.org": "subscribed"}
    assert dict(await db.fetch("SELECT email, reason FROM suppressions")) == {
        "user1@example.org": "bounced", "user2@example.org": "complained", "user4@example.org": "unsubscribed"}
    assert await counters(db, campaign) == (1, 1, 0, 1, 1)
    assert result.campaigns[campaign]["delivered"] == 1


async def test_replays_and_reordering_change_nothing(db: asyncpg.Connection) -> None:
    campaign, ids = await seed_sent_campaign(db, 2)
    bounce, late_delivery = ev.bounce("m-0", "user0@example.org"), ev.delivery("m-0", "user0@example.org")
    await apply(db, bounce, bounce)  # duplicate within a batch
    before = dict(await db.fetchrow("SELECT * FROM campaign_recipients WHERE id = $1", ids[0]))
    again = await apply(db, bounce, ev.sns_envelope(bounce, message_id="another-sns-delivery"))
    assert again.duplicates == 2 and not again.by_kind
    await apply(db, late_delivery)
    after = dict(await db.fetchrow("SELECT * FROM campaign_recipients WHERE id = $1", ids[0]))
    assert after["bounced_at"] == before["bounced_at"] and after["bounce_type"] == "Permanent/General"
    assert after["delivered_at"] is not None  # recorded, but the bounce stands
    assert await db.fetchval("SELECT status FROM contacts WHERE email = 'user0@example.org'") == "bounced"
    assert await counters(db, campaign) == (1, 1, 0, 0, 0)
    # reversed order on the other recipient gives the same end state
    await apply(db, ev.delivery("m-1", "user1@example.org"))
    await apply(db, ev.bounce("m-1", "user1@example.org"))
    other = await db.fetchrow("SELECT bounce_type, delivered_at IS NOT NULL AS d FROM campaign_recipients "
                              "WHERE id = $1", ids[1])
    assert (other["bounce_type"], other["d"]) == ("Permanent/General", True)


async def test_unknown_message_ids_still_suppress(db: asyncpg.Connection) -> None:
    await seed_sent_campaign(db, 1)
    result = await apply(db, ev.complaint("never-sent-by-us", "Stranger@Elsewhere.example"),
                         ev.bounce("also-unknown", "user0@example.org"))
    assert result.suppressed == 2
    assert dict(await db.fetch("SELECT email, reason FROM suppressions")) == {
        "stranger@elsewhere.example": "complained", "user0@example.org": "bounced"}
    assert await db.fetchval("SELECT status FROM contacts WHERE email = 'user0@example.org'") == "bounced"
    assert await db.fetchval("SELECT count(*) FROM campaign_recipients WHERE bounced_at IS NOT NULL") == 0


async def test_tags_match_when_the_message_id_is_unknown(db: asyncpg.Connection) -> None:
    campaign, ids = await seed_sent_campaign(db, 2)
    tags = {"campaign_id": [str(campaign)], "recipient_id": [str(ids[1])]}
    await apply(db, ev.delivery("lost-id", "user1@example.org", tags=tags))
    forged = {"campaign_id": [str(campaign)], "recipient_id": [str(ids[0])]}  # tags naming another address
    await apply(db, ev.bounce("lost-id-2", "user1@example.org", tags=forged))
    rows = dict(await db.fetch("SELECT id, delivered_at IS NOT NULL FROM campaign_recipients"))
    assert rows == {ids[0]: False, ids[1]: True}
    assert await db.fetchval("SELECT bounced_at FROM campaign_recipients WHERE id = $1", ids[0]) is None


async def test_soft_bounces_suppress_at_the_limit(db: asyncpg.Connection) -> None:
    campaign, _ = await seed_sent_campaign(db, 2)
    for n in range(2):
        await apply(db, ev.bounce("m-0", "user0@example.org", bounce_type="Transient", feedback_id=f"f{n}"))
    assert await db.fetchval("SELECT count(*) FROM suppressions") == 0
    await apply(db, ev.bounce("m-0", "user0@example.org", bounce_type="Undetermined", feedback_id="f2"))
    row = await db.fetchrow("SELECT reason, detail FROM suppressions")
    assert (row["reason"], row["detail"]) == ("soft_bounced", "3 soft bounces in 30 days")
    assert await db.fetchval("SELECT status FROM contacts WHERE email = 'user0@example.org'") == "subscribed"
    assert await counters(db, campaign) == (0, 0, 1, 0, 0)
    await apply(db, ev.bounce("m-0", "user0@example.org", feedback_id="hard"))  # a hard bounce upgrades it
    assert await counters(db, campaign) == (0, 1, 1, 0, 0)
