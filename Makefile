# Two entry points do everything on a fresh machine: `make bench` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
BUILD_INPUTS := setup.py requirements.txt requirements-dev.txt scripts/setup_env.sh \
	$(shell find csrc -type f 2>/dev/null)
STAMP := $(VENV)/.lc4-built

.PHONY: setup test bench gpu-check
setup: $(STAMP)

$(STAMP): $(BUILD_INPUTS)
	VENV=$(VENV) scripts/setup_env.sh
	touch $@

# The main pass and the triton backend's interpreter pass, side by side (see the script).
test: setup
	PY=$(PY) scripts/run_tests.sh

bench: setup
	$(PY) -m benchmarks.report --check
gpu-check: setup ; scripts/gpu_check.sh

# Toy L-C4: generated data, the tiny VAE and luminance encoder, stage 1 (single frames, then
# 8-frame clips) and stage 2
# through `lc4 train`, then the model folder with its training curves and the report of the
# three claims on held-out clips (report.json). A quick run of the same path:
#   make toy-model TOY_MODEL=build/toy-smoke TOY_TRAIN_SET="--set max_steps=6" \
#        TOY_SET="--set data.num_train=40 --set vae.steps=20 --set luminance.steps=5"
TOY_CONFIG ?= configs/toy/toy.yaml
TOY_BUILD ?= build/toy
TOY_MODEL ?= models/toy
TOY_DEMO ?= $(TOY_MODEL)/demo
TOY_SET ?=
TOY_TRAIN_SET ?=
toy_stage = --set model.path=$(1) --set data.source=$(TOY_BUILD)/data/train.jsonl --set output_dir=$(2) \
	--set data.encoding_cache_file=$(TOY_BUILD)/encoding_cache.safetensors $(TOY_TRAIN_SET)

.PHONY: toy-model demo
toy-model: setup
	rm -rf $(TOY_BUILD)
	$(PY) -m lc4.toy data $(TOY_BUILD)/data --config $(TOY_CONFIG) $(TOY_SET)
	$(PY) -m lc4.toy init-model $(TOY_BUILD)/init --data $(TOY_BUILD)/data --config $(TOY_CONFIG) $(TOY_SET)
	$(PY) -m lc4 train configs/toy/stage1_images.yaml $(call toy_stage,$(TOY_BUILD)/init,$(TOY_BUILD)/stage1_images)
	$(PY) -m lc4 train configs/toy/stage1.yaml $(call toy_stage,$(TOY_BUILD)/stage1_images/model,$(TOY_BUILD)/stage1)
	$(PY) -m lc4 train configs/toy/stage2.yaml $(call toy_stage,$(TOY_BUILD)/stage1/model,$(TOY_BUILD)/stage2)
	$(PY) -m lc4.toy finish $(TOY_MODEL) --init $(TOY_BUILD)/init --runs $(TOY_BUILD)/stage1_images $(TOY_BUILD)/stage1 $(TOY_BUILD)/stage2
	$(PY) -m lc4.toy evaluate $(TOY_MODEL) --data $(TOY_BUILD)/data --config $(TOY_CONFIG) $(TOY_SET) \
		--output $(TOY_MODEL)/report.json

demo: setup
	$(PY) -m lc4.toy demo $(TOY_MODEL) --out $(TOY_DEMO) --config $(TOY_CONFIG) $(TOY_SET)
