# The two commands a newcomer types: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-fast clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The main job on the embedded defaults: a demo product in, a folder of creatives out.
run: $(STAMP)
	$(BIN)/studio demo --out out/demo

# Everything, the import-layer contracts included (tests/test_layers.py runs lint-imports).
test: $(STAMP)
	$(BIN)/python -m pytest -q

# The inner loop: skips the tests marked `slow` (those that load models or start servers and browsers).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf out
