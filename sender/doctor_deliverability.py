"""`sender doctor` rows for deliverability: the configuration set, its event destinations, the
events queue and the public endpoint. Shown only when one of those is configured."""

from __future__ import annotations

from typing import Any

import aiohttp

from sender.config import Settings
from sender.doctor import FAIL, PASS, WARN, Check
from sender.ses import classify

BACKLOG_WARN = 10_000  # messages waiting in the events queue before the row warns
NEEDED = ("BOUNCE", "COMPLAINT")


def wanted(settings: Settings) -> bool:
    return bool(settings.configuration_set or settings.events_queue_url or settings.public_base_url
                or settings.sns_topic_arns)


async def deliverability_checks(settings: Settings, client: Any) -> list[Check]:
    if not wanted(settings):
        return []
    checks = await _configuration_set(settings, client)
    checks.append(await _events_queue(settings))
    checks.append(await _public_endpoint(settings))
    return checks


async def _configuration_set(settings: Settings, client: Any) -> list[Check]:
    name = settings.configuration_set
    if not name:
        return [Check("configuration_set", FAIL, "SES_CONFIGURATION_SET is not set: SES publishes no events",
                      "create a configuration set with an SNS event destination and set SES_CONFIGURATION_SET")]
    try:
        await client.get_configuration_set(ConfigurationSetName=name)
        found = await client.get_configuration_set_event_destinations(ConfigurationSetName=name)
    except Exception as exc:
        failure = classify(exc, from_email="", default_from=None)
        if failure.code == "NotFoundException":
            return [Check("configuration_set", FAIL, f"configuration set {name} does not exist",
                          f"aws sesv2 create-configuration-set --configuration-set-name {name}")]
        return [Check("configuration_set", FAIL, f"cannot read configuration set {name} ({failure.code})",
                      "allow ses:GetConfigurationSet and ses:GetConfigurationSetEventDestinations")]
    checks = [Check("configuration_set", PASS, f"configuration set {name} exists")]
    types: set[str] = set()
    for dest in found.get("EventDestinations", []):
        if dest.get("Enabled", True):
            types.update(dest.get("MatchingEventTypes", []))
    missing = [t for t in NEEDED if t not in types]
    if missing:
        checks.append(Check("event_destinations", FAIL, f"no enabled event destination for {', '.join(missing)}",
                            "add an SNS (or EventBridge) event destination for BOUNCE, COMPLAINT and DELIVERY "
                            "feeding the queue in SENDER_EVENTS_QUEUE_URL", data={"types": sorted(types)}))
    elif "DELIVERY" not in types:
        checks.append(Check("event_destinations", WARN, "BOUNCE and COMPLAINT published; DELIVERY is not",
                            "add DELIVERY to the event destination to see delivered counts",
                            data={"types": sorted(types)}))
    else:
        checks.append(Check("event_destinations", PASS, "BOUNCE, COMPLAINT and DELIVERY are published",
                            data={"types": sorted(types)}))
    return checks


async def _events_queue(settings: Settings) -> Check:
    url = settings.events_queue_url
    if not url:
        if settings.sns_topic_arns:
            return Check("events_queue", PASS, "events arrive by SNS HTTPS at /ses/events (no queue configured)")
        return Check("events_queue", FAIL, "SENDER_EVENTS_QUEUE_URL is not set: no bounce or complaint is applied",
                     "subscribe an SQS queue to the event topic and set SENDER_EVENTS_QUEUE_URL")
    import aioboto3

    try:
        async with aioboto3.Session().client("sqs", region_name=settings.region,
                                             endpoint_url=settings.sqs_endpoint_url) as sqs:
            attrs = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
                "ApproximateNumberOfMessages", "RedrivePolicy"]))["Attributes"]
    except Exception as exc:
        code = classify(exc, from_email="", default_from=None).code
        return Check("events_queue", FAIL, f"events queue unreachable ({code})",
                     "check SENDER_EVENTS_QUEUE_URL and allow sqs:ReceiveMessage, sqs:DeleteMessage, "
                     "sqs:GetQueueAttributes")
    waiting = int(attrs.get("ApproximateNumberOfMessages", 0))
    data = {"waiting": waiting, "dead_letter_queue": "RedrivePolicy" in attrs}
    if waiting > BACKLOG_WARN:
        return Check("events_queue", WARN, f"events queue backing up: {waiting} messages waiting",
                     "is a daemon running with SENDER_EVENTS_QUEUE_URL? raise SENDER_EVENTS_RECEIVERS", data=data)
    if "RedrivePolicy" not in attrs:
        return Check("events_queue", WARN, f"events queue reachable, {waiting} waiting, no dead-letter queue",
                     "add a redrive policy so unreadable messages move aside", data=data)
    return Check("events_queue", PASS, f"events queue reachable, {waiting} waiting", data=data)


async def _public_endpoint(settings: Settings) -> Check:
    base = settings.public_base_url
    if not base:
        return Check("public_endpoint", WARN, "SENDER_PUBLIC_BASE_URL is not set: unsubscribe endpoint not checked",
                     "set SENDER_PUBLIC_BASE_URL to the URL the public listener is reachable at")
    try:
        async with aiohttp.ClientSession() as http, http.get(
                f"{base}/healthz", timeout=aiohttp.ClientTimeout(total=10)) as resp:
            ok = resp.status == 200
            status = resp.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Check("public_endpoint", FAIL, f"{base} does not answer ({type(exc).__name__})",
                     "start `sender run` with SENDER_PUBLIC_HTTP_PORT and route SENDER_PUBLIC_BASE_URL to it")
    if not ok:
        return Check("public_endpoint", FAIL, f"{base}/healthz answered HTTP {status}",
                     "route SENDER_PUBLIC_BASE_URL to the public listener (SENDER_PUBLIC_HTTP_PORT)")
    return Check("public_endpoint", PASS, f"{base} answers (unsubscribe links are served)")
