# `make demo` and `make test` work on a fresh machine with only Python 3.11: each builds .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO := out/demo

.PHONY: install system-deps demo test test-slow lint format bench clean

# Debian packages the test suite runs for real: Slurm and munge (the Slurm executor), Chromium (the HTML
# report is opened in a headless browser). Needs root; installs only what is missing.
SYSTEM_PACKAGES := slurm-wlm munge chromium

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

system-deps:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing $$missing"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

demo: install
	rm -rf $(DEMO)
	$(BIN)/thresher run recipes/web-pretrain.yaml --input sample_data/web.jsonl --output $(DEMO)
	$(BIN)/thresher report $(DEMO)

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
