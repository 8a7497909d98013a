# `make run` and `make test` do all set-up themselves: they create .venv and install the
# pinned requirements when missing or changed (a stamp file makes the check instant).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha1sum requirements.txt | cut -c1-12)
# TFLite 2.16.1 with its Flex delegate (tensorflow-cpu), only for running exported text models
# (pipeline/runtime/flex_child.py): the runtime of the newest stock select-TF-ops AAR
FLEX := .venv-flex
FLEX_STAMP := $(FLEX)/.installed-$(shell sha1sum requirements-flex.txt | cut -c1-12)
CONFIG ?= configs/default.yaml

.PHONY: run test test-slow venv flex-env bench lab clean

$(STAMP): requirements.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements.txt
	@rm -f $(VENV)/.installed-*
	@touch $@

venv: $(STAMP)

$(FLEX_STAMP): requirements-flex.txt
	@test -x $(FLEX)/bin/python || $(PYTHON) -m venv $(FLEX)
	$(FLEX)/bin/python -m pip install -q --disable-pip-version-check -r requirements-flex.txt
	@rm -f $(FLEX)/.installed-*
	@touch $@

flex-env: $(FLEX_STAMP)

run: $(STAMP) $(FLEX_STAMP)  ## the main job: fine-tune the embedded default (builds it on first use)
	$(BIN)/python -m pipeline run $(CONFIG)

test: $(STAMP) $(FLEX_STAMP)  ## every test not marked slow (about 10 minutes on 2 cores)
	$(BIN)/python -m pytest -q -m "not slow" --durations=5

test-slow: $(STAMP) $(FLEX_STAMP)  ## the slow tests: Flex interpreter, papermill end to end, SIGKILL resume
	$(BIN)/python -m pytest -q -m slow --durations=5

bench: $(STAMP) $(FLEX_STAMP)  ## size/speed benchmarks on a GPT-2-base-shaped model
	$(BIN)/python -m pipeline bench export

LAB_IP ?= 127.0.0.1
LAB_PORT ?= 8888
lab: $(STAMP)  ## JupyterLab on notebooks/, kernel = this project's .venv; prints the URL
	@echo "JupyterLab on http://$(LAB_IP):$(LAB_PORT)/lab (the token is in the URL printed below)"
	$(BIN)/jupyter lab --no-browser --ip=$(LAB_IP) --port=$(LAB_PORT) \
		--ServerApp.root_dir=notebooks --MappingKernelManager.default_kernel_name=python3 \
		$(if $(filter 0,$(shell id -u)),--allow-root)

clean:
	rm -rf runs .cache
