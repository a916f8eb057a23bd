# Everything a fresh machine needs is installed by these targets.
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTHON ?= python3

.PHONY: install run test lint bench bench-shared bench-anchors bench-deps clean system-deps

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: install
	$(BIN)/catalog-gateway serve --config config.toml

lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# System packages the tests use, installed only when missing (needs root, as in CI).
system-deps:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	command -v systemd-analyze >/dev/null 2>&1 || missing="$$missing systemd"; \
	if [ -n "$$missing" ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

test: install system-deps
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/pytest -q

# Figures only, never part of `make test`.
bench: install
	$(BIN)/python benchmarks/event_page.py
	$(BIN)/python benchmarks/prefetch.py
	$(BIN)/python benchmarks/refresh_ahead.py

bench-shared: install system-deps
	$(BIN)/python benchmarks/shared_tier.py

# nginx, Varnish and wrk for benchmarks/anchors.py, installed only when missing (needs root).
bench-deps:
	@missing=""; \
	command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || missing="$$missing nginx"; \
	command -v varnishd >/dev/null 2>&1 || test -x /usr/sbin/varnishd || missing="$$missing varnish"; \
	command -v wrk >/dev/null 2>&1 || missing="$$missing wrk"; \
	if [ -n "$$missing" ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

bench-anchors: install bench-deps
	$(BIN)/python benchmarks/anchors.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
