# `make run` and `make test` do all set-up themselves: they create .venv and install the
# pinned requirements when missing or changed (a stamp file makes the check instant).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha1sum requirements.txt | cut -c1-12)
CONFIG ?= configs/default.yaml

.PHONY: run test test-slow venv clean

$(STAMP): requirements.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements.txt
	@rm -f $(VENV)/.installed-*
	@touch $@

venv: $(STAMP)

run: $(STAMP)  ## the main job: fine-tune the embedded default (builds it on first use)
	$(BIN)/python -m pipeline run $(CONFIG)

test: $(STAMP)  ## the default suite (under 15 minutes on 2 cores)
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: $(STAMP)  ## the slow tests only
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf runs .cache
