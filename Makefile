# detr-panoptic-d2 — the two commands of the README:
#   make main   bootstrap, generate the toy data set, train stage 1 + stage 2, evaluate, visualize (CPU)
#   make test   bootstrap, run the test suite (slow end-to-end tests included)
VENV ?= .venv
PY := $(VENV)/bin/python
OUTPUT ?= output/toy

.PHONY: env main test test-fast lint
env:
	bash scripts/bootstrap.sh

main: env
	bash scripts/main_job.sh $(OUTPUT)

test: env lint
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: env lint
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: env   # formatter and import order, as configured in pyproject.toml
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
