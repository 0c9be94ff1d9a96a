"""pytest-benchmark suites over the same workloads as the report.

``pytest benchmarks/ --benchmark-only`` measures every available backend and the lower bound
for each case of a shape set (test-only backends are left out, as in the report); results are grouped so that each table compares the backends of
one (op, case, dtype, mode). Environment variables choose what runs:
``LC4_BENCH_SHAPES`` (a set or case names, as ``--shapes``; default: the report's default set),
``LC4_BENCH_DTYPE`` (default float32 on CPU, float16 on CUDA), ``LC4_BENCH_DEVICE``.
"""
from __future__ import annotations

from benchmarks import workloads
from benchmarks.report import default_backends
from benchmarks.suite import bench_cases, bench_device


def pytest_generate_tests(metafunc):
    if "bench_case" in metafunc.fixturenames:
        cases = bench_cases(bench_device())
        metafunc.parametrize("bench_case", cases, ids=[c.name for c in cases])
    if "bench_label" in metafunc.fixturenames:
        op = metafunc.module.OP
        labels = [workloads.LOWER_BOUND[op], *default_backends()]
        metafunc.parametrize("bench_label", labels)
    if "bench_mode" in metafunc.fixturenames:
        metafunc.parametrize("bench_mode", ["fwd", "fwd_bwd"])
