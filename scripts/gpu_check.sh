#!/usr/bin/env bash
# `make gpu-check`: on a machine with a CUDA GPU, builds the CUDA extension for the visible GPU,
# runs the kernel test suite on CUDA (the cuda and triton backends join every equivalence test),
# the same again with the sm_70 (V100) paths forced (LC4_CUDA_FORCE_SM70=1), compute-sanitizer
# memcheck over a small forward+backward, the model layer's GPU tests (pipeline and training on
# the tiny model), and then, alone on the GPU, the parallel compile of the
# Triton autotune candidates (benchmarks/triton_warmup.py), the host time per call
# (benchmarks/host_overhead.py), forward mode's and double backward's time and memory
# (benchmarks/higher_order.py), a
# profile of the largest layers (benchmarks/profile.py) and the benchmark report.
# Everything goes under benchmarks/results/<device>/.
#
# The three correctness steps only share the GPU with each other (pytest-xdist spreads each over
# CPU cores when it is installed); the benchmark runs after them. The tests run Triton with one
# fixed launch configuration (LC4_TRITON_AUTOTUNE=0): autotuning every test shape would take far
# longer than the tests. The benchmark autotunes unless LC4_TRITON_AUTOTUNE=0 is set.
# Optional limits in seconds, for a machine lent for a short time: TEST_TIME_LIMIT (each test
# step), BENCH_TIME_LIMIT. BENCH_ARGS replaces the report's arguments (default: --check), WARMUP_ARGS
# the warm-up's (default: every SD1.5 shape and the memory sweep; give it the report's --shapes).
# GPU_CHECK_SKIP=step,... leaves steps out (tests, model, warmup, profile, report), so that a lease with
# a per-command limit can run them in two calls (the build and Triton's cache are kept between).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PY:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi

wanted() {  # wanted STEP: STEP (tests, model, warmup, profile, report) is not in GPU_CHECK_SKIP
  [[ ",${GPU_CHECK_SKIP:-}," != *",$1,"* ]]
}

limited() {  # limited SECONDS command...: run, stopped after SECONDS when SECONDS is set
  local seconds=$1; shift
  if [[ -n "$seconds" ]]; then timeout --signal=INT --kill-after=15 "$seconds" "$@"; else "$@"; fi
}

# torch's build compiles for the visible GPU only when TORCH_CUDA_ARCH_LIST is unset, but
# setup.py sets its V100-to-Hopper default then; here the visible GPU is all that runs.
if [[ -z "${TORCH_CUDA_ARCH_LIST:-}" ]]; then
  TORCH_CUDA_ARCH_LIST=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
  export TORCH_CUDA_ARCH_LIST
fi
# The extension must carry the CUDA kernels: rebuild, failing loudly rather than falling back.
# In place (no pip): an offline image cannot fetch the build requirements pip may ask for.
LC4_REQUIRE_EXTENSION=1 "$PY" setup.py -q build_ext --inplace
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # scripts/*.py import the in-place build too
DEVICE=$("$PY" -c "import re, torch; print(re.sub(r'[^a-z0-9]+', '-', torch.cuda.get_device_name().lower()).strip('-'))")
OUT=benchmarks/results/$DEVICE
mkdir -p "$OUT"
status=0
{
  "$PY" - <<'PY'
import platform, torch, lc4_kernels
from lc4_kernels import _C
assert torch.cuda.is_available(), "no CUDA device visible"
assert _C.with_cuda, "lc4_kernels._C was built without CUDA (no toolkit found at build time?)"
props = torch.cuda.get_device_properties(0)
try:
    import triton
    triton_version = triton.__version__
except ImportError:
    triton_version = None
print(f"device: {props.name} (sm_{props.major}{props.minor}, {props.multi_processor_count} SMs, "
      f"{props.total_memory / 2**30:.0f} GiB)")
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), triton {triton_version}, python {platform.python_version()}")
print("backends:", lc4_kernels.available_backends())
PY
  echo "commit: ${LC4_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
  echo "nvcc: $(nvcc --version 2>/dev/null | tail -1 || echo none)"
  echo "TORCH_CUDA_ARCH_LIST: $TORCH_CUDA_ARCH_LIST"
} | tee "$OUT/environment.txt"

PARALLEL=()
if "$PY" -c "import xdist" 2>/dev/null; then PARALLEL=(-n 6); fi
# CPU-only, compile-only and emulator tests say nothing about the GPU and run in CI.
NOT_GPU=(--ignore=tests/kernels/test_cuda_compile.py --ignore=tests/kernels/test_cuda_tsan.py
         --ignore=tests/kernels/test_cuda_emu.py --ignore=tests/kernels/test_triton_compile.py)
# -v: each test's outcome is logged as it ends, so a run cut at its time limit still says which ran.
run_tests() (  # run_tests [VAR=value...]: the kernel tests, in a subshell with those variables
  export LC4_TRITON_AUTOTUNE=${LC4_TRITON_AUTOTUNE_TESTS:-0} "$@"
  limited "${TEST_TIME_LIMIT:-}" "$PY" -m pytest tests/kernels tests/packaging/test_extension_linking.py -v -p no:cacheprovider "${PARALLEL[@]}" "${NOT_GPU[@]}"
)
if wanted tests; then
  run_tests > "$OUT/gpu_tests.txt" 2>&1 &
  all_tests=$!
  run_tests LC4_CUDA_FORCE_SM70=1 LC4_TEST_BACKENDS=cuda > "$OUT/gpu_tests_sm70_paths.txt" 2>&1 &
  sm70_tests=$!
  if command -v compute-sanitizer >/dev/null; then
    limited "${TEST_TIME_LIMIT:-}" compute-sanitizer --tool memcheck --error-exitcode 1 "$PY" scripts/cuda_small_step.py \
      > "$OUT/memcheck.txt" 2>&1 || { echo "memcheck failed"; status=1; }
  else
    echo "compute-sanitizer not found: memcheck skipped" > "$OUT/memcheck.txt"
  fi
  wait $all_tests || status=1
  wait $sm70_tests || status=1
  tail -n 3 "$OUT/gpu_tests.txt" "$OUT/gpu_tests_sm70_paths.txt" "$OUT/memcheck.txt"
fi

# The model layer on the GPU: the pipeline against its CPU output, in half precision and with
# model CPU offload; stage 1 training in float32 and in fp16 with gradient checkpointing.
if wanted model; then
  LC4_TRITON_AUTOTUNE=${LC4_TRITON_AUTOTUNE_TESTS:-0} limited "${TEST_TIME_LIMIT:-}" \
    "$PY" -m pytest tests/model/test_model_pipeline_cuda.py \
    "tests/train/test_train_loop.py::test_stage1_trains_on_cuda" -v -p no:cacheprovider \
    > "$OUT/gpu_model_tests.txt" 2>&1 || status=1
  tail -n 3 "$OUT/gpu_model_tests.txt"
fi

# Autotuning compiles each Triton candidate on first use, one after another: compile them for the
# report's shapes in parallel first (into Triton's cache), so that the profile and the report only
# time them.
if wanted warmup && [[ "${LC4_TRITON_AUTOTUNE:-1}" != "0" ]] && "$PY" -c "import triton" 2>/dev/null; then
  read -r -a warmup_args <<< "${WARMUP_ARGS:-}"
  limited "${BENCH_TIME_LIMIT:-}" "$PY" -m benchmarks.triton_warmup "${warmup_args[@]}" 2>&1 | tail -n 20 > "$OUT/triton_warmup.txt" ||
    echo "triton warm-up failed: the report compiles what is missing itself"
fi

# Where the time goes at the two largest SD1.5 layers (seconds; before the report, which takes minutes):
# every backend, then triton with one dk~/dv~ program per key block (LC4_TRITON_QUERY_SPLITS=1:
# the second H200 run found its backward slower than the first run's, which had no query splits),
# and triton on the second run's fixed tiles (64 x 32 on 8 warps for all three attention kernels:
# two warpgroups on the same 64 rows, 64 x 16 score products; dk~/dv~ on mma.sync), kernel by kernel
# against the current ones (128-row resident blocks on sm_90), and triton with each head dim in one
# power-of-two column block (LC4_TRITON_HEAD_SPLIT=off: d = 40 as 64 columns, 80 as 128) instead of two
# (32 + 16, 64 + 16).
# Then cuda on the second H200 run's paths (LC4_CUDA_FORWARD=two_pass: the forward computes the
# scores twice; LC4_CUDA_DQ=fused: dq by atomics in the dk~/dv~ kernel; LC4_CUDA_SCATTER=atomic:
# dk, dv by float32 atomics) against the current ones (O in registers over one pass; dq in its own
# kernel; dk~/dv~ 16 keys a warp; the segment scatter), kernel by kernel; adding
# LC4_CUDA_PRESAMPLE=0 LC4_CUDA_FORWARD=shared LC4_CUDA_QUERY_SPLITS=1 selects the first run's
# cuda paths (profiled against the second's in benchmarks/results/nvidia-h200). Last, cuda with
# LC4_CUDA_PREFETCH=off: the tile kernels load each tile when it is needed instead of one ahead.
if wanted profile; then
  # Host time per call on a tiny case (kernels negligible): launches, autograd, allocations.
  LC4_TRITON_AUTOTUNE=0 limited "${TEST_TIME_LIMIT:-}" "$PY" -m benchmarks.host_overhead > /dev/null || status=1
  # Forward mode (torch.func.jvp) and a gradient penalty (double backward) per backend against the
  # reference's, at the 512 px levels.
  LC4_TRITON_AUTOTUNE=0 limited "${TEST_TIME_LIMIT:-}" "$PY" -m benchmarks.higher_order > /dev/null || status=1
  for case in sd15-512px-64x64 sd15-512px-32x32; do
    limited "${TEST_TIME_LIMIT:-}" "$PY" -m benchmarks.profile --case $case > /dev/null || status=1
    LC4_TRITON_QUERY_SPLITS=1 limited "${TEST_TIME_LIMIT:-}" "$PY" -m benchmarks.profile \
      --case $case --backends triton --tag triton-one-split > /dev/null || status=1
    LC4_TRITON_AUTOTUNE=0 LC4_TRITON_FIXED="forward=64x32x8x2;dq=64x32x8x2;dkv=64x32x8x2" \
      limited "${TEST_TIME_LIMIT:-}" "$PY" -m benchmarks.profile \
      --case $case --backends triton --tag triton-second-run-tiles > /dev/null || status=1
    LC4_TRITON_HEAD_SPLIT=off limited "${TEST_TIME_LIMIT:-}" "$PY" -m benchmarks.profile \
      --case $case --backends triton --tag triton-one-column-block > /dev/null || status=1
    LC4_CUDA_FORWARD=two_pass LC4_CUDA_DQ=fused LC4_CUDA_SCATTER=atomic limited "${TEST_TIME_LIMIT:-}" "$PY" -m benchmarks.profile \
      --case $case --backends cuda --tag cuda-second-run-paths > /dev/null || status=1
    LC4_CUDA_PREFETCH=off limited "${TEST_TIME_LIMIT:-}" "$PY" -m benchmarks.profile \
      --case $case --backends cuda --tag cuda-no-prefetch > /dev/null || status=1
  done
fi

if wanted report; then
  read -r -a bench_args <<< "${BENCH_ARGS:---check}"
  limited "${BENCH_TIME_LIMIT:-}" "$PY" -m benchmarks.report "${bench_args[@]}" --device cuda || status=1
fi
exit $status
