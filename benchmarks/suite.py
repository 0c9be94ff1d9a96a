"""Shared body of the pytest-benchmark suites (``benchmarks/test_*.py``); see conftest.py for
the environment variables that choose device, dtype and shapes."""
from __future__ import annotations

import os

import pytest
import torch

import lc4_kernels as K
from benchmarks import check, measure, shapes, workloads
from benchmarks.report import DTYPES


def bench_device() -> torch.device:
    return torch.device(os.environ.get("LC4_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu"))


def bench_dtype(device: torch.device) -> torch.dtype:
    return DTYPES[os.environ.get("LC4_BENCH_DTYPE") or ("float16" if device.type == "cuda" else "float32")]


def bench_cases(device: torch.device) -> list[shapes.Case]:
    return shapes.resolve(os.environ.get("LC4_BENCH_SHAPES") or shapes.default_set(device.type, quick=False))


def run_benchmark(benchmark, op: str, case: shapes.Case, label: str, mode: str) -> None:
    device = bench_device()
    dtype = bench_dtype(device)
    if label != workloads.LOWER_BOUND[op]:
        reason = K.get_backend(label).unsupported_reason(device, dtype, case.head_dim if op == workloads.ATTENTION else None)
        if reason:
            pytest.skip(f"{label}: {reason}")
    inputs = check.make_inputs(op, case, device, dtype)
    bound, *backends = workloads.workloads_for(op, inputs, [] if label == workloads.LOWER_BOUND[op] else [label])
    workload = backends[0] if backends else bound
    step = workload.forward if mode == "fwd" else workload.forward_backward

    def synchronised():
        step()
        measure.synchronize(device)

    benchmark.group = f"{op} {case.name} {str(dtype).removeprefix('torch.')} {mode}"
    benchmark.extra_info.update(case.describe())
    benchmark.extra_info["ran_backend"] = None if workload.is_lower_bound else K.backend_for(
        op, *workloads.op_arguments(op, inputs), backend=label)
    benchmark.pedantic(synchronised, warmup_rounds=1, rounds=int(os.environ.get("LC4_BENCH_ROUNDS", "5")))
