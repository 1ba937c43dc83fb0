# telgate: two commands for a newcomer. `make run` serves a gateway; `make test` passes the suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,postgres]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/telgate init
	$(BIN)/telgate serve

lint: $(STAMP)
	$(BIN)/ruff check gateway ingest vault tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

# pytest exits 5 when it collects no tests: that is a failure here, never a pass.
test: lint typecheck
	$(BIN)/pytest -q -p no:cacheprovider; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$status

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
