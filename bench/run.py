"""Run the benchmark set: `make bench` (quick, a few minutes) or `make bench-full` (the targets' sizes).

Each benchmark prints its conditions and figures and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

QUICK = [
    ["bench.throughput", "--messages", "3000", "--repeats", "3"],
    ["bench.rate", "--seconds", "10"],
    ["bench.first_send", "--runs", "20"],
    ["bench.materialise", "--contacts", "100000"],
    ["bench.scale", "--recipients", "100000"],
    ["bench.writes", "--messages", "3000"],


    ["bench.pgbouncer", "--messages", "5000", "--repeats", "2"],


    ["bench.events", "--events", "100000", "--sqs-events", "10000"],
    ["bench.campaigns", "--big", "3000", "--small", "150x20", "--singles", "500", "--queued", "2000"],
    ["bench.scaleout", "--seconds", "6"],
]
FULL = [
    ["bench.throughput", "--messages", "20000", "--repeats", "3", "--profile"],
    ["bench.rate", "--seconds", "30"],
    ["bench.first_send", "--runs", "20"],
    ["bench.materialise", "--contacts", "1000000"],
    ["bench.scale", "--recipients", "1000000"],
    ["bench.writes", "--messages", "3000", "--runs", "10"],


    ["bench.pgbouncer", "--messages", "20000", "--repeats", "3"],


    ["bench.events", "--events", "1000000", "--sqs-events", "100000"],
    ["bench.campaigns"],
    ["bench.scaleout", "--seconds", "15"],
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="the quick set (default)")
    group.add_argument("--full", action="store_true", help="full sizes: 1M recipients, 30 s per rate cap")
    args = p.parse_args(argv)
    failed = 0
    for command in FULL if args.full else QUICK:
        print(f"\n=== python -m {' '.join(command)}", flush=True)
        failed += subprocess.call([sys.executable, "-m", *command]) != 0
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
