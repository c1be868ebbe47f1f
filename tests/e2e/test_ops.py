"""Ops interfaces over real sockets: health, readiness, metrics, admin API, logs, systemd notify."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest

from sender.config import Settings
from sender.daemon import Daemon
from sender.demo.fakeses import FakeSES, Fault
from sender.logs import configure_logging
from sender.systemd import SystemdNotifier
from tests.helpers import add_campaign, add_contacts, add_template, running_daemon, wait_for

TOKEN = "admin-token-not-for-logs"


async def _get(daemon: Daemon, path: str, **kwargs: object) -> tuple[int, str, dict[str, str]]:
    return await _call("GET", daemon, path, **kwargs)


async def _call(method: str, daemon: Daemon, path: str, token: str | None = None,
                **kwargs: object) -> tuple[int, str, dict[str, str]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http, http.request(
            method, f"http://127.0.0.1:{daemon.ops.port}{path}", headers=headers, **kwargs) as response:
        return response.status, await response.text(), dict(response.headers)


async def _ready(daemon: Daemon) -> bool:
    return daemon.ready.is_set()


async def _sent(db: asyncpg.Connection, campaign: int) -> bool:
    return await db.fetchval("SELECT status FROM campaigns WHERE id = $1", campaign) == "sent"


async def test_health_and_readiness(db: asyncpg.Connection, settings: Settings, fake_ses: FakeSES) -> None:
    async with running_daemon(settings) as daemon:
        await wait_for(lambda: _ready(daemon))
        status, body, _ = await _get(daemon, "/healthz")
        assert status == 200 and json.loads(body)["status"] == "ok"
        status, body, _ = await _get(daemon, "/readyz")
        assert status == 200 and json.loads(body)["ready"] is True

        fake_ses.account.sending_enabled = False
        await add_contacts(db, 3)
        await add_campaign(db, await add_template(db))
        await wait_for(lambda: _not_ready(daemon), timeout=15)
        status, body, _ = await _get(daemon, "/readyz")
        reasons = json.loads(body)["reasons"]
        assert status == 503
        assert reasons[0]["check"] == "sending" and reasons[0]["code"] == "SendingPausedException"
        fake_ses.account.sending_enabled = True
        await wait_for(lambda: _is_ready(daemon), timeout=15)



async def test_a_crashing_task_is_restarted_and_a_crash_loop_stops_the_daemon_non_zero(settings: Settings) -> None:
    """Supervision: a background task that dies is noticed at once (logged, counted, restarted);
    one that keeps dying makes /healthz 503 and the daemon exit 1 so systemd restarts it."""
    daemon = Daemon(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        await wait_for(lambda: _ready(daemon))
        real_run, crashes = daemon.tick.run, 0

        async def broken_once() -> None:  # fault injection: the next tick dies with a bug
            nonlocal crashes
            crashes += 1
            daemon.tick.run = real_run  # type: ignore[method-assign]
            raise RuntimeError("injected tick bug")

        daemon.tick.run = broken_once  # type: ignore[method-assign]
        daemon.wake_tick()
        await wait_for(lambda: _restarted(daemon, "tick", 1))
        ticks = daemon.tick.count
        daemon.wake_tick()
        await wait_for(lambda: _ticked_since(daemon, ticks))  # the restarted tick runs again
        assert (await _get(daemon, "/healthz"))[0] == 200

        async def always_broken() -> None:
            raise RuntimeError("injected permanent tick bug")

        daemon.tick.run = always_broken  # type: ignore[method-assign]
        daemon.wake_tick()
        assert await asyncio.wait_for(task, 60) == 1, "a crash loop exits non-zero"
        alive, body = daemon.health()
        assert not alive and body["fatal"] and "tick" in body["fatal"]
    finally:
        stop.set()
        if not task.done():
            await asyncio.wait_for(task, 30)


async def _restarted(daemon: Daemon, name: str, times: int) -> bool:
    return daemon.metrics.registry.get_sample_value("sender_task_restarts_total", {"task": name}) == times


async def _ticked_since(daemon: Daemon, count: int) -> bool:
    return daemon.tick.count > count


async def _not_ready(daemon: Daemon) -> bool:
    return (await _get(daemon, "/readyz"))[0] == 503


async def _is_ready(daemon: Daemon) -> bool:
    return (await _get(daemon, "/readyz"))[0] == 200


async def _unhealthy(daemon: Daemon) -> bool:
    return (await _get(daemon, "/healthz"))[0] == 503


async def test_readiness_reports_database_outage(db_url: str, pg_admin_dsn: str, settings: Settings) -> None:
    async with running_daemon(settings) as daemon:
        await wait_for(lambda: _ready(daemon))
        name = urlsplit(db_url).path.lstrip("/")
        admin = await asyncpg.connect(pg_admin_dsn)
        try:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        finally:
            await admin.close()
        await wait_for(lambda: _not_ready(daemon), timeout=15)
        status, body, _ = await _get(daemon, "/readyz")
        assert status == 503
        [reason] = json.loads(body)["reasons"]
        # the server's (or the socket's) own words, not a class name alone
        assert reason["check"] == "database" and reason["code"] and reason["failing_seconds"] >= 0
        assert reason["reason"] and reason["reason"] != reason["code"]


async def test_metrics_move_as_a_campaign_sends(db: asyncpg.Connection, settings: Settings,
                                                fake_ses: FakeSES) -> None:
    await add_contacts(db, 20)
    await db.execute("INSERT INTO contacts (email, status) VALUES ('gone@example.org', 'unsubscribed')")
    fake_ses.inject(Fault("TooManyRequestsException", 429, "Maximum sending rate exceeded.", remaining=2))
    campaign = await add_campaign(db, await add_template(db), rules=None, status="draft")
    await db.execute("INSERT INTO campaign_recipients (campaign_id, contact_id, email) SELECT $1, id, email "
                     "FROM contacts", campaign)
    await db.execute("INSERT INTO campaign_recipients (campaign_id, email) VALUES ($1, 'broken')", campaign)
    await db.execute("UPDATE campaigns SET status = 'queued', target_rules = NULL WHERE id = $1", campaign)
    async with running_daemon(settings.with_overrides(max_rate=80.0)) as daemon:
        await wait_for(lambda: _sent(db, campaign), timeout=60)
        status, text, headers = await _get(daemon, "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    values = _parse(text)
    # the campaign has ended: its per-campaign series may already be gone (bounded series), the
    # instance's aggregates stay
    assert values['sender_outcomes_total{outcome="sent"}'] == 20
    assert values['sender_outcomes_total{outcome="skipped"}'] == 1
    assert values['sender_outcomes_total{outcome="failed"}'] == 1
    assert values["sender_throttled_total"] == 2
    assert values["sender_send_latency_seconds_count"] == 20
    assert values["sender_write_back_rows_total"] >= 22
    assert values["sender_write_back_latency_seconds_count"] >= 1
    assert values["sender_rate_limit_per_second"] > 0
    assert values["sender_in_flight"] == 0
    assert values["sender_sending_stopped"] == 0
    assert "@" not in text


def _parse(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


async def test_backlog_gauge_tracks_pending(db: asyncpg.Connection, settings: Settings, fake_ses: FakeSES) -> None:
    await add_contacts(db, 30)
    campaign = await add_campaign(db, await add_template(db), rate=10)
    async with running_daemon(settings) as daemon:
        await wait_for(lambda: _at_least(fake_ses, 5), timeout=30)
        _, text, _ = await _get(daemon, "/metrics")
        backlog = _parse(text)[f'sender_pending_backlog{{campaign_id="{campaign}"}}']
        assert 0 < backlog < 30
        await db.execute("UPDATE campaigns SET status = 'cancelled' WHERE id = $1", campaign)


async def _at_least(fake: FakeSES, n: int) -> bool:
    return len(fake.messages) >= n


@pytest.fixture
async def admin_daemon(settings: Settings) -> AsyncIterator[Daemon]:
    async with running_daemon(settings.with_overrides(admin_token=TOKEN)) as daemon:
        await wait_for(lambda: _ready(daemon))
        yield daemon


async def test_admin_api_auth(admin_daemon: Daemon) -> None:
    status, body, headers = await _get(admin_daemon, "/campaigns/1")
    assert json.loads(body) == {"error": "missing bearer token"}
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    assert (await _get(admin_daemon, "/campaigns/1", token="wrong"))[0] == 403
    assert (await _call("POST", admin_daemon, "/campaigns/1/send", token="wrong"))[0] == 403
    assert (await _call("POST", admin_daemon, "/campaigns/1/send"))[0] == 401


async def test_admin_api_off_without_token(settings: Settings) -> None:
    async with running_daemon(settings) as daemon:
        await wait_for(lambda: _ready(daemon))
        assert (await _get(daemon, "/campaigns/1", token="anything"))[0] == 404


async def test_admin_api_campaign_actions(admin_daemon: Daemon, db: asyncpg.Connection, fake_ses: FakeSES) -> None:
    await add_contacts(db, 4)
    campaign = await add_campaign(db, await add_template(db), status="draft")
    call = admin_daemon
    assert (await _get(call, "/campaigns/999", token=TOKEN))[0] == 404
    status, body, _ = await _get(call, "/campaigns/abc", token=TOKEN)
    assert status == 400 and "whole number" in json.loads(body)["error"]
    status, body, _ = await _call("POST", call, f"/campaigns/{campaign}/pause", token=TOKEN)
    assert status == 409 and json.loads(body)["current_status"] == "draft"
    assert (await _call("POST", call, f"/campaigns/{campaign}/explode", token=TOKEN))[0] == 404
    assert (await _call("POST", call, f"/campaigns/{campaign}/send?rate_per_sec=fast", token=TOKEN))[0] == 400
    assert (await _call("POST", call, f"/campaigns/{campaign}/send?rate_per_sec=-1", token=TOKEN))[0] == 400
    assert (await _call("POST", call, "/campaigns/999/send", token=TOKEN))[0] == 404
    status, body, _ = await _call("POST", call, f"/campaigns/{campaign}/send?rate_per_sec=20", token=TOKEN)
    assert status == 200 and json.loads(body) == {"id": campaign, "status": "queued"}
    assert await db.fetchval("SELECT rate_per_sec FROM campaigns WHERE id = $1", campaign) == 20
    await wait_for(lambda: _sent(db, campaign), timeout=30)
    status, body, _ = await _get(call, f"/campaigns/{campaign}", token=TOKEN)
    data = json.loads(body)
    assert status == 200
    assert (data["status"], data["sent"], data["total"], data["recipients_by_status"]) == ("sent", 4, 4, {"sent": 4})
    assert (await _call("POST", call, f"/campaigns/{campaign}/cancel", token=TOKEN))[0] == 409


async def test_admin_pause_resume_cancel(admin_daemon: Daemon, db: asyncpg.Connection, fake_ses: FakeSES) -> None:
    await add_contacts(db, 40)
    campaign = await add_campaign(db, await add_template(db), rate=10)
    await wait_for(lambda: _at_least(fake_ses, 3), timeout=30)
    for action, expected in (("pause", "paused"), ("resume", "sending"), ("cancel", "cancelled")):
        status, body, _ = await _call("POST", admin_daemon, f"/campaigns/{campaign}/{action}", token=TOKEN)
        assert (status, json.loads(body)["status"]) == (200, expected)
    await wait_for(lambda: db.fetchval("SELECT finished_at IS NOT NULL FROM campaigns WHERE id = $1", campaign),
                   timeout=10)
    counts = dict(await db.fetch("SELECT status, count(*) FROM campaign_recipients GROUP BY status"))
    assert set(counts) <= {"sent", "skipped"} and counts["skipped"] > 0


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("json", "DEBUG", stream=stream)
    yield stream
    configure_logging("console", "INFO")


async def test_logs_carry_ids_never_addresses_or_secrets(captured_logs: io.StringIO, db: asyncpg.Connection,
                                                         settings: Settings, fake_ses: FakeSES) -> None:
    await add_contacts(db, 10)
    campaign = await add_campaign(db, await add_template(db))
    rogue = await add_campaign(db, await add_template(db), from_email="promo@unverified.org")
    await db.execute("INSERT INTO campaign_recipients (campaign_id, email) VALUES ($1, 'bad-address')", campaign)
    await db.execute("UPDATE campaigns SET total_count = total_count + 1 WHERE id = $1", campaign)
    fake_ses.inject(Fault("BadRequestException", 400, "Illegal address user3@example.org", remaining=1))
    secrets = settings.with_overrides(admin_token=TOKEN, unsubscribe_url="https://e.com/u/{token}",
                                      unsubscribe_secret="unsub-secret-value")
    async with running_daemon(secrets):
        await wait_for(lambda: _sent(db, campaign), timeout=30)
        await wait_for(lambda: db.fetchval("SELECT status = 'failed' FROM campaigns WHERE id = $1", rogue), timeout=30)
    text = captured_logs.getvalue()
    lines = [json.loads(line) for line in text.splitlines()]
    events = {line["event"] for line in lines}
    assert {"daemon_started", "campaign_started", "campaign_sent", "recipient_failed", "campaign_cannot_send"} <= events
    failed = [line for line in lines if line["event"] == "recipient_failed"]
    # the one-shot BadRequest may hit either campaign's send; the bad address is always `campaign`'s
    assert all(line["campaign_id"] in (campaign, rogue) and isinstance(line["recipient_id"], int) for line in failed)
    assert len(failed) == 2
    assert not re.search(r"[A-Za-z0-9]{2,}@(example\.org|unverified\.org)", text), "full address in logs"
    for secret in (TOKEN, "unsub-secret-value", "testing"):
        assert secret not in text


def test_notifier_parses_abstract_sockets_and_watchdog() -> None:
    n = SystemdNotifier({"NOTIFY_SOCKET": "@sender/notify", "WATCHDOG_USEC": "4000000"})
    assert n.enabled and n.watchdog_interval == 2.0
    other_pid = SystemdNotifier({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"})
    assert other_pid.watchdog_interval is None
    assert SystemdNotifier({}).enabled is False and SystemdNotifier({}).notify("READY=1") is False


async def test_systemd_notify_protocol_over_a_real_socket(tmp_path: Path, settings: Settings) -> None:
    path = str(tmp_path / "notify.sock")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)
    receiver.setblocking(False)
    loop = asyncio.get_running_loop()
    received: list[str] = []

    async def next_message() -> str:
        data = await loop.sock_recv(receiver, 4096)
        received.append(data.decode())
        return received[-1]

    daemon = Daemon(settings)
    daemon.notifier = SystemdNotifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000",
                                       "WATCHDOG_PID": str(os.getpid())})
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        first = await asyncio.wait_for(next_message(), 15)
        assert first.splitlines()[0] == "READY=1" and first.splitlines()[1].startswith("STATUS=")
        assert await asyncio.wait_for(next_message(), 5) == "WATCHDOG=1"
        assert await asyncio.wait_for(next_message(), 5) == "WATCHDOG=1"
        stop.set()
        while "STOPPING=1" not in received[-1]:
            await asyncio.wait_for(next_message(), 10)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        receiver.close()
    assert received[-1].startswith("STOPPING=1")


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


@pytest.mark.parametrize("tty", [False, True])
def test_log_format_follows_the_terminal(tty: bool) -> None:
    from sender.logs import get_logger

    stream = _Stream(tty)
    configure_logging(None, "INFO", stream=stream)
    try:
        get_logger("t").info("campaign_started", campaign_id=7, to="ann.lee@example.org")
    finally:
        configure_logging("console", "INFO")
    line = stream.getvalue().strip()
    if tty:
        assert "campaign_started" in line and "campaign_id=7" in line and not line.startswith("{")
    else:
        assert json.loads(line)["campaign_id"] == 7
    assert "ann.lee@" not in line and "a***@example.org" in line
