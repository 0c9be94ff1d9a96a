"""pytest-benchmark: trilinear_sample per backend and F.grid_sample (see conftest.py)."""
from benchmarks.suite import run_benchmark
from benchmarks.workloads import SAMPLE

OP = SAMPLE


def test_trilinear_sample(benchmark, bench_case, bench_label, bench_mode):
    run_benchmark(benchmark, OP, bench_case, bench_label, bench_mode)
