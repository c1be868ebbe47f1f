"""promtool from Debian's prometheus package, and where the shipped rules and their unit tests live."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "config" / "prometheus" / "sender-rules.yml"
RULE_TESTS = ROOT / "tests" / "prometheus" / "sender-rules.test.yml"
README = ROOT / "README.md"


def promtool() -> str:
    """promtool, or a failure (never a skip): `make test` installs it from Debian's prometheus package."""
    path = shutil.which("promtool")
    assert path, "promtool is missing: `make tools` (run by `make test`) installs Debian's prometheus"
    return path


def run_promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *map(str, args)], capture_output=True, text=True, timeout=120, cwd=cwd)
