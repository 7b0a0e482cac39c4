# medflow: the two commands are `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DATA   ?= ./medflow-data
HOST   ?= 127.0.0.1
PORT   ?= 8080
DIMSE_PORT    ?= 11112
DEMO_PATIENTS ?= 200

.PHONY: run test lint check system-deps-run system-deps-test clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "medflow needs Python >= 3.11")'
	@$(PYTHON) -m venv --help >/dev/null 2>&1 || scripts/system-deps.sh venv
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

system-deps-run:
	@scripts/system-deps.sh run

system-deps-test:
	@scripts/system-deps.sh test

## Start medflow on the embedded default (SQLite + filesystem under $(DATA)); on first start
## it generates and loads the synthetic demo hospital ($(DEMO_PATIENTS) patients; 0: none).
## `$(BIN)/medflow demo reset --data-dir $(DATA)` starts over.
run: system-deps-run $(STAMP)
	$(BIN)/medflow serve --data-dir $(DATA) --host $(HOST) --port $(PORT) \
	  --dimse-port $(DIMSE_PORT) --demo-patients $(DEMO_PATIENTS)

## Static checks: ruff, mypy (strict), import-linter (layering of DESIGN.md).
lint: $(STAMP)
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests scripts
	$(BIN)/mypy
	$(BIN)/lint-imports

## Everything CI runs: static checks, then the whole test suite (2 workers).
test: system-deps-test $(STAMP) lint
	@# byte-compile our sources once: with PYTHONDONTWRITEBYTECODE set, every CLI process the
	@# tests start would otherwise compile them again
	$(BIN)/python -m compileall -q src >/dev/null
	$(BIN)/pytest -n 2 --dist loadfile -q --durations=25

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
