#!/usr/bin/env bash
# `make gpu-check`: on a machine with a CUDA GPU, builds the CUDA extension, runs the kernel test
# suite on CUDA (the cuda backend joins every equivalence test), again with the sm_70 (V100) paths
# forced (LC4_CUDA_FORCE_SM70=1), runs compute-sanitizer memcheck over a small forward+backward,
# and the benchmark report. Everything goes under benchmarks/results/<device>/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}

# The extension must carry the CUDA kernels: rebuild, failing loudly rather than falling back.
LC4_REQUIRE_EXTENSION=1 "$PY" -m pip install --disable-pip-version-check -q --no-build-isolation --no-deps -e .
"$PY" - <<'PY'
import torch, lc4_kernels
from lc4_kernels import _C
assert torch.cuda.is_available(), "no CUDA device visible"
assert _C.with_cuda, "lc4_kernels._C was built without CUDA (no toolkit found at build time?)"
print("backends:", lc4_kernels.available_backends())
PY
DEVICE=$("$PY" -c "import re, torch; print(re.sub(r'[^a-z0-9]+', '-', torch.cuda.get_device_name().lower()).strip('-'))")
OUT=benchmarks/results/$DEVICE
mkdir -p "$OUT"
status=0
"$PY" -m pytest tests/kernels -q -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.txt" || status=1
LC4_CUDA_FORCE_SM70=1 "$PY" -m pytest tests/kernels -q -p no:cacheprovider -k "cuda and not emu" 2>&1 \
  | tee "$OUT/gpu_tests_sm70_paths.txt" || status=1
if command -v compute-sanitizer >/dev/null; then
  compute-sanitizer --tool memcheck --error-exitcode 1 "$PY" scripts/cuda_small_step.py 2>&1 \
    | tee "$OUT/memcheck.txt" || status=1
else
  echo "compute-sanitizer not found: memcheck skipped" | tee "$OUT/memcheck.txt"
fi
"$PY" -m benchmarks.report --check --device cuda || status=1
exit $status
