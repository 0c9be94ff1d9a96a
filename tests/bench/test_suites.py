"""The pytest-benchmark suites under benchmarks/ run (timing disabled) on one quick case."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pytest_benchmark")

from benchmarks.report import default_backends

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_benchmark_suites_run_every_backend_and_lower_bound():
    env = {**os.environ, "LC4_BENCH_SHAPES": "quick-4x4-d80", "LC4_BENCH_DEVICE": "cpu", "LC4_BENCH_DTYPE": "float32"}
    done = subprocess.run([sys.executable, "-m", "pytest", "benchmarks", "-q", "-p", "no:cacheprovider",
                           "--benchmark-disable", "-rs"], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    per_op = (1 + len(default_backends())) * 2  # lower bound and each backend, fwd and fwd+bwd
    assert f"{2 * per_op} passed" in done.stdout, done.stdout[-2000:]
