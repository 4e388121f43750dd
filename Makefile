# The two commands of the README:
#   make run    set up .venv and run the node on embedded defaults (SQLite, local files, serverless broker)
#   make test   set up .venv and the Debian test peers, then run the whole test suite
.PHONY: run test test-fast lint setup peers bench

VENV := .venv
PY := $(VENV)/bin/python

setup:
	@bash scripts/setup.sh

peers:
	@bash scripts/setup.sh --peers

run: setup
	$(VENV)/bin/dicom-agent serve

test: peers
	$(PY) -m ruff check dicom_agent models tests bench
	$(PY) -m mypy
	$(PY) -m pytest -m "slow or not slow" $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(PY) -m ruff check dicom_agent models tests bench
	$(PY) -m ruff format --check dicom_agent models tests bench
	$(PY) -m mypy
