# `make demo` and `make test` work on a fresh machine with only Python 3.11: each builds .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO := out/demo

.PHONY: install demo test test-slow lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: anything that asks for plain `torch` later finds it installed instead of
	# pulling several GB of CUDA wheels.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	# The build leaves thresher.egg-info here; from this folder it would shadow the installed metadata
	# (and its stage entry points) once pyproject.toml changes.
	rm -rf thresher.egg-info
	touch $(STAMP)

demo: install
	rm -rf $(DEMO)
	$(BIN)/thresher ingest sample_data/web.jsonl $(DEMO)/00-ingest --rows-per-shard 1000
	$(BIN)/thresher dedup exact $(DEMO)/00-ingest $(DEMO)/01-exact-dedup
	$(BIN)/thresher dedup minhash $(DEMO)/01-exact-dedup $(DEMO)/02-minhash-dedup
	$(BIN)/thresher inspect $(DEMO)/02-minhash-dedup

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

bench: install
	$(BIN)/python bench/engine.py

clean:
	rm -rf $(VENV) out build *.egg-info
