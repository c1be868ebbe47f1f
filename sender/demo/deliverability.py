"""The deliverability part of `sender demo`: the fake SES emits bounce, complaint and delivery
events into a local queue the daemon consumes; one recipient unsubscribes through the public
endpoint; a second campaign to the same list leaves every suppressed address out."""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import time
import zlib
from dataclasses import dataclass
from typing import Any, TextIO

import aiohttp
import asyncpg

from sender.config import Settings
from sender.db import QUERIES
from sender.demo.fakeses import FakeSES, ReceivedMessage
from sender.demo.fakesqs import FakeSQS

DEMO_GUARD = {"max_bounce_rate": 0.08, "max_complaint_rate": 0.02}  # the demo's shares stay under these


def ses_event(message: ReceivedMessage, kind: str) -> dict[str, Any]:
    """An SES configuration-set event for one sent message, shaped like AWS's documented examples."""
    address = message.to[0]
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    event: dict[str, Any] = {"eventType": kind, "mail": {
        "timestamp": stamp, "source": message.from_email, "messageId": message.message_id,
        "destination": [address], "tags": {k: [v] for k, v in message.tags.items()}}}
    if kind == "Bounce":
        event["bounce"] = {"bounceType": "Permanent", "bounceSubType": "General", "timestamp": stamp,
                           "feedbackId": f"fb-{message.message_id}",
                           "bouncedRecipients": [{"emailAddress": address, "action": "failed", "status": "5.1.1",
                                                  "diagnosticCode": "smtp; 550 5.1.1 user unknown"}]}
    elif kind == "Complaint":
        event["complaint"] = {"complainedRecipients": [{"emailAddress": address}], "timestamp": stamp,
                              "feedbackId": f"fb-{message.message_id}", "complaintFeedbackType": "abuse"}
    else:
        event["delivery"] = {"timestamp": stamp, "recipients": [address], "processingTimeMillis": 500,
                             "smtpResponse": "250 2.6.0 Message received"}
    return {"Type": "Notification", "MessageId": f"sns-{message.message_id}", "Message": json.dumps(event),
            "TopicArn": "arn:aws:sns:us-east-1:123456789012:ses-events", "Timestamp": stamp}


def event_kind(address: str, bounce_share: float, complaint_share: float) -> str:
    """A stable pick per address, so a re-run of the demo tells the same story."""
    x = (zlib.crc32(address.encode()) % 10_000) / 10_000
    return "Bounce" if x < bounce_share else "Complaint" if x < bounce_share + complaint_share else "Delivery"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LoopResult:
    delivered: int
    bounced: int
    complained: int
    unsubscribed: int
    second_campaign: int
    second_recipients: int
    left_out: int


class DeliverabilityDemo:
    def __init__(self, *, bounce_share: float = 0.03, complaint_share: float = 0.005) -> None:
        self.sqs = FakeSQS()
        self.bounce_share = bounce_share
        self.complaint_share = complaint_share
        self.emitted = 0
        self.event_delay = 1.5
        self.queue_url = ""

    async def start(self, fake: FakeSES, settings: Settings) -> Settings:
        """Wire the fake SES to the fake queue; the daemon settings that consume it."""
        await self.sqs.start()
        self.queue_url = self.sqs.create_queue("ses-events")
        queue = self.sqs.queue(self.queue_url)

        loop = asyncio.get_running_loop()

        def emit(message: ReceivedMessage) -> None:
            body = json.dumps(ses_event(message, event_kind(message.to[0], self.bounce_share, self.complaint_share)))
            # SES publishes events seconds after it accepts a message, after the daemon has
            # recorded the message id; an instant event would race the write-back for the row
            loop.call_later(self.event_delay, queue.send, body)
            self.emitted += 1

        fake.on_message = emit
        port = free_port()
        return settings.with_overrides(
            events_queue_url=self.queue_url, sqs_endpoint_url=self.sqs.url, configuration_set="demo-events",
            public_http_port=port, public_base_url=f"http://127.0.0.1:{port}",
            unsubscribe_url=f"http://127.0.0.1:{port}/u/{{token}}", unsubscribe_secret=secrets.token_urlsafe(24),
            guard_interval=0.5, **DEMO_GUARD)

    async def stop(self) -> None:
        await self.sqs.stop()

    async def after_first_campaign(self, conn: asyncpg.Connection, fake: FakeSES, campaign_id: int,
                                   out: TextIO) -> LoopResult:
        """Let the events drain, unsubscribe one recipient by its link, send a second campaign."""
        queue = self.sqs.queue(self.queue_url)
        for _ in range(600):  # up to a minute for the last events to be applied and deleted
            if not (queue.ready or queue.in_flight() or queue.deleted < self.emitted):
                break
            await asyncio.sleep(0.1)
        delivered = [m for m in fake.messages if "List-Unsubscribe" in m.headers
                     and event_kind(m.to[0], self.bounce_share, self.complaint_share) == "Delivery"]
        if delivered:
            link = delivered[0].headers["List-Unsubscribe"].strip("<>")
            async with aiohttp.ClientSession() as http, http.post(
                    link, data="List-Unsubscribe=One-Click",
                    headers={"Content-Type": "application/x-www-form-urlencoded"}) as resp:
                out.write(f"one-click unsubscribe of one recipient: HTTP {resp.status}\n")
        row = await conn.fetchrow(QUERIES["demo_campaign_events"], campaign_id)
        second = int(await conn.fetchval(QUERIES["demo_queue_campaign"], "Demo follow-up", row["template_id"], {}))
        for _ in range(1200):  # the daemon picks it up within a tick; sending takes as long as it takes
            if await conn.fetchval(QUERIES["campaign_status"], second) not in ("queued", "sending"):
                break
            await asyncio.sleep(0.2)
        total = int(await conn.fetchval(QUERIES["campaign_total"], second))
        contacts = int(await conn.fetchval(QUERIES["contacts_count"]))
        return LoopResult(delivered=row["delivered_count"], bounced=row["hard_bounced_count"],
                          complained=row["complained_count"], unsubscribed=row["unsubscribed_count"],
                          second_campaign=second, second_recipients=total, left_out=contacts - total)


def format_loop(r: LoopResult) -> str:
    return (f"events: delivered={r.delivered} bounced={r.bounced} complained={r.complained} "
            f"unsubscribed={r.unsubscribed}; campaign {r.second_campaign} to the same list: "
            f"{r.second_recipients} recipients, {r.left_out} suppressed or unsubscribed left out")
