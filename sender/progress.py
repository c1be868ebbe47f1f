"""A campaign's progress from its summary row: counts, achieved rate, ETA, and the one-line bar."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg


@dataclass
class Progress:
    id: int
    name: str
    status: str
    total: int
    sent: int
    failed: int
    skipped: int
    in_flight: int
    pending: int
    rate: float
    eta_seconds: float | None
    error: str | None

    @property
    def done(self) -> int:
        return self.sent + self.failed + self.skipped


def achieved_rate(sent: int, span_seconds: float) -> float:
    """Messages per second between the first and the last send (n sends span n - 1 intervals)."""
    return (sent - 1) / span_seconds if span_seconds > 0 and sent > 1 else 0.0


def progress_from(row: asyncpg.Record | dict[str, Any]) -> Progress:
    """Counts, achieved rate (between first and last send) and ETA at that rate."""
    first, last = row["first_sent_at"], row["last_sent_at"]
    span = (last - first).total_seconds() if first and last else 0.0
    rate = achieved_rate(row["sent_count"], span)
    done = row["sent_count"] + row["failed_count"] + row["skipped_count"]
    pending = max(0, row["total_count"] - done - row["in_flight"])
    eta = (pending + row["in_flight"]) / rate if rate > 0 and row["status"] == "sending" else None
    return Progress(
        id=row["id"], name=row["name"], status=row["status"], total=row["total_count"],
        sent=row["sent_count"], failed=row["failed_count"], skipped=row["skipped_count"],
        in_flight=row["in_flight"], pending=pending, rate=round(rate, 2),
        eta_seconds=None if eta is None else round(eta, 1), error=row["error"],
    )


def bar(done: int, total: int, *, finished: bool = False, width: int = 30) -> str:
    """`###---`: empty while nothing is known (0/0 at the start), full once finished."""
    filled = int(width * min(done, total) / total) if total else (width if finished else 0)
    return "#" * filled + "-" * (width - filled)


def format_progress(p: Progress, width: int = 30) -> str:
    eta = f" eta {p.eta_seconds:.0f}s" if p.eta_seconds is not None else ""
    drawn = bar(p.done, p.total, finished=p.status == "sent", width=width)
    line = (f"#{p.id} {p.name[:30]:<30} {p.status:<9} [{drawn}] "
            f"{p.done}/{p.total} sent={p.sent} failed={p.failed} skipped={p.skipped} "
            f"in_flight={p.in_flight} {p.rate:.1f}/s{eta}")
    return line + (f"\n    error: {p.error}" if p.error else "")
