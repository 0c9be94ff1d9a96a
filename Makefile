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

# The second process runs the kernel equivalence tests for the triton backend in Triton's CPU
# interpreter (TRITON_INTERPRET must be set before any kernel is defined, hence a new process).
TRITON_INTERPRETER_TESTS := tests/kernels/test_backends.py tests/kernels/test_sweep.py \
	tests/kernels/test_registration.py tests/kernels/test_errors.py tests/kernels/test_triton_backend.py

test: setup
	$(PY) -m pytest tests -q -p no:cacheprovider
	@if $(PY) -c "import triton" 2>/dev/null; then \
		echo "triton backend in the Triton interpreter:"; \
		TRITON_INTERPRET=1 LC4_TEST_BACKENDS=triton $(PY) -m pytest $(TRITON_INTERPRETER_TESTS) -q -p no:cacheprovider; \
	else echo "triton not installed: the triton backend's interpreter tests are left out"; fi

bench: setup
	$(PY) -m benchmarks.report --check
gpu-check: setup ; scripts/gpu_check.sh
