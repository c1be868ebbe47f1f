# Small non-root image running `sender run`, installed from the hashed lock files in requirements/.
# Build and check: `make image-test` (podman; a local Debian base when no registry is reachable).
# Elsewhere: `docker build -t sender .` (BASE defaults to python:3.11-slim).
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# pip lives in a throwaway build venv; the runtime venv is made without it. Bytecode is compiled
# here (+11 MB): the root filesystem is read-only at run time, and without it every start of the
# daemon compiled ~1 s of modules again.
RUN python -m venv /opt/build && python -m venv --without-pip /opt/venv
# Dependencies first (their layer survives source edits), pinned and hash-checked, wheels only.
COPY requirements/runtime.txt requirements/build.txt requirements/
RUN /opt/build/bin/pip install --require-hashes --only-binary=:all: -r requirements/build.txt \
 && /opt/build/bin/pip --python /opt/venv/bin/python install --no-deps --require-hashes --only-binary=:all: \
      -r requirements/runtime.txt
COPY pyproject.toml README.md ./
COPY sender ./sender
# No extras: the embedded PostgreSQL is the `[demo]` extra; production points DATABASE_URL at a server.
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
 && /opt/build/bin/pip --python /opt/venv/bin/python install --no-deps --no-index /wheels/sender-*.whl \
 && /opt/venv/bin/python -c "import sender.cli, sender.daemon, sender.doctor"

FROM ${BASE}
RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin sender
# Owned by root, read-only for uid 10001.
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SENDER_LOG_FORMAT=json \
    SENDER_HTTP_HOST=0.0.0.0 \
    SENDER_HTTP_PORT=8080
USER 10001
EXPOSE 8080
# `sender health` reads the same SENDER_HTTP_HOST/SENDER_HTTP_PORT as `sender run`.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 CMD ["sender", "health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["sender"]
CMD ["run"]
