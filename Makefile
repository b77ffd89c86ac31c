# Two commands: `make test` and `make demo`. Each builds .venv from nothing when needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo lint typecheck pytest vectors bench fuzz soak clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

test: $(STAMP) lint typecheck pytest

# A server and five simulated microwaves on loopback, every flow narrated.
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

# atheris on the frame decoder and both cores for FUZZ_SECONDS; inputs that add coverage and
# any crash land in tests/security/corpus/, which `make test` replays.
FUZZ_SECONDS ?= 60
fuzz: $(STAMP)
	FUZZ_SECONDS=$(FUZZ_SECONDS) $(BIN)/python fuzz/fuzz_frames.py

# Crash under load: 1,000 simulated devices on PostgreSQL while the server is killed (SIGKILL)
# and restarted twice and its database connections are cut once; prints what was lost (0).
soak: $(STAMP)
	$(BIN)/python scripts/soak.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
