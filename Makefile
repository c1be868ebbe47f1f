# Two commands matter: `make demo` and `make test`. Both build .venv from scratch when needed.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint bench bench-full clean chromium

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

test: $(VENV)/.installed-test
	$(BIN)/ruff check sender tests bench
	$(BIN)/mypy sender
	$(BIN)/pytest -q

lint: $(VENV)/.installed-test
	$(BIN)/ruff check sender tests bench
	$(BIN)/ruff format --check sender tests bench
	$(BIN)/mypy sender

bench: $(VENV)/.installed-test
	$(BIN)/python -m bench.run --quick

bench-full: $(VENV)/.installed-test
	$(BIN)/python -m bench.run --full

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# Headless Chromium (Debian's package) for the unsubscribe page's browser test; CI runs this first.
chromium:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
