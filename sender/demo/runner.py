"""`sender demo`: the whole product on one machine with nothing installed but this package.

Embedded PostgreSQL (unless DATABASE_URL is set), migrations, seed data, a local fake SES with
realistic latency and an enforced per-second quota, and the real daemon sending one campaign.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

from sender.config import Settings
from sender.daemon import Daemon
from sender.db import QUERIES, connect
from sender.db.migrate import migrate
from sender.demo.deliverability import DeliverabilityDemo, format_loop
from sender.demo.fakeses import Account, FakeSES
from sender.progress import achieved_rate, bar

FIRST_NAMES = ["Ada", "Grace", "Linus", "Margaret", "Ken", "Barbara", "Dennis", "Frances", "Alan", "Radia"]
COUNTRIES = ["US", "CA", "GB", "DE", "FR", "JP", "BR", "IN"]
DEMO_FROM = "news@demo.example.com"

TEMPLATE_HTML = """<html><body>
<h1>Hello {{ first_name }}!</h1>
<p>Our {{ attributes.plan | default('free') }} plan news for {{ country }} is here.</p>
<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>
</body></html>"""


@dataclass
class DemoResult:
    campaign_id: int
    status: str
    sent: int
    failed: int
    skipped: int
    duration: float
    achieved_rate: float
    configured_rate: float
    throttled: int
    max_in_window: int
    deliverability: str = ""  # issue 11: the events / unsubscribe / suppression loop


async def seed(conn: Any, recipients: int) -> int:
    """Contacts, one template and one queued campaign targeting all subscribed contacts."""
    rows = range(recipients)
    await conn.execute(
        QUERIES["demo_seed_contacts"],
        [f"user{i:06d}@demo.example.net" for i in rows],
        [FIRST_NAMES[i % len(FIRST_NAMES)] for i in rows],
        ["Demo"] * recipients,
        [COUNTRIES[i % len(COUNTRIES)] for i in rows],
        [{"plan": "pro" if i % 3 == 0 else "free"} for i in rows],
    )
    template_id = await conn.fetchval(
        QUERIES["demo_seed_template"], "demo", "News for {{ first_name }}", TEMPLATE_HTML,
    )
    return int(await conn.fetchval(QUERIES["demo_queue_campaign"], "Demo campaign", template_id, {}))


async def _progress(conn: Any, campaign_id: int, out: TextIO, started: float, done: asyncio.Event) -> None:
    tty = out.isatty()
    while not done.is_set():
        row = await conn.fetchrow(QUERIES["campaign_summary"], campaign_id)
        finished = row["sent_count"] + row["failed_count"] + row["skipped_count"]
        elapsed = time.monotonic() - started
        rate = row["sent_count"] / elapsed if elapsed > 0 else 0.0
        line = (f"[{bar(finished, row['total_count'])}] {finished}/{row['total_count']} "
                f"sent={row['sent_count']} failed={row['failed_count']} {rate:6.1f} msg/s "
                f"status={row['status']}")
        out.write(("\r" + line) if tty else line + "\n")
        out.flush()
        if row["status"] in ("sent", "failed", "cancelled"):
            done.set()
            break
        await asyncio.sleep(0.25 if tty else 1.0)
    if tty:
        out.write("\n")


async def run_demo(settings: Settings, *, recipients: int, rate: float, latency: float,
                   out: TextIO = sys.stdout) -> DemoResult:
    server = None
    dsn = settings.database_url
    if not dsn:
        from sender.demo.embedded import start_embedded

        out.write("starting embedded PostgreSQL...\n")
        server, dsn = start_embedded()
    fake = FakeSES(account=Account(max_send_rate=rate, max_24h=max(50_000.0, recipients * 2.0)),
                   latency=latency, jitter=latency / 3, check_identities=True)
    fake.add_identity("demo.example.com")
    loop = DeliverabilityDemo()
    url = await fake.start()
    # the fake accepts any signature; never hand real credentials to it
    os.environ["AWS_ACCESS_KEY_ID"] = "demo"
    os.environ["AWS_SECRET_ACCESS_KEY"] = "demo"  # noqa: S105 - placeholder for the local fake
    conn = await connect(dsn)
    try:
        await migrate(conn)
        campaign_id = await seed(conn, recipients)
        out.write(f"fake SES at {url}: MaxSendRate {rate:g}/s, latency {latency * 1000:.0f} ms; "
                  f"campaign {campaign_id} queued for {recipients} recipients\n")
        settings = settings.with_overrides(database_url=dsn, endpoint_url=url, from_email=DEMO_FROM,
                                           max_rate=None, poll_interval=0.25, http_port=0)
        settings = await loop.start(fake, settings)  # deliverability (issue 11): events queue, public listener
        daemon = Daemon(settings, tune_gc=True)
        stop, done = asyncio.Event(), asyncio.Event()
        started = time.monotonic()
        daemon_task = asyncio.create_task(daemon.run(stop))
        progress = asyncio.create_task(_progress(conn, campaign_id, out, started, done))
        finished_wait = asyncio.create_task(done.wait())
        await asyncio.wait({daemon_task, finished_wait}, return_when=asyncio.FIRST_COMPLETED)
        duration = time.monotonic() - started
        story = await loop.after_first_campaign(conn, fake, campaign_id, out) if not daemon_task.done() else None
        stop.set()
        await daemon_task
        await progress
        row = await conn.fetchrow(QUERIES["campaign_summary"], campaign_id)
        first, last = row["first_sent_at"], row["last_sent_at"]
        achieved = achieved_rate(row["sent_count"], (last - first).total_seconds() if first and last else 0.0)
        return DemoResult(
            campaign_id=campaign_id, status=row["status"], sent=row["sent_count"],
            failed=row["failed_count"], skipped=row["skipped_count"], duration=duration,
            achieved_rate=achieved, configured_rate=rate, throttled=fake.throttled_count(),
            max_in_window=fake.max_in_any_window(), deliverability=format_loop(story) if story else "",
        )
    finally:
        await conn.close()
        await fake.stop()
        await loop.stop()
        if server is not None:
            server._cleanup()


def format_summary(r: DemoResult) -> str:
    return (f"campaign {r.campaign_id} {r.status}: sent={r.sent} failed={r.failed} skipped={r.skipped} "
            f"duration={r.duration:.1f}s achieved_rate={r.achieved_rate:.1f}/s "
            f"configured_rate={r.configured_rate:g}/s ({100 * r.achieved_rate / r.configured_rate:.1f}%) "
            f"throttled={r.throttled} max_in_any_1s_window={r.max_in_window}"
            + (f"\n{r.deliverability}" if r.deliverability else ""))
