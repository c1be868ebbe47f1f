# Two commands matter: `make demo` and `make test`. Both build .venv from scratch when needed.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint bench bench-full clean pgbouncer promtool

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(VENV)/.installed $@

demo: $(VENV)/.installed
	$(BIN)/sender demo

test: $(VENV)/.installed-test pgbouncer promtool
	$(BIN)/ruff check sender tests bench
	$(BIN)/mypy sender
	$(BIN)/pytest -q

lint: $(VENV)/.installed-test
	$(BIN)/ruff check sender tests bench
	$(BIN)/ruff format --check sender tests bench
	$(BIN)/mypy sender

bench: $(VENV)/.installed-test pgbouncer
	$(BIN)/python -m bench.run --quick

bench-full: $(VENV)/.installed-test pgbouncer
	$(BIN)/python -m bench.run --full

# Debian's pgbouncer for the pooler tests and benchmark (tests/pgbouncer.py starts its own instance).
pgbouncer:
	@command -v pgbouncer >/dev/null 2>&1 || test -x /usr/sbin/pgbouncer || { \
	  echo "installing pgbouncer (Debian package) for the PgBouncer tests"; \
	  SUDO=$$(test "$$(id -u)" = 0 || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends pgbouncer; }

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# promtool (Debian's prometheus package) checks and unit-tests config/prometheus/sender-rules.yml.
# Installed when missing; the package's own Prometheus service is stopped and disabled if it started.
promtool:
	@command -v promtool >/dev/null || { \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends prometheus \
	  && { systemctl disable --now prometheus 2>/dev/null || service prometheus stop 2>/dev/null || true; }; }
	@promtool --version | head -1
