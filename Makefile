# netpoint-metrics: `make run` starts the sample site under Gunicorn with metrics on;
# `make test` installs everything and runs the whole suite (what CI runs).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export NETPOINT_DB_PATH ?= $(CURDIR)/var/netpoint.sqlite3

.PHONY: run run-uwsgi test lint venv install-run install-test migrate clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

venv: $(BIN)/python

install-run: venv
	$(BIN)/python -m pip install --quiet -e '.[gunicorn]'

install-test: venv
	$(BIN)/python -m pip install --quiet -e '.[test]'

migrate:
	METRICS_ENABLED=0 $(BIN)/python -m netpoint_metrics.sample.manage migrate --noinput

run: install-run migrate
	METRICS_ENABLED=1 $(BIN)/gunicorn -c gunicorn_conf.py

run-uwsgi: venv
	$(BIN)/python -m pip install --quiet -e '.[uwsgi]'
	$(MAKE) migrate
	METRICS_ENABLED=1 $(BIN)/uwsgi --ini uwsgi.ini

lint: install-test
	$(BIN)/ruff check .

test: install-test
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -p no:cacheprovider $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) var build *.egg-info
