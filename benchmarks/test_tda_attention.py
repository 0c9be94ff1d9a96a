"""pytest-benchmark: tda_attention per backend and SDPA on pre-sampled k~/v~ (see conftest.py)."""
from benchmarks.suite import run_benchmark
from benchmarks.workloads import ATTENTION

OP = ATTENTION


def test_tda_attention(benchmark, bench_case, bench_label, bench_mode):
    run_benchmark(benchmark, OP, bench_case, bench_label, bench_mode)
