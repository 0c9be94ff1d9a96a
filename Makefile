# Two entry points do everything on a fresh machine: `make bench` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
BUILD_INPUTS := setup.py requirements.txt requirements-dev.txt scripts/setup_env.sh \
	$(shell find csrc -type f 2>/dev/null)
STAMP := $(VENV)/.lc4-built

.PHONY: setup test bench
setup: $(STAMP)

$(STAMP): $(BUILD_INPUTS)
	VENV=$(VENV) scripts/setup_env.sh
	touch $@

test: setup
	$(PY) -m pytest tests -q -p no:cacheprovider

bench: setup
	$(PY) -m benchmarks.report --check
