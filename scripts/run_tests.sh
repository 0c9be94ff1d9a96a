#!/usr/bin/env bash
# The test suite (`make test`): the main pass over tests/, and the triton backend's kernel tests
# under Triton's CPU interpreter, a second process because TRITON_INTERPRET must be set before any
# kernel is defined. The two run side by side. The interpreter is single-threaded Python, and so
# are most model and training tests (tests/conftest.py gives them one torch thread), so the main
# pass takes those folders first: the interpreter then overlaps them and has a core of its own,
# rather than competing with the kernel tests and compile checks, which use every core.
# The interpreter pass's output is printed after the main pass's; either failing fails the run.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PYTEST=("$PY" -m pytest -q -p no:cacheprovider)

INTERPRETER_TESTS=(tests/kernels/test_backends.py tests/kernels/test_sweep.py tests/kernels/test_autograd.py
  tests/kernels/test_backward_memory.py tests/kernels/test_dispatch.py tests/kernels/test_kernel_corner_cases.py
  tests/kernels/test_registration.py tests/kernels/test_errors.py tests/kernels/test_triton_backend.py
  tests/kernels/test_func_transforms.py tests/kernels/test_export.py tests/kernels/test_forward_mode.py
  tests/kernels/test_second_order.py)

# Every folder of tests/ runs; these first, tests/kernels last, the others between.
FIRST=(tests/train tests/model tests/eval)
folders=("${FIRST[@]}")
for folder in tests/*/; do
  folder=${folder%/}
  case " ${FIRST[*]} tests/kernels tests/__pycache__ " in
    *" $folder "*) ;;
    *) folders+=("$folder") ;;
  esac
done
folders+=(tests/kernels)

interpreter_pid=
log=$(mktemp -d)
trap '[ -n "$interpreter_pid" ] && kill "$interpreter_pid" 2>/dev/null; rm -rf "$log"' EXIT
if "$PY" -c "import triton" 2>/dev/null; then
  TRITON_INTERPRET=1 LC4_TEST_BACKENDS=triton "${PYTEST[@]}" "${INTERPRETER_TESTS[@]}" > "$log/interpreter.txt" 2>&1 &
  interpreter_pid=$!
fi

"${PYTEST[@]}" "${folders[@]}"
status=$?

if [ -n "$interpreter_pid" ]; then
  wait "$interpreter_pid" || status=1
  interpreter_pid=
  echo "triton backend in the Triton interpreter (run beside the pass above):"
  cat "$log/interpreter.txt"
else
  echo "triton not installed: the triton backend's interpreter tests are left out"
fi
exit "$status"
