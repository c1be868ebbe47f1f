"""config/sender.service and the template config/sender@.service: both verify under systemd, the
template keeps every convention of the single unit, and each instance gets its own id and ports."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sender.config import ConfigError, load_settings
from tests.units import SINGLE, TEMPLATE, directives, instance_environment

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
SENDER = Path(sys.executable).with_name("sender")


def test_template_keeps_every_setting_of_the_single_unit() -> None:
    """Hardening, watchdog, restart, stop timeout, ExecStart/ExecStartPre, EnvironmentFile, [Install]."""
    per_instance = {("Unit", "Description"), ("Service", "Environment")}
    template = directives(TEMPLATE)
    missing = [d for d in directives(SINGLE) if (d[0], d[1]) not in per_instance and d not in template]
    assert missing == []
    assert [d for d in template if (d[0], d[1]) not in per_instance and d not in directives(SINGLE)] == []
    assert "%i" in dict((k, v) for _, k, v in template)["Description"]


def _verifiable_copy(unit: Path, tmp_path: Path) -> Path:
    """The unit with its install paths pointed at this checkout, since verify checks they exist."""
    env_file = tmp_path / "sender.env"
    env_file.write_text("")
    text = unit.read_text().replace("/opt/sender/.venv/bin/sender", str(SENDER))
    copy = tmp_path / unit.name
    copy.write_text(text.replace("/etc/sender/sender.env", str(env_file)))
    return copy


def _verify(unit: Path, name: str) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run([SYSTEMD_ANALYZE, "verify", str(unit.with_name(name))], capture_output=True,
                          text=True, timeout=60, cwd=unit.parent)


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize(("unit", "name"), [(SINGLE, "sender.service"), (TEMPLATE, "sender@2.service")])
def test_systemd_analyze_verifies_the_unit(unit: Path, name: str, tmp_path: Path) -> None:
    result = _verify(_verifiable_copy(unit, tmp_path), name)
    assert (result.returncode, result.stderr) == (0, "")
    # the same check does see a mistake: a misspelt directive is reported
    broken = tmp_path / "broken"
    broken.mkdir()
    copy = _verifiable_copy(unit, broken)
    copy.write_text(copy.read_text().replace("WatchdogSec=", "WatchdogSecs="))
    assert "Unknown key 'WatchdogSecs'" in _verify(copy, name).stderr


def test_two_instances_of_the_template_get_their_own_id_and_ports() -> None:
    env_file = {"SENDER_PUBLIC_HTTP_PORT_BASE": "9000"}  # what /etc/sender/sender.env might add
    first = load_settings(instance_environment(TEMPLATE, instance="1") | env_file)
    second = load_settings(instance_environment(TEMPLATE, instance="2") | env_file)
    assert (first.http_port, second.http_port) == (8081, 8082)
    assert (first.public_http_port, second.public_http_port) == (9001, 9002)
    host = socket.gethostname()
    assert first.instance_id.startswith(f"{host}@1-") and second.instance_id.startswith(f"{host}@2-")
    # unique per process start too: a restarted instance never reuses its predecessor's name
    assert load_settings(instance_environment(TEMPLATE, instance="1")).instance_id != first.instance_id


@pytest.mark.parametrize(("instance", "env_file", "message"), [
    ("1", {"SENDER_HTTP_PORT": "8080"}, "SENDER_HTTP_PORT_BASE: set either SENDER_HTTP_PORT or"),
    ("1", {"SENDER_PUBLIC_HTTP_PORT": "8443"}, "SENDER_PUBLIC_HTTP_PORT: 8443 would be the same for every"),
    ("blue", {}, "SENDER_INSTANCE_INDEX: expected a whole number \\(the N of sender@N.service\\), got 'blue'"),
    ("60000", {}, "SENDER_HTTP_PORT_BASE: 8080 \\+ SENDER_INSTANCE_INDEX 60000 is past port 65535"),
])
def test_a_misconfigured_instance_stops_naming_the_variable(instance: str, env_file: dict[str, str],
                                                            message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(instance_environment(TEMPLATE, instance=instance) | env_file)
