# Two commands matter: `make demo` and `make test`. Both build .venv from scratch when needed.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint bench bench-full clean tools

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

test: $(VENV)/.installed-test tools
	$(BIN)/ruff check sender tests bench
	$(BIN)/mypy sender
	$(BIN)/pytest -q

lint: $(VENV)/.installed-test
	$(BIN)/ruff check sender tests bench
	$(BIN)/ruff format --check sender tests bench
	$(BIN)/mypy sender

bench: $(VENV)/.installed-test tools
	$(BIN)/python -m bench.run --quick

bench-full: $(VENV)/.installed-test tools
	$(BIN)/python -m bench.run --full

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# The Debian packages the suite drives for real, installed in one apt-get run when any is missing:
# pgbouncer (pooler tests), prometheus for promtool (alert rules and dashboard expressions) and
# chromium (the unsubscribe page in a browser). The prometheus package's own service is stopped.
TOOLS := pgbouncer:pgbouncer promtool:prometheus chromium:chromium
tools:
	@missing=""; for pair in $(TOOLS); do cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$cmd >/dev/null 2>&1 || test -x /usr/sbin/$$cmd || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages for the tests:$$missing"; \
	  SUDO=$$(test "$$(id -u)" = 0 || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get -o DPkg::Lock::Timeout=600 \
	    install -y -qq --no-install-recommends $$missing >/dev/null; \
	  { $$SUDO systemctl disable --now prometheus 2>/dev/null || $$SUDO service prometheus stop 2>/dev/null || true; }; \
	fi
