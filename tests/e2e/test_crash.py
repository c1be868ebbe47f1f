"""Real processes killed, PostgreSQL restarted: every recipient still ends sent or failed with a reason."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter

import asyncpg

from sender.config import Settings
from sender.db import connect
from sender.db.migrate import migrate
from sender.demo.fakeses import FakeSES, Fault
from tests.helpers import add_campaign, add_contacts, add_template, recipient_counts, running_daemon, wait_for
from tests.processes import start_daemon

# An instance is dead (its rows taken over) after 3 s without a heartbeat.
FAST_TAKEOVER = {"send_timeout": 2.0, "heartbeat_interval": 0.2, "instance_timeout": 3.0, "lease_seconds": 5.0}
FAST_TAKEOVER_ENV = {f"SENDER_{k.upper()}": str(v) for k, v in FAST_TAKEOVER.items()}


async def _at_least(fake: FakeSES, n: int) -> bool:
    return len(fake.messages) >= n


async def _sent(db: asyncpg.Connection, campaign: int) -> bool:
    return await db.fetchval("SELECT status FROM campaigns WHERE id = $1", campaign) == "sent"


async def _kill_mid_campaign(db: asyncpg.Connection, settings: Settings, fake_ses: FakeSES,
                             policy: str) -> tuple[int, set[str]]:
    """Start a daemon process, SIGKILL it mid-campaign; return the campaign and the rows it held."""
    fake_ses.latency = 0.2  # keep sends in flight at the moment of the kill
    await add_contacts(db, 120)
    campaign = await add_campaign(db, await add_template(db), rate=60)
    proc = await start_daemon(settings, SENDER_CRASH_POLICY=policy, **FAST_TAKEOVER_ENV)
    try:
        await wait_for(lambda: _at_least(fake_ses, 25), timeout=60)
        proc.send_signal(signal.SIGKILL)
        await asyncio.wait_for(proc.wait(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
    held = {r["email"] for r in await db.fetch("SELECT email FROM campaign_recipients WHERE status = 'sending'")}
    assert held, "the kill should catch rows in flight"
    return campaign, held


async def test_kill_9_then_new_instance_retry_policy_resends_only_in_flight(
        db: asyncpg.Connection, settings: Settings, fake_ses: FakeSES) -> None:
    campaign, held = await _kill_mid_campaign(db, settings, fake_ses, "retry")
    async with running_daemon(settings.with_overrides(crash_policy="retry", **FAST_TAKEOVER)):
        await wait_for(lambda: _sent(db, campaign), timeout=90)
    assert await recipient_counts(db, campaign) == {"sent": 120}
    per_recipient = Counter(m.to[0] for m in fake_ses.messages)
    assert len(per_recipient) == 120
    duplicates = {to for to, n in per_recipient.items() if n > 1}
    assert duplicates <= held, "only sends that were in flight at the kill may repeat"
    assert max(per_recipient.values()) <= 2


async def test_kill_9_then_new_instance_fail_policy_never_resends(
        db: asyncpg.Connection, settings: Settings, fake_ses: FakeSES) -> None:
    campaign, held = await _kill_mid_campaign(db, settings, fake_ses, "fail")
    async with running_daemon(settings.with_overrides(crash_policy="fail", **FAST_TAKEOVER)):
        await wait_for(lambda: _sent(db, campaign), timeout=90)
    rows = await db.fetch("SELECT email, status, error_code, error FROM campaign_recipients")
    failed = {r["email"] for r in rows if r["status"] == "failed"}
    assert failed == held
    assert {r["error_code"] for r in rows if r["status"] == "failed"} == {"OutcomeUnknown"}
    assert all(r["error"] for r in rows if r["status"] == "failed")
    assert {r["status"] for r in rows} <= {"sent", "failed"}
    per_recipient = Counter(m.to[0] for m in fake_ses.messages)
    assert max(per_recipient.values()) == 1, "at-most-once: nobody gets two"
    assert set(per_recipient) >= {r["email"] for r in rows if r["status"] == "sent"}
    counters = await db.fetchrow("SELECT sent_count, failed_count FROM campaigns WHERE id = $1", campaign)
    assert counters["failed_count"] == len(held) and counters["sent_count"] == 120 - len(held)


async def test_second_signal_forces_exit_and_keeps_written_results(
        db: asyncpg.Connection, settings: Settings, fake_ses: FakeSES) -> None:
    await add_contacts(db, 40)
    campaign = await add_campaign(db, await add_template(db), rate=40)
    proc = await start_daemon(settings, SENDER_GRACE_SECONDS="60")
    try:
        await wait_for(lambda: _at_least(fake_ses, 10), timeout=60)
        fake_ses.inject(Fault("Hang", 500, hang=30.0))  # from now on every send hangs
        await wait_for(lambda: _hanging(fake_ses), timeout=10)
        proc.send_signal(signal.SIGTERM)
        seen = await asyncio.wait_for(_read_until(proc, b"shutdown_started"), 30)
        proc.send_signal(signal.SIGTERM)  # the graceful wait (60 s) is cut short: well within it on a busy machine
        _, rest = await asyncio.wait_for(proc.communicate(), 30)
        stderr = seen + rest
    finally:
        if proc.returncode is None:
            proc.kill()
    assert proc.returncode == 0, stderr.decode()[-2000:]
    counts = await recipient_counts(db, campaign)
    assert "sending" not in counts
    assert counts["sent"] == len(fake_ses.messages) >= 10
    assert counts["pending"] == 40 - counts["sent"]


async def _read_until(proc: asyncio.subprocess.Process, marker: bytes) -> bytes:
    assert proc.stderr is not None
    seen = b""
    while marker not in seen:
        line = await proc.stderr.readline()
        if not line:
            raise AssertionError(f"process ended before {marker!r}: {seen[-2000:]!r}")
        seen += line
    return seen


async def _hanging(fake: FakeSES) -> bool:
    return any(r.code == "Hang" for r in fake.rejections)


async def test_postgres_restart_mid_campaign_loses_no_result(own_postgres: object, fake_ses: FakeSES,
                                                            settings: Settings) -> None:
    control = own_postgres
    url: str = control.url  # type: ignore[attr-defined]
    conn = await connect(url)
    await migrate(conn)
    await add_contacts(conn, 100)
    campaign = await add_campaign(conn, await add_template(conn), rate=40)
    await conn.close()
    fake_ses.latency = 0.05
    async with running_daemon(settings.with_overrides(database_url=url)) as daemon:
        await wait_for(lambda: _at_least(fake_ses, 20), timeout=60)
        await asyncio.to_thread(control.stop)  # type: ignore[attr-defined]
        at_stop = len(fake_ses.messages)
        await wait_for(lambda: _db_down(daemon), timeout=10)
        await asyncio.to_thread(control.start)  # type: ignore[attr-defined]
        conn = await connect(url)
        try:
            await wait_for(lambda: _sent(conn, campaign), timeout=90)
            rows = await conn.fetch("SELECT email, status, message_id FROM campaign_recipients")
        finally:
            await conn.close()
    assert at_stop >= 20
    assert {r["status"] for r in rows} == {"sent"} and len(rows) == 100
    per_recipient = Counter(m.to[0] for m in fake_ses.messages)
    assert len(per_recipient) == 100 and max(per_recipient.values()) == 1
    assert {r["message_id"] for r in rows} == {m.message_id for m in fake_ses.messages}


async def _db_down(daemon: object) -> bool:
    return not daemon.db_ok  # type: ignore[attr-defined]
