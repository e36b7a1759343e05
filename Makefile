# netpoint-metrics: `make run` starts the sample site under Gunicorn with metrics on;
# `make test` installs everything and runs the whole suite (what CI runs).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export NETPOINT_DB_PATH ?= $(CURDIR)/var/netpoint.sqlite3
PYTEST := -m pytest -p no:cacheprovider
FAST := -m "not soak and not slow"
# Debian packages the tests start for real (a missing one fails the test with how to get it).
APT_PACKAGES := prometheus redis-server postgresql wrk systemd passwd
APT_PROBES := prometheus promtool redis-server wrk pg_ctlcluster systemd-analyze useradd
# Other interpreters for the fast tier (NetBox 4.6 needs >= 3.12), and the floors' one.
# (A candidate counts only if it runs: pyenv's shims exist for versions that are not active.)
find_python = $(shell for p in $(wildcard $(HOME)/.pyenv/versions/$(1).*/bin/python$(1)) \
	$$(command -v python$(1) 2>/dev/null); do "$$p" -c '' 2>/dev/null && { echo "$$p"; break; }; done)
EXTRA_PYTHONS ?= $(foreach v,3.12 3.13,$(call find_python,$(v)))
FLOOR_PYTHON ?= $(firstword $(call find_python,3.10) $(PYTHON))
FLOORS := prometheus-client==0.24.1 django-prometheus==2.4.0 Django==4.2.* gunicorn==23.0.0 uwsgi==2.0.28

.PHONY: run run-uwsgi test test-fast test-pythons test-floors lint typecheck venv \
	install-run install-test system-deps migrate clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

venv: $(BIN)/python

install-run: venv
	$(BIN)/python -m pip install --quiet -e '.[gunicorn]'

install-test: venv
	$(BIN)/python -m pip install --quiet -e '.[test]'

# Installs the Debian packages the suite needs when one is missing (CI runs as root).
system-deps:
	@missing=""; for b in $(APT_PROBES); do command -v $$b >/dev/null 2>&1 || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(APT_PACKAGES); \
	  else echo "missing system packages: run 'sudo apt-get install $(APT_PACKAGES)'"; exit 1; fi; \
	fi

migrate:
	METRICS_ENABLED=0 $(BIN)/python -m netpoint_metrics.sample.manage migrate --noinput

run: install-run
	METRICS_ENABLED=1 $(BIN)/gunicorn -c gunicorn_conf.py

run-uwsgi: venv
	$(BIN)/python -m pip install --quiet -e '.[uwsgi]'
	METRICS_ENABLED=1 $(BIN)/uwsgi --ini uwsgi.ini

lint: install-test
	$(BIN)/ruff check .

typecheck: install-test
	$(BIN)/mypy

# Development tier: no real-server soaks or long acceptance runs (under a minute).
test-fast: install-test
	$(BIN)/python $(PYTEST) $(FAST) -q $(PYTEST_ARGS)

# The fast tier again on every other Python this machine has (pyenv here: 3.12, 3.13).
test-pythons:
	@for py in $(EXTRA_PYTHONS); do \
	  v=$$($$py -c 'import sys; print("%d.%d" % sys.version_info[:2])'); env=.venv-py$$v; \
	  echo "== fast tier on Python $$v ($$py)"; \
	  [ -x $$env/bin/python ] || $$py -m venv $$env || exit 1; \
	  $$env/bin/python -m pip install --quiet --upgrade pip && \
	  $$env/bin/python -m pip install --quiet -e '.[test]' && \
	  $$env/bin/python $(PYTEST) $(FAST) -q || exit 1; \
	done

# The lowest versions pyproject.toml admits, on the lowest Python it admits.
test-floors:
	[ -x .venv-floors/bin/python ] || $(FLOOR_PYTHON) -m venv .venv-floors
	.venv-floors/bin/python -m pip install --quiet --upgrade pip
	.venv-floors/bin/python -m pip install --quiet $(FLOORS) 'pytest>=8,<10' 'hypothesis>=6.100,<7'
	.venv-floors/bin/python -m pip install --quiet --no-deps -e .
	.venv-floors/bin/python -m pip check
	.venv-floors/bin/python $(PYTEST) $(FAST) -q

test: install-test system-deps
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python $(PYTEST) $(PYTEST_ARGS)
	$(MAKE) test-floors
	$(MAKE) test-pythons

clean:
	rm -rf $(VENV) .venv-py3.* .venv-floors var build *.egg-info
