# Every target builds .venv from nothing (only python3 is assumed) and installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench lint format clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	rm -f demo.duckdb
	$(BIN)/wpipe ingest examples/models --db demo.duckdb --lake demo_lake
	$(BIN)/wpipe models --db demo.duckdb
	$(BIN)/wpipe report --db demo.duckdb -o report.html

test: $(STAMP)
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python bench/bench_ingest.py

lint: $(STAMP)
	$(BIN)/ruff check pipeline tests bench
	$(BIN)/ruff format --check pipeline tests bench

format: $(STAMP)
	$(BIN)/ruff check --fix pipeline tests bench
	$(BIN)/ruff format pipeline tests bench

clean:
	rm -rf $(VENV) demo.duckdb demo_lake .pytest_cache
