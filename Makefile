# `make demo` and `make test` are the whole set-up on a fresh Debian machine with Python 3.11: each installs the
# missing Debian packages (as root), builds .venv and the KenLM tools, then does its job.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO := out/demo

.PHONY: install system-deps kenlm-tools demo test test-slow lint format schema bench clean

# Debian packages: Slurm and munge (the Slurm executor's tests run a real one), Chromium (the HTML report
# is opened in a headless browser), and what KenLM's lmplz/build_binary build with. Needs root; installs
# only what is missing.
SYSTEM_PACKAGES := slurm-wlm munge chromium cmake g++ libboost-program-options-dev libboost-system-dev \
	libboost-thread-dev libboost-test-dev zlib1g-dev libbz2-dev liblzma-dev

# The system packages come first: the KenLM tools build against Boost, and the tests run Slurm and Chromium.
install: system-deps $(STAMP) kenlm-tools

$(STAMP): pyproject.toml | system-deps
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: anything that asks for plain `torch` later finds it installed instead of
	# pulling several GB of CUDA wheels.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,ray]'
	# The build leaves thresher.egg-info here; from this folder it would shadow the installed metadata
	# (and its stage entry points) once pyproject.toml changes.
	rm -rf thresher.egg-info
	touch $(STAMP)

# lmplz and build_binary are not in the kenlm wheel: built from the same version's sdist into .venv/bin
# (about 35 s; does nothing when both exist), with the compilers and Boost that system-deps installs.
kenlm-tools: system-deps $(STAMP)
	$(BIN)/python -m thresher.scorers.kenlm_build --bin-dir $(BIN)

# Installs what is missing when run as root; otherwise names the one apt-get command to run, and stops.
system-deps:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null \
		| grep -q 'install ok installed' || echo $$p; done); \
	missing=$$(echo $$missing); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
		echo "thresher needs Debian packages that are missing; run: sudo apt-get install -y $$missing" >&2; \
		exit 1; \
	fi; \
	echo "installing Debian packages: $$missing"; \
	DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing

demo: install
	rm -rf $(DEMO)
	$(BIN)/thresher run recipes/web-pretrain.yaml --input sample_data/web.jsonl --output $(DEMO)
	$(BIN)/thresher report $(DEMO)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# docs/manifest.schema.json from the pydantic model (tests/test_engine.py keeps the two in step).
schema: $(STAMP)
	$(BIN)/python -c "from thresher.pipelines.engine.manifest import manifest_json_schema as s; \
		open('docs/manifest.schema.json', 'w').write(s())"

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: install lint
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

# -P keeps the folder of the script off sys.path (the scripts import what they need explicitly).
bench: install
	$(BIN)/python -P bench/engine.py
	$(BIN)/python -P bench/plan.py
	$(BIN)/python -P bench/dedup.py --docs 100000
	$(BIN)/python -P bench/quality.py
	$(BIN)/python -P bench/perplexity.py
	$(BIN)/python -P bench/doremi.py
	$(BIN)/python -P bench/selection.py

clean:
	rm -rf $(VENV) out build *.egg-info
