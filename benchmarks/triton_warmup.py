"""Compiles the triton backend's autotune candidates for the benchmark shapes in parallel, before
the report autotunes them: Triton compiles the candidates of a kernel one after another (1-3 s
each, a few hundred for the SD1.5 shapes), and the report's autotuner then finds every binary
in Triton's on-disk cache and only times it.

    python -m benchmarks.triton_warmup [--jobs N] [--shapes sd15] [--dtype float16,bfloat16]

Worker i of n runs forward+backward of both ops through the triton backend on every case with
``LC4_TRITON_CONFIG_SHARD=i/n``, so that its autotuners compile (and time) every n-th candidate.
Needs a CUDA GPU; does nothing useful with ``LC4_TRITON_AUTOTUNE=0`` (one config, no tuning).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import torch

from . import shapes
from .inputs import attention_inputs, sample_inputs
from .workloads import attention_workload, sample_workload

SHARD_ENV = "LC4_TRITON_CONFIG_SHARD"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.triton_warmup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=max(1, min(16, (os.cpu_count() or 2) - 2)),
                        help="worker processes (default: the CPUs less two, at most 16)")
    parser.add_argument("--shapes", default="sd15", help="shape sets or case names, as for benchmarks.report")
    parser.add_argument("--dtype", default="float16,bfloat16")
    parser.add_argument("--no-memory-scaling", action="store_true", help="leave out the report's memory-scaling cases")
    parser.add_argument("--worker", action="store_true", help=f"run one shard (set by {SHARD_ENV}) and exit")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    return args


def cases_and_dtypes(args: argparse.Namespace) -> list[tuple[shapes.Case, torch.dtype]]:
    dtypes = [getattr(torch, name.strip()) for name in args.dtype.split(",") if name.strip()]
    work = [(case, dtype) for case in shapes.resolve(args.shapes) for dtype in dtypes]
    if not args.no_memory_scaling:  # the report sweeps them in its first dtype
        work += [(case, dtypes[0]) for case in shapes.memory_scaling_cases("gpu")]
    return work


def run_shard(args: argparse.Namespace) -> None:
    from triton.runtime.errors import OutOfResources

    device = torch.device("cuda")
    for case, dtype in cases_and_dtypes(args):
        for workload in (attention_workload(attention_inputs(case, device, dtype), "triton"),
                         sample_workload(sample_inputs(case, device, dtype), "triton")):
            try:  # a candidate the pruning let through; the autotuner itself skips such ones
                workload.forward_backward()
            except OutOfResources as error:
                print(f"triton warm-up: {case.name} {dtype}: {error}", file=sys.stderr)
    torch.cuda.synchronize()


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        run_shard(args)
        return 0
    if not torch.cuda.is_available():
        print("triton warm-up: no CUDA GPU, nothing to compile", file=sys.stderr)
        return 1
    cases_and_dtypes(args)  # a bad --shapes or --dtype fails here, not in every worker
    start = time.perf_counter()
    command = [sys.executable, "-m", "benchmarks.triton_warmup", "--worker", "--shapes", args.shapes,
               "--dtype", args.dtype] + (["--no-memory-scaling"] if args.no_memory_scaling else [])
    workers = [subprocess.Popen(command, env=dict(os.environ, **{SHARD_ENV: f"{i}/{args.jobs}"}))
               for i in range(args.jobs)]
    failed = [i for i, worker in enumerate(workers) if worker.wait() != 0]
    print(f"triton warm-up: {args.jobs} workers, {time.perf_counter() - start:.0f} s"
          + (f", workers {failed} failed" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
