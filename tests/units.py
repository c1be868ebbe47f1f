"""The systemd units in config/ read as systemd reads them: directives in order, specifiers expanded."""

from __future__ import annotations

import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SINGLE = ROOT / "config" / "sender.service"
TEMPLATE = ROOT / "config" / "sender@.service"


def directives(unit: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) for every directive, in order (a key may repeat, e.g. SystemCallFilter)."""
    out: list[tuple[str, str, str]] = []
    section = ""
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{unit.name}: not a directive: {raw!r}"
        out.append((section, key.strip(), value.strip()))
    return out


def expand(value: str, *, instance: str, host: str) -> str:
    """The specifiers the units use: %i (instance name), %H (host name), %% (a percent sign)."""
    known = {"i": instance, "H": host, "%": "%"}
    out, chars = [], iter(value)
    for char in chars:
        if char == "%":
            spec = next(chars)
            assert spec in known, f"specifier %{spec} not handled here"
            out.append(known[spec])
        else:
            out.append(char)
    return "".join(out)


def instance_environment(unit: Path, *, instance: str, host: str = "mailhost") -> dict[str, str]:
    """What the unit's Environment= lines give one instance (EnvironmentFile values would win)."""
    env: dict[str, str] = {}
    for section, key, value in directives(unit):
        if (section, key) == ("Service", "Environment"):
            for assignment in shlex.split(expand(value, instance=instance, host=host)):
                name, _, setting = assignment.partition("=")
                env[name] = setting
    return env
