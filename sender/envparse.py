"""Environment variables read one at a time, or in the groups that belong together; every error
names the variable (`sender.config` composes them into `Settings`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit


class ConfigError(Exception):
    """A bad setting; the message names the variable and is safe to print (no secret values)."""


MAX_PORT = 65535
MAX_RENDER_BUDGET_MS = 100.0  # one render must never block the event loop for longer
MAX_MESSAGE_BYTES = 10 * 1024 * 1024  # SES takes 40 MB after MIME encoding; 10 MB leaves room


def number(env: Mapping[str, str], name: str, *, minimum: float, integer: bool = False) -> Any:
    raw = env.get(name, "").strip()
    if raw == "":
        return None
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        kind = "a whole number" if integer else "a number"
        raise ConfigError(f"{name}: expected {kind}, got {raw!r}") from None
    if not math.isfinite(value) or value < minimum:
        raise ConfigError(f"{name}: must be at least {minimum}, got {raw!r}")
    return value


def choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str | None:
    raw = env.get(name, "").strip().lower()
    if raw == "":
        return None
    if raw not in choices:
        raise ConfigError(f"{name}: expected one of {', '.join(choices)}, got {raw!r}")
    return raw


def dsn(env: Mapping[str, str], name: str = "DATABASE_URL") -> str | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise ConfigError(f"{name}: malformed DSN (bad port or syntax)") from None
    if parts.scheme not in ("postgres", "postgresql"):
        raise ConfigError(
            f"{name}: expected a postgresql:// DSN, got scheme "
            f"{parts.scheme or '(none)'!r}"
        )
    return raw


def optional(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


def listener_ports(env: Mapping[str, str]) -> dict[str, Any]:
    """SENDER_HTTP_PORT and SENDER_PUBLIC_HTTP_PORT, or with several instances on one host
    (`sender@N.service` sets SENDER_INSTANCE_INDEX=N) each port as `*_PORT_BASE` + N."""
    raw = env.get("SENDER_INSTANCE_INDEX", "").strip()
    if raw and not (raw.isascii() and raw.isdigit()):
        raise ConfigError(f"SENDER_INSTANCE_INDEX: expected a whole number (the N of sender@N.service), "
                          f"got {raw[:40]!r}")
    index = int(raw) if raw else None
    out: dict[str, Any] = {} if index is None else {"instance_index": index}
    for name, attr in (("SENDER_HTTP_PORT", "http_port"), ("SENDER_PUBLIC_HTTP_PORT", "public_http_port")):
        port = _instance_port(env, name, index)
        if port is not None:
            out[attr] = port
    return out


def _instance_port(env: Mapping[str, str], name: str, index: int | None) -> int | None:
    port: int | None = number(env, name, minimum=0, integer=True)
    base: int | None = number(env, f"{name}_BASE", minimum=1, integer=True)
    if port is not None and port > MAX_PORT:
        raise ConfigError(f"{name}: must be at most {MAX_PORT}, got {port}")
    if base is None:
        if index is not None and port:
            raise ConfigError(f"{name}: {port} would be the same for every instance on this host "
                              f"(SENDER_INSTANCE_INDEX={index} is set): set {name}_BASE instead "
                              f"(port = base + index)")
        return port
    if port is not None:
        raise ConfigError(f"{name}_BASE: set either {name} or {name}_BASE, not both")
    if index is None:
        raise ConfigError(f"{name}_BASE: needs SENDER_INSTANCE_INDEX (sender@N.service sets it to N): "
                          f"the port is base + index")
    if base + index > MAX_PORT:
        raise ConfigError(f"{name}_BASE: {base} + SENDER_INSTANCE_INDEX {index} is past port {MAX_PORT}")
    return base + index


def deliverability(env: Mapping[str, str], changes: Mapping[str, Any]) -> dict[str, Any]:
    """Issue 11 settings: public listener, SES events, suppression rules and the account guard."""
    from sender.tokens import check_unsubscribe_url

    out: dict[str, Any] = {}
    if host := optional(env, "SENDER_PUBLIC_HTTP_HOST"):
        out["public_http_host"] = host
    base = optional(env, "SENDER_PUBLIC_BASE_URL")
    if base:
        if not base.startswith(("https://", "http://")):
            raise ConfigError("SENDER_PUBLIC_BASE_URL: expected an http(s) URL, e.g. https://mail.example.com")
        out["public_base_url"] = base.rstrip("/")
        if not changes.get("unsubscribe_url") and changes.get("unsubscribe_secret"):
            out["unsubscribe_url"] = base.rstrip("/") + "/u/{token}"
    url = out.get("unsubscribe_url") or changes.get("unsubscribe_url")
    if url and (problem := check_unsubscribe_url(url)):
        raise ConfigError(f"UNSUBSCRIBE_URL: {problem}")
    if queue := optional(env, "SENDER_EVENTS_QUEUE_URL"):
        if not queue.startswith(("https://", "http://")):
            raise ConfigError("SENDER_EVENTS_QUEUE_URL: expected the queue's https:// URL")
        out["events_queue_url"] = queue
    out["sqs_endpoint_url"] = optional(env, "AWS_ENDPOINT_URL_SQS") or optional(env, "AWS_ENDPOINT_URL")
    arns = tuple(a.strip() for a in env.get("SENDER_SNS_TOPIC_ARNS", "").split(",") if a.strip())
    for arn in arns:
        if not arn.startswith("arn:aws") or arn.count(":") != 5:
            raise ConfigError(f"SENDER_SNS_TOPIC_ARNS: not a topic ARN: {arn[:100]!r}")
    out["sns_topic_arns"] = arns
    sync = env.get("SENDER_SES_SUPPRESSION_SYNC", "").strip().lower()
    if sync not in ("", "0", "1", "true", "false", "yes", "no", "on", "off"):
        raise ConfigError(f"SENDER_SES_SUPPRESSION_SYNC: expected true or false, got {sync[:20]!r}")
    out["ses_suppression_sync"] = sync in ("1", "true", "yes", "on")
    for name, attr in (("SENDER_MAX_BOUNCE_RATE", "max_bounce_rate"),
                       ("SENDER_MAX_COMPLAINT_RATE", "max_complaint_rate")):
        if changes.get(attr, 0) > 1:
            raise ConfigError(f"{name}: a fraction between 0 and 1 (0.04 means 4%), got {changes[attr]}")
    return out


def render_limits(env: Mapping[str, str]) -> dict[str, Any]:
    """SENDER_RENDER_BUDGET_MS and SENDER_MESSAGE_MAX_BYTES, within the bounds that keep the loop live."""
    changes: dict[str, Any] = {}
    budget = number(env, "SENDER_RENDER_BUDGET_MS", minimum=1)
    if budget is not None:
        if budget > MAX_RENDER_BUDGET_MS:
            raise ConfigError(f"SENDER_RENDER_BUDGET_MS: must be at most {MAX_RENDER_BUDGET_MS:g}, got {budget:g}")
        changes["render_budget_ms"] = budget
    size = number(env, "SENDER_MESSAGE_MAX_BYTES", minimum=1024, integer=True)
    if size is not None:
        if size > MAX_MESSAGE_BYTES:
            raise ConfigError(f"SENDER_MESSAGE_MAX_BYTES: must be at most {MAX_MESSAGE_BYTES}, got {size}")
        changes["message_max_bytes"] = size
    return changes


def from_address(raw: str) -> str:
    """SES_FROM_EMAIL must be an address SES accepts (a display name is fine); refused at start-up."""
    from sender.addresses import AddressError, normalise_address

    try:
        normalise_address(raw, allow_display_name=True)
    except AddressError as exc:
        raise ConfigError(f"SES_FROM_EMAIL: not a valid sender address ({exc})") from None
    return raw
