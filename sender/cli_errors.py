"""How every `sender` command reports a bad option: one line on stderr naming it, exit status 2."""

from __future__ import annotations

import sys

USAGE = 2


def bad_option(option: str, problem: object) -> int:
    """Print `sender: OPTION: PROBLEM` and return the exit status for a usage error."""
    print(f"sender: {option}: {problem}", file=sys.stderr)
    return USAGE
