"""Settings from the environment (and an optional .env), validated once at start-up."""

from __future__ import annotations

import math
import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from sender.redact import redact_dsn


class ConfigError(Exception):
    """A bad setting; the message names the variable and is safe to print (no secret values)."""


def _secret_repr(value: str | None) -> str:
    return "None" if value is None else "'***'"


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    region: str = "us-east-1"
    from_email: str | None = None
    configuration_set: str | None = None
    endpoint_url: str | None = None
    max_rate: float | None = None
    concurrency: int | None = None
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    admin_token: str | None = field(default=None, repr=False)
    log_format: str | None = None
    log_level: str = "INFO"
    crash_policy: str = "retry"
    max_attempts: int = 5
    retry_base_seconds: float = 2.0
    retry_max_seconds: float = 300.0
    unsubscribe_url: str | None = None
    unsubscribe_secret: str | None = field(default=None, repr=False)
    claim_batch: int = 1000
    flush_size: int = 1000
    flush_interval: float = 0.1
    poll_interval: float = 1.0
    lease_seconds: float = 60.0
    heartbeat_interval: float = 1.0
    instance_timeout: float = 30.0
    materialise_chunk: int = 10_000
    grace_seconds: float = 20.0
    rate_headroom: float = 0.025  # the shared budget's margin under the cap (sender.shared_rate)
    probe_interval: float = 5.0
    send_timeout: float = 15.0
    template_max_bytes: int = 512 * 1024
    render_budget_ms: float = 50.0  # wall/CPU time one message's render may take (sender.render)
    message_max_bytes: int = 1024 * 1024  # rendered subject + HTML + text, UTF-8


    # production PostgreSQL (issue 17): connection budget, pooler, wake-ups, health at the limit
    db_pool_size: int = 4
    db_pool_min: int = 1
    db_idle_seconds: float = 60.0
    db_pooler: str = "direct"
    listen_database_url: str | None = field(default=None, repr=False)
    idle_poll_interval: float = 2.0
    db_unhealthy_seconds: float = 30.0
    db_retry_max_seconds: float = 10.0


    # -- deliverability (issue 11): public listener, SES events, suppression, account guard --
    public_http_host: str = "127.0.0.1"
    public_http_port: int | None = None
    public_base_url: str | None = None
    events_queue_url: str | None = None
    events_receivers: int = 3
    events_batch: int = 500
    sqs_endpoint_url: str | None = None
    sns_topic_arns: tuple[str, ...] = ()
    soft_bounce_limit: int = 3
    soft_bounce_days: float = 30.0
    max_bounce_rate: float = 0.04
    max_complaint_rate: float = 0.0008
    guard_min_sample: int = 200
    account_guard_window: int = 10_000
    events_retention_days: float = 30.0
    guard_interval: float = 5.0
    ses_suppression_sync: bool = False
    instance_id: str = field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    )

    def __post_init__(self) -> None:
        check_timing(self)

    def __repr__(self) -> str:  # secrets never reach logs, even through repr()
        hidden = {"admin_token", "unsubscribe_secret", "database_url", "listen_database_url"}
        shown = {k: v for k, v in self.__dict__.items() if k not in hidden}
        shown["database_url"] = redact_dsn(self.database_url)
        shown["listen_database_url"] = redact_dsn(self.listen_database_url)
        shown["admin_token"] = _secret_repr(self.admin_token)
        shown["unsubscribe_secret"] = _secret_repr(self.unsubscribe_secret)
        return f"Settings({shown})"

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def require_for_run(self) -> None:
        """`run` needs a database and a From address; fail early with the variable's name."""
        if not self.database_url:
            raise ConfigError("DATABASE_URL is not set: point it at the PostgreSQL database")
        if not self.from_email:
            raise ConfigError("SES_FROM_EMAIL is not set: the default verified From address")


def _number(env: Mapping[str, str], name: str, *, minimum: float, integer: bool = False) -> Any:
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


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str | None:
    raw = env.get(name, "").strip().lower()
    if raw == "":
        return None
    if raw not in choices:
        raise ConfigError(f"{name}: expected one of {', '.join(choices)}, got {raw!r}")
    return raw


def _dsn(env: Mapping[str, str], name: str = "DATABASE_URL") -> str | None:
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


def _optional(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


def _deliverability(env: Mapping[str, str], changes: Mapping[str, Any]) -> dict[str, Any]:
    """Issue 11 settings: public listener, SES events, suppression rules and the account guard."""
    from sender.tokens import check_unsubscribe_url

    out: dict[str, Any] = {}
    if host := _optional(env, "SENDER_PUBLIC_HTTP_HOST"):
        out["public_http_host"] = host
    port = _number(env, "SENDER_PUBLIC_HTTP_PORT", minimum=0, integer=True)
    if port is not None:
        if port > 65535:
            raise ConfigError(f"SENDER_PUBLIC_HTTP_PORT: must be at most 65535, got {port}")
        out["public_http_port"] = port
    base = _optional(env, "SENDER_PUBLIC_BASE_URL")
    if base:
        if not base.startswith(("https://", "http://")):
            raise ConfigError("SENDER_PUBLIC_BASE_URL: expected an http(s) URL, e.g. https://mail.example.com")
        out["public_base_url"] = base.rstrip("/")
        if not changes.get("unsubscribe_url") and changes.get("unsubscribe_secret"):
            out["unsubscribe_url"] = base.rstrip("/") + "/u/{token}"
    url = out.get("unsubscribe_url") or changes.get("unsubscribe_url")
    if url and (problem := check_unsubscribe_url(url)):
        raise ConfigError(f"UNSUBSCRIBE_URL: {problem}")
    if queue := _optional(env, "SENDER_EVENTS_QUEUE_URL"):
        if not queue.startswith(("https://", "http://")):
            raise ConfigError("SENDER_EVENTS_QUEUE_URL: expected the queue's https:// URL")
        out["events_queue_url"] = queue
    out["sqs_endpoint_url"] = _optional(env, "AWS_ENDPOINT_URL_SQS") or _optional(env, "AWS_ENDPOINT_URL")
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


# Every numeric setting: (variable, Settings field, minimum, whole number). Read by `_numbers`.
NUMBERS: tuple[tuple[str, str, float, bool], ...] = (
    ("SENDER_HTTP_PORT", "http_port", 0, True),
    ("SENDER_EVENTS_RECEIVERS", "events_receivers", 1, True),
    ("SENDER_EVENTS_BATCH", "events_batch", 1, True),
    ("SENDER_SOFT_BOUNCE_LIMIT", "soft_bounce_limit", 1, True),
    ("SENDER_SOFT_BOUNCE_DAYS", "soft_bounce_days", 0.01, False),
    ("SENDER_MAX_BOUNCE_RATE", "max_bounce_rate", 0, False),
    ("SENDER_MAX_COMPLAINT_RATE", "max_complaint_rate", 0, False),
    ("SENDER_GUARD_MIN_SAMPLE", "guard_min_sample", 1, True),
    ("SENDER_ACCOUNT_GUARD_WINDOW", "account_guard_window", 1, True),
    ("SENDER_EVENTS_RETENTION_DAYS", "events_retention_days", 1, False),
    ("SENDER_GUARD_INTERVAL", "guard_interval", 0.05, False),
    ("SENDER_MAX_ATTEMPTS", "max_attempts", 1, True),
    ("SENDER_RETRY_BASE_SECONDS", "retry_base_seconds", 0.01, False),
    ("SENDER_RETRY_MAX_SECONDS", "retry_max_seconds", 0.01, False),
    ("SENDER_CLAIM_BATCH", "claim_batch", 1, True),
    ("SENDER_FLUSH_SIZE", "flush_size", 1, True),
    ("SENDER_FLUSH_INTERVAL", "flush_interval", 0.01, False),
    ("SENDER_POLL_INTERVAL", "poll_interval", 0.05, False),
    ("SENDER_LEASE_SECONDS", "lease_seconds", 5, False),
    ("SENDER_GRACE_SECONDS", "grace_seconds", 0, False),
    ("SENDER_RATE_HEADROOM", "rate_headroom", 0, False),
    ("SENDER_PROBE_INTERVAL", "probe_interval", 0.1, False),
    ("SENDER_SEND_TIMEOUT", "send_timeout", 0.1, False),
    ("SENDER_TEMPLATE_MAX_BYTES", "template_max_bytes", 1, True),
    ("SENDER_HEARTBEAT_INTERVAL", "heartbeat_interval", 0.05, False),
    ("SENDER_INSTANCE_TIMEOUT", "instance_timeout", 0.5, False),
    ("SENDER_MATERIALISE_CHUNK", "materialise_chunk", 1, True),
    ("SENDER_DB_POOL_SIZE", "db_pool_size", 1, True),
    ("SENDER_DB_POOL_MIN", "db_pool_min", 0, True),
    ("SENDER_DB_IDLE_SECONDS", "db_idle_seconds", 0, False),
    ("SENDER_IDLE_POLL_INTERVAL", "idle_poll_interval", 0.05, False),
    ("SENDER_DB_UNHEALTHY_SECONDS", "db_unhealthy_seconds", 0.1, False),
    ("SENDER_DB_RETRY_MAX_SECONDS", "db_retry_max_seconds", 0.1, False),
)


def _numbers(env: Mapping[str, str]) -> dict[str, Any]:
    """Every numeric setting that is set, validated against its minimum (other bounds are checked after)."""
    changes: dict[str, Any] = {}
    for name, attr, minimum, integer in NUMBERS:
        value = _number(env, name, minimum=minimum, integer=integer)
        if value is not None:
            changes[attr] = value
    return changes


def load_settings(env: Mapping[str, str] | None = None, *, dotenv: bool = True) -> Settings:
    """Read and validate every setting; raise ConfigError naming the first bad variable."""
    if env is None:
        if dotenv:
            from dotenv import load_dotenv

            load_dotenv(os.environ.get("SENDER_ENV_FILE", ".env"), override=False)
        env = os.environ
    s = Settings()
    changes: dict[str, Any] = {
        "database_url": _dsn(env),
        "region": _optional(env, "SES_REGION") or _optional(env, "AWS_REGION") or s.region,
        "from_email": _optional(env, "SES_FROM_EMAIL"),
        "configuration_set": _optional(env, "SES_CONFIGURATION_SET"),
        "endpoint_url": _optional(env, "AWS_ENDPOINT_URL_SESV2") or _optional(env, "AWS_ENDPOINT_URL"),
        "max_rate": _number(env, "SENDER_MAX_RATE", minimum=0.01),
        "concurrency": _number(env, "SENDER_CONCURRENCY", minimum=1, integer=True),
        "http_host": _optional(env, "SENDER_HTTP_HOST") or s.http_host,
        "admin_token": _optional(env, "SENDER_ADMIN_TOKEN"),
        "log_format": _choice(env, "SENDER_LOG_FORMAT", ("json", "console")),
        "crash_policy": _choice(env, "SENDER_CRASH_POLICY", ("retry", "fail")) or s.crash_policy,
        "unsubscribe_url": _optional(env, "UNSUBSCRIBE_URL"),
        "unsubscribe_secret": _optional(env, "UNSUBSCRIBE_SECRET"),
    }
    level = _choice(env, "SENDER_LOG_LEVEL", ("debug", "info", "warning", "error"))
    changes["log_level"] = (level or s.log_level).upper()
    changes.update(_numbers(env))
    if changes.get("http_port", 0) > 65535:
        raise ConfigError(f"SENDER_HTTP_PORT: must be at most 65535, got {changes['http_port']}")
    if changes.get("rate_headroom", 0) >= 0.5:
        raise ConfigError("SENDER_RATE_HEADROOM: must be below 0.5 (a fraction of the cap)")
    changes.update(_deliverability(env, changes))
    if changes["unsubscribe_url"]:
        url = changes["unsubscribe_url"]
        if "{token}" not in url or not url.startswith(("https://", "http://")):
            raise ConfigError("UNSUBSCRIBE_URL: expected an http(s) URL containing {token}")
        if not changes["unsubscribe_secret"]:
            raise ConfigError("UNSUBSCRIBE_SECRET: required when UNSUBSCRIBE_URL is set")
    changes.update(_render_limits(env))
    if changes["from_email"]:
        changes["from_email"] = _from_address(changes["from_email"])
    if instance := _optional(env, "SENDER_INSTANCE_ID"):
        changes["instance_id"] = instance
    changes.update(_database_settings(env, s, changes))
    return replace(s, **changes)


def check_timing(s: Settings) -> None:
    """Refuse timings under which a live instance could look dead, or a row outlive its lease.

    A claimed row must be sent (or handed back) well within its lease, which no tick renews; an
    instance's rows are taken over once its heartbeat is `instance_timeout` old, so that must leave
    room for several heartbeats and a whole send.
    """
    if s.lease_seconds < max(3 * s.poll_interval, s.send_timeout + 1):
        raise ConfigError(
            f"SENDER_LEASE_SECONDS: must be at least 3 poll intervals and one send timeout plus 1 s "
            f"(at least {max(3 * s.poll_interval, s.send_timeout + 1):g} with SENDER_POLL_INTERVAL="
            f"{s.poll_interval:g} and SENDER_SEND_TIMEOUT={s.send_timeout:g}), got {s.lease_seconds:g}")
    minimum = s.send_timeout + 3 * s.heartbeat_interval
    if s.instance_timeout < minimum:
        raise ConfigError(
            f"SENDER_INSTANCE_TIMEOUT: must be at least one send timeout plus 3 heartbeats ({minimum:g} "
            f"with SENDER_SEND_TIMEOUT={s.send_timeout:g} and SENDER_HEARTBEAT_INTERVAL="
            f"{s.heartbeat_interval:g}), got {s.instance_timeout:g}")


MAX_RENDER_BUDGET_MS = 100.0  # one render must never block the event loop for longer
MAX_MESSAGE_BYTES = 10 * 1024 * 1024  # SES takes 40 MB after MIME encoding; 10 MB leaves room


def _render_limits(env: Mapping[str, str]) -> dict[str, Any]:
    """SENDER_RENDER_BUDGET_MS and SENDER_MESSAGE_MAX_BYTES, within the bounds that keep the loop live."""
    changes: dict[str, Any] = {}
    budget = _number(env, "SENDER_RENDER_BUDGET_MS", minimum=1)
    if budget is not None:
        if budget > MAX_RENDER_BUDGET_MS:
            raise ConfigError(f"SENDER_RENDER_BUDGET_MS: must be at most {MAX_RENDER_BUDGET_MS:g}, got {budget:g}")
        changes["render_budget_ms"] = budget
    size = _number(env, "SENDER_MESSAGE_MAX_BYTES", minimum=1024, integer=True)
    if size is not None:
        if size > MAX_MESSAGE_BYTES:
            raise ConfigError(f"SENDER_MESSAGE_MAX_BYTES: must be at most {MAX_MESSAGE_BYTES}, got {size}")
        changes["message_max_bytes"] = size
    return changes


def _from_address(raw: str) -> str:
    """SES_FROM_EMAIL must be an address SES accepts (a display name is fine); refused at start-up."""
    from sender.addresses import AddressError, normalise_address

    try:
        normalise_address(raw, allow_display_name=True)
    except AddressError as exc:
        raise ConfigError(f"SES_FROM_EMAIL: not a valid sender address ({exc})") from None
    return raw


def _database_settings(env: Mapping[str, str], s: Settings, numbers: Mapping[str, Any]) -> dict[str, Any]:
    """Connection budget, pooler topology and database health timings (README "Sizing PostgreSQL")."""
    changes: dict[str, Any] = {
        "db_pooler": _choice(env, "SENDER_DB_POOLER", ("direct", "session", "transaction")) or s.db_pooler,
        "listen_database_url": _dsn(env, "SENDER_LISTEN_DATABASE_URL"),
    }
    size = numbers.get("db_pool_size", s.db_pool_size)
    floor = numbers.get("db_pool_min", min(s.db_pool_min, size))
    if floor > size:
        raise ConfigError(f"SENDER_DB_POOL_MIN: must not exceed SENDER_DB_POOL_SIZE ({size}), got {floor}")
    changes["db_pool_min"] = floor
    return changes
