"""Process-level tuning the daemon (and the throughput benchmark) apply after start-up."""

from __future__ import annotations

import gc
import math


def tune_gc_for_throughput() -> None:
    """Fewer, cheaper collections for an allocation-heavy I/O loop (botocore allocates a lot per call).

    Start-up objects (modules, the SES service model) move to the permanent generation and the
    young-generation threshold rises from 700 to 10,000: measured here, collections cost the
    daemon ~250 µs per message with the defaults (bench/throughput.py, GC on vs off).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)


def default_concurrency(cap: float) -> int:
    """Enough in-flight calls to reach the cap at ~250 ms SES latency, within sane bounds."""
    return max(8, min(256, math.ceil(cap * 0.25) + 8))
