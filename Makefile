# Two commands: `make test` and `make demo`. Each builds .venv from nothing when needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo lint typecheck pytest vectors bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

test: $(STAMP) lint typecheck pytest

# A server and three simulated microwaves on loopback, every flow narrated.
demo: $(STAMP)
	$(BIN)/keyseed demo

lint: $(STAMP)
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts

typecheck: $(STAMP)
	$(BIN)/mypy --strict src/keyseed

pytest: $(STAMP)
	$(BIN)/pytest

# Regenerate tests/vectors/ from fixed seeds (the tests check the files, never regenerate them).
vectors: $(STAMP)
	$(BIN)/python scripts/gen_vectors.py

bench: $(STAMP)
	$(BIN)/keyseed bench core

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
