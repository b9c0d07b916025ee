# Set-up and the main jobs. `make train` and `make test` work on a fresh
# machine with only Python 3 (3.8 or newer) and pip: they create .venv first.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The IPU-proxy lane (Python 3.8 + the IPU stack's library pins, on CPU).
# The first candidate that actually runs Python 3.8: a pyenv shim on PATH can
# exist and still fail ("python3.8: command not found" when 3.8 is not the
# pyenv version selected), so each is tried, not merely looked up.
PYTHON38 ?= $(shell for c in $$(command -v python3.8 2>/dev/null) $$HOME/.pyenv/versions/3.8*/bin/python3.8 /root/.pyenv/versions/3.8*/bin/python3.8 /usr/bin/python3.8 /usr/local/bin/python3.8; do \
	"$$c" -c 'import sys; assert sys.version_info[:2] == (3, 8)' >/dev/null 2>&1 && { echo "$$c"; break; }; done)
PROXY_VENV ?= .venv-ipu-proxy
SAMPLE_DATA := build/amazon_electronics_sample
SOURCES := din_jax experiments data_prep tests examples
PYTEST_ARGS ?=
# Test files are spread over one worker per core (pytest-xdist); a file stays
# on one worker, so its module fixtures are built once. PYTEST_WORKERS=0 runs
# everything in this process.
PYTEST_WORKERS ?= auto
# A worker that dies ends the run at once, naming the test it was running (no restart, which could hang the run).
PYTEST_PARALLEL = -n $(PYTEST_WORKERS) $(if $(filter 0,$(PYTEST_WORKERS)),,--dist loadfile --max-worker-restart 0)

.PHONY: setup train test test-ipu-proxy lint format data figures docs-figures results clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,watch,parquet,lint]'
	touch $@

# The embedded real sample of the DIN paper's Amazon Electronics data (the authors' format).
data: $(SAMPLE_DATA)/meta.json

$(SAMPLE_DATA)/meta.json: $(VENV)/.installed
	$(BIN)/python data_prep/build.py --format din --input data/amazon_electronics_din_sample \
		--output $(SAMPLE_DATA) --overwrite

# The main job: DIN on the embedded Amazon Beauty 5-core with the recipe chosen on validation in docs/RESULTS.md,
# then the figures to expect (that recipe's and BaseModel's, mean ± std over 3 seeds).
train: build/beauty/meta.json
	$(BIN)/python experiments/train.py --flagfile experiments/configs/beauty_din.flags
	$(BIN)/python experiments/expected.py --table docs/results/paper_beauty.csv --rows din+mba,base

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_PARALLEL) $(PYTEST_ARGS)

$(PROXY_VENV)/.installed: requirements-ipu-proxy.txt requirements-ipu-common.txt requirements-ipu-nodeps.txt
	@test -n "$(PYTHON38)" || { echo "make: the IPU-proxy lane needs Python 3.8 (set PYTHON38=/path/to/python3.8)"; exit 2; }
	test -x $(PROXY_VENV)/bin/python || $(PYTHON38) -m venv $(PROXY_VENV)
	$(PROXY_VENV)/bin/python -m pip install --quiet -r requirements-ipu-proxy.txt
	$(PROXY_VENV)/bin/python -m pip install --quiet --no-deps -r requirements-ipu-nodeps.txt
	touch $@

test-ipu-proxy: $(PROXY_VENV)/.installed
	$(PROXY_VENV)/bin/python -m pytest -q -p no:cacheprovider $(PYTEST_PARALLEL) $(PYTEST_ARGS)

# The README's figures from real data into runs/figures (trains two small Grocery runs, ~1.5 min on 2 cores);
# docs-figures writes them into docs/figures.
figures: setup
	PYTHON=$(BIN)/python experiments/make_figures.sh

docs-figures: setup
	PYTHON=$(BIN)/python OUT=docs/figures experiments/make_figures.sh

# docs/RESULTS.md's grids (hours on 2 cores; finished runs of the same code are reused), then their records and
# tables copied from runs/results into docs/results. GRIDS picks some.
GRIDS ?= paper_grocery attention_grocery regularizers_grocery mba_baselines_grocery sequence_grocery mha_grocery \
	paper_beauty attention_beauty regularizers_beauty mba_baselines_beauty sequence_beauty mha_beauty
results: setup build/grocery/meta.json build/beauty/meta.json
	for grid in $(GRIDS); do $(BIN)/python experiments/ablate.py --flagfile experiments/configs/$$grid.flags || exit 1; done
	mkdir -p docs/results
	cp runs/results/*.jsonl $(foreach grid,$(GRIDS),runs/results/$(grid).md runs/results/$(grid).csv runs/results/$(grid).png) docs/results/

build/grocery/meta.json: $(VENV)/.installed
	$(BIN)/python data_prep/build.py --format interactions --input data/amazon_grocery_5core/train.csv \
		--meta data/amazon_grocery_5core/item_meta.csv --category_col i_category --output build/grocery --overwrite

build/beauty/meta.json: $(VENV)/.installed
	$(BIN)/python data_prep/build.py --format sequences --input data/amazon_beauty_5core/Beauty.txt \
		--meta data/amazon_beauty_5core/Beauty_item2attributes.json --output build/beauty --overwrite

# The linter, and the formatter's check (ruff format: make format rewrites the files).
lint: setup
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/ruff format --check $(SOURCES)

format: setup
	$(BIN)/ruff format $(SOURCES)

clean:
	rm -rf build runs .pytest_cache
