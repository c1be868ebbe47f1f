"""Settings are validated once; a bad value names its variable and never shows a secret."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sender.config import ConfigError, load_settings
from sender.redact import redact_dsn


def test_defaults() -> None:
    s = load_settings({})
    assert (s.region, s.http_host, s.http_port, s.crash_policy, s.max_attempts) == (
        "us-east-1", "127.0.0.1", 8080, "retry", 5)
    assert s.max_rate is None and s.concurrency is None and s.database_url is None


def test_ses_region_overrides_aws_region_and_endpoint_overrides() -> None:
    s = load_settings({"AWS_REGION": "eu-west-1", "SES_REGION": "eu-central-1",
                       "AWS_ENDPOINT_URL": "http://a", "AWS_ENDPOINT_URL_SESV2": "http://b"})
    assert (s.region, s.endpoint_url) == ("eu-central-1", "http://b")


@pytest.mark.parametrize(("env", "message"), [
    ({"SENDER_MAX_RATE": "fast"}, "SENDER_MAX_RATE: expected a number, got 'fast'"),
    ({"SENDER_MAX_RATE": "-3"}, "SENDER_MAX_RATE: must be at least"),
    ({"SENDER_MAX_RATE": "nan"}, "SENDER_MAX_RATE: must be at least"),
    ({"SENDER_CONCURRENCY": "2.5"}, "SENDER_CONCURRENCY: expected a whole number"),
    ({"SENDER_CRASH_POLICY": "maybe"}, "SENDER_CRASH_POLICY: expected one of retry, fail, got 'maybe'"),
    ({"SENDER_LOG_FORMAT": "xml"}, "SENDER_LOG_FORMAT"),
    ({"SENDER_HTTP_PORT": "70000"}, "SENDER_HTTP_PORT: must be at most 65535"),
    ({"SENDER_HTTP_PORT_BASE": "9000"}, "SENDER_HTTP_PORT_BASE: needs SENDER_INSTANCE_INDEX"),
    ({"SENDER_HTTP_PORT_BASE": "0", "SENDER_INSTANCE_INDEX": "1"}, "SENDER_HTTP_PORT_BASE: must be at least 1"),
    ({"SENDER_INSTANCE_INDEX": "-1"}, "SENDER_INSTANCE_INDEX: expected a whole number"),
    ({"DATABASE_URL": "mysql://u@h/db"}, "DATABASE_URL: expected a postgresql:// DSN"),
    ({"DATABASE_URL": "postgresql://u:p@h:notaport/db"}, "DATABASE_URL: malformed DSN"),
    ({"UNSUBSCRIBE_URL": "https://x/u"}, "UNSUBSCRIBE_URL: expected an http(s) URL containing {token}"),
    ({"UNSUBSCRIBE_URL": "https://x/u/{token}"}, "UNSUBSCRIBE_SECRET: required"),
])
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_settings(env)


def test_ports_from_a_base_and_the_instance_index() -> None:
    s = load_settings({"SENDER_INSTANCE_INDEX": "3", "SENDER_HTTP_PORT_BASE": "9100"})
    assert (s.instance_index, s.http_port, s.public_http_port) == (3, 9103, None)
    assert "@3-" in s.instance_id
    # port 0 (any free port) is no shared port; an explicit instance id wins over the derived one
    s = load_settings({"SENDER_INSTANCE_INDEX": "3", "SENDER_HTTP_PORT": "0", "SENDER_INSTANCE_ID": "blue-3"})
    assert (s.http_port, s.instance_id) == (0, "blue-3")
    assert load_settings({}).instance_index is None and "@" not in load_settings({}).instance_id


def test_secrets_never_in_repr_or_errors() -> None:
    s = load_settings({"DATABASE_URL": "postgresql://app:hunter2@db/app", "SENDER_ADMIN_TOKEN": "tok-secret",
                       "UNSUBSCRIBE_URL": "https://x/{token}", "UNSUBSCRIBE_SECRET": "mac-secret"})
    text = repr(s)
    assert "hunter2" not in text and "tok-secret" not in text and "mac-secret" not in text
    assert redact_dsn("postgresql://app:hunter2@db/app") == "postgresql://app:***@db/app"
    with pytest.raises(ConfigError) as err:
        load_settings({"DATABASE_URL": "postgresql://app:hunter2@db:bad/app"})
    assert "hunter2" not in str(err.value)


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SENDER_", "DATABASE_URL", "SES_"))}
    return subprocess.run([sys.executable, "-m", "sender", *args], env=base | env | {"SENDER_ENV_FILE": "/nonexistent"},
                          capture_output=True, text=True, timeout=60)


def test_cli_bad_value_is_one_clear_line_and_exit_2() -> None:
    result = run_cli("run", env={"SENDER_MAX_RATE": "lots", "DATABASE_URL": "postgresql://x@127.0.0.1:1/db",
                                 "SES_FROM_EMAIL": "a@example.com"})
    assert result.returncode == 2
    assert result.stderr.strip() == "sender: configuration error: SENDER_MAX_RATE: expected a number, got 'lots'"
    assert "Traceback" not in result.stderr


def test_cli_run_without_database_url_says_so() -> None:
    result = run_cli("run", env={"SES_FROM_EMAIL": "a@example.com"})
    assert result.returncode == 2
    assert "DATABASE_URL is not set" in result.stderr


def test_env_file_is_read_when_present(tmp_path: pytest.TempPathFactory) -> None:
    env_file = tmp_path / "custom.env"  # type: ignore[operator]
    env_file.write_text("SENDER_CRASH_POLICY=bogus\n")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SENDER_", "DATABASE_URL", "SES_"))}
    result = subprocess.run([sys.executable, "-m", "sender", "run"], env=base | {"SENDER_ENV_FILE": str(env_file)},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "SENDER_CRASH_POLICY" in result.stderr


@pytest.mark.parametrize(("dsn", "secret", "shown"), [
    ("postgresql://u@h/db?password=hunter2", "hunter2", "postgresql://u@h/db?password=***"),
    ("postgresql://u@h/db?sslmode=verify-full&sslpassword=keypass", "keypass",
     "postgresql://u@h/db?sslmode=verify-full&sslpassword=***"),
    ("postgresql://u@h/db?Password=hunter2&application_name=x", "hunter2",
     "postgresql://u@h/db?Password=***&application_name=x"),
    ("postgresql://app:p%40ss:w0rd@db:5432/app", "w0rd", "postgresql://app:***@db:5432/app"),
    ("host=db user=app password=hunter2 dbname=app", "hunter2", "host=db user=app password=*** dbname=app"),
    ("host=db password='hun ter2' sslpassword=keypass", "ter2", "host=db password=*** sslpassword=***"),
    ("postgresql://[::1/db?password=hunter2", "hunter2", "(malformed DSN)"),
])
def test_redact_dsn_hides_every_password_form(dsn: str, secret: str, shown: str) -> None:
    assert redact_dsn(dsn) == shown
    assert secret not in (redact_dsn(dsn) or "")


@pytest.mark.parametrize("dsn", ["postgresql://app@db/app?password=hunter2",
                                 "postgresql://app@db/app?sslpassword=hunter2"])
def test_query_passwords_never_in_settings_repr_or_errors(dsn: str) -> None:
    assert "hunter2" not in repr(load_settings({"DATABASE_URL": dsn}))
    assert "hunter2" not in str(load_settings({"DATABASE_URL": dsn}))
    for broken in (dsn.replace("@db/", "@db:bad/"), dsn.replace("postgresql", "mysql")):
        with pytest.raises(ConfigError) as err:
            load_settings({"DATABASE_URL": broken})
        assert "hunter2" not in str(err.value)


@pytest.mark.parametrize("raw", ["not-an-address", "news@localhost", "News <news>", "a b@example.com"])
def test_bad_from_address_is_refused_naming_the_variable(raw: str) -> None:
    with pytest.raises(ConfigError, match=r"^SES_FROM_EMAIL: not a valid sender address \("):
        load_settings({"SES_FROM_EMAIL": raw})


@pytest.mark.parametrize("raw", ["news@example.com", "News <news@example.com>", '"Acme, Inc." <news@example.com>'])
def test_from_address_with_display_name_is_accepted(raw: str) -> None:
    assert load_settings({"SES_FROM_EMAIL": raw}).from_email == raw


def test_cli_refuses_bad_from_address_with_one_line() -> None:
    result = run_cli("run", env={"SES_FROM_EMAIL": "not-an-address", "DATABASE_URL": "postgresql://x@127.0.0.1:1/db"})
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "sender: configuration error: SES_FROM_EMAIL: not a valid sender address (address has no @domain)")


def test_render_limits_have_defaults_and_bounds() -> None:
    s = load_settings({})
    assert (s.render_budget_ms, s.message_max_bytes) == (50.0, 1024 * 1024)
    s = load_settings({"SENDER_RENDER_BUDGET_MS": "20", "SENDER_MESSAGE_MAX_BYTES": "200000"})
    assert (s.render_budget_ms, s.message_max_bytes) == (20.0, 200_000)
    for env, message in (({"SENDER_RENDER_BUDGET_MS": "500"}, "SENDER_RENDER_BUDGET_MS: must be at most 100"),
                         ({"SENDER_RENDER_BUDGET_MS": "0"}, "SENDER_RENDER_BUDGET_MS: must be at least"),
                         ({"SENDER_MESSAGE_MAX_BYTES": "100"}, "SENDER_MESSAGE_MAX_BYTES: must be at least"),
                         ({"SENDER_MESSAGE_MAX_BYTES": str(50 * 1024 * 1024)},
                          "SENDER_MESSAGE_MAX_BYTES: must be at most")):
        with pytest.raises(ConfigError, match=message):
            load_settings(env)
