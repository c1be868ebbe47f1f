"""Settings from the environment (and an optional .env), validated once at start-up: what the
settings are, how they combine, and the timings they must respect (`sender.envparse` reads them)."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from sender.envparse import (
    ConfigError,
    choice,
    deliverability,
    dsn,
    from_address,
    listener_ports,
    number,
    optional,
    render_limits,
)
from sender.redact import redact_dsn

__all__ = ["NUMBERS", "ConfigError", "Settings", "check_timing", "default_instance_id", "load_settings"]


def default_instance_id(index: int | None = None) -> str:
    """Unique per process, so a restarted instance never takes over its predecessor's claims under
    the same name: `host-pid-random`, or `host@N-pid-random` for sender@N.service."""
    host = socket.gethostname() if index is None else f"{socket.gethostname()}@{index}"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


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
    max_sending_campaigns: int = 1000  # campaigns sending at once, cluster-wide; more stay queued (sender.tick)
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
    # several instances on one host (config/sender@.service): N of sender@N, which the ports add to
    instance_index: int | None = None
    instance_id: str = field(default_factory=lambda: default_instance_id())

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

    def require_database(self) -> str:
        """The DSN every command that touches the database needs; ConfigError naming it when unset."""
        if not self.database_url:
            raise ConfigError("DATABASE_URL is not set: point it at the PostgreSQL database")
        return self.database_url

    def require_for_run(self) -> None:
        """`run` needs a database and a From address; fail early with the variable's name."""
        self.require_database()
        if not self.from_email:
            raise ConfigError("SES_FROM_EMAIL is not set: the default verified From address")


# Every numeric setting: (variable, Settings field, minimum, whole number). Read by `_numbers`.
NUMBERS: tuple[tuple[str, str, float, bool], ...] = (
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
    ("SENDER_MAX_SENDING_CAMPAIGNS", "max_sending_campaigns", 1, True),
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
        value = number(env, name, minimum=minimum, integer=integer)
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
        "database_url": dsn(env),
        "region": optional(env, "SES_REGION") or optional(env, "AWS_REGION") or s.region,
        "from_email": optional(env, "SES_FROM_EMAIL"),
        "configuration_set": optional(env, "SES_CONFIGURATION_SET"),
        "endpoint_url": optional(env, "AWS_ENDPOINT_URL_SESV2") or optional(env, "AWS_ENDPOINT_URL"),
        "max_rate": number(env, "SENDER_MAX_RATE", minimum=0.01),
        "concurrency": number(env, "SENDER_CONCURRENCY", minimum=1, integer=True),
        "http_host": optional(env, "SENDER_HTTP_HOST") or s.http_host,
        "admin_token": optional(env, "SENDER_ADMIN_TOKEN"),
        "log_format": choice(env, "SENDER_LOG_FORMAT", ("json", "console")),
        "crash_policy": choice(env, "SENDER_CRASH_POLICY", ("retry", "fail")) or s.crash_policy,
        "unsubscribe_url": optional(env, "UNSUBSCRIBE_URL"),
        "unsubscribe_secret": optional(env, "UNSUBSCRIBE_SECRET"),
    }
    level = choice(env, "SENDER_LOG_LEVEL", ("debug", "info", "warning", "error"))
    changes["log_level"] = (level or s.log_level).upper()
    changes.update(_numbers(env))
    changes.update(listener_ports(env))
    if changes.get("rate_headroom", 0) >= 0.5:
        raise ConfigError("SENDER_RATE_HEADROOM: must be below 0.5 (a fraction of the cap)")
    changes.update(deliverability(env, changes))
    if changes["unsubscribe_url"]:
        url = changes["unsubscribe_url"]
        if "{token}" not in url or not url.startswith(("https://", "http://")):
            raise ConfigError("UNSUBSCRIBE_URL: expected an http(s) URL containing {token}")
        if not changes["unsubscribe_secret"]:
            raise ConfigError("UNSUBSCRIBE_SECRET: required when UNSUBSCRIBE_URL is set")
    changes.update(render_limits(env))
    if changes["from_email"]:
        changes["from_email"] = from_address(changes["from_email"])
    if instance := optional(env, "SENDER_INSTANCE_ID"):
        changes["instance_id"] = instance
    elif "instance_index" in changes:
        changes["instance_id"] = default_instance_id(changes["instance_index"])
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


def _database_settings(env: Mapping[str, str], s: Settings, numbers: Mapping[str, Any]) -> dict[str, Any]:
    """Connection budget, pooler topology and database health timings (README "Sizing PostgreSQL")."""
    changes: dict[str, Any] = {
        "db_pooler": choice(env, "SENDER_DB_POOLER", ("direct", "session", "transaction")) or s.db_pooler,
        "listen_database_url": dsn(env, "SENDER_LISTEN_DATABASE_URL"),
    }
    size = numbers.get("db_pool_size", s.db_pool_size)
    floor = numbers.get("db_pool_min", min(s.db_pool_min, size))
    if floor > size:
        raise ConfigError(f"SENDER_DB_POOL_MIN: must not exceed SENDER_DB_POOL_SIZE ({size}), got {floor}")
    changes["db_pool_min"] = floor
    return changes
