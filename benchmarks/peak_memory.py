"""Peak memory of one ``tda_attention`` forward+backward per backend, at named cases::

    python -m benchmarks.peak_memory --cases sd15-512px-64x64 sd15-512px-32x32 --backends triton cpu \
        [--dtype float16] [--device cpu|cuda] [--out DIR]

On CUDA the growth of ``torch.cuda.max_memory_allocated`` over one call after a warm-up call,
with SDPA on pre-sampled k~/v~ beside the backends (the lower bound of the report). On the CPU the
peak of PyTorch's allocator over one call (``measure.allocator_peak``): the launchers allocate the
same tensors wherever their kernels run, so this is what a backend's launchers would hold on a GPU
as well (the kernels themselves allocate nothing). With ``TRITON_INTERPRET=1`` the triton backend
runs in Triton's interpreter, minutes a call at the 64x64 layer. SDPA's CPU path holds the whole
score matrix, unlike the GPU's fused kernels, so it is left out on the CPU. Inputs are not counted.
Writes ``<out>/<device-slug>/peak-memory.{md,json}``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from . import environment, inputs, measure, workloads
from .report import DTYPES
from .shapes import SHAPE_SETS

CASES = {case.name: case for cases in SHAPE_SETS.values() for case in cases}
MIB = 2**20


def measure_case(case, backends: list[str], device: torch.device, dtype: torch.dtype) -> list[dict]:
    attention_inputs = inputs.attention_inputs(case, device, dtype)
    labels = [*backends, *(["sdpa"] if device.type == "cuda" else [])]
    rows = []
    for label in labels:
        workload = (workloads.sdpa_workload(attention_inputs) if label == "sdpa"
                    else workloads.attention_workload(attention_inputs, label))
        if device.type == "cuda":
            workload.forward_backward()  # compiles and autotunes outside the measured call
            peak = measure.peak_memory(workload.forward_backward, device, reset=workload.clear_grads).bytes
        else:
            peak = measure.allocator_peak(workload.forward_backward)
        workload.clear_grads()
        rows.append({"case": case.name, "label": label, "peak_bytes": peak})
    return rows


def markdown(doc: dict) -> str:
    env = doc["environment"]
    lines = [f"# Peak memory of tda_attention forward+backward: {env['device']['name']}", "",
             f"- {doc['dtype'].removeprefix('torch.')}; {doc['method']}; inputs not counted",
             f"- torch {env['torch']}, Triton {env['triton'] or 'not installed'}; commit {env['commit'] or 'unknown'}; "
             f"{env['date']}", f"- Command: `{env['command']}`", "",
             "| case | Nq | Nk | d | backend | peak MiB |", "|---|---|---|---|---|---|"]
    for row in doc["rows"]:
        case = doc["cases"][row["case"]]
        lines.append(f"| {row['case']} | {case['nq']} | {case['nk']} | {case['head_dim']} | {row['label']} | "
                     f"{row['peak_bytes'] / MIB:.1f} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peak_memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", required=True, choices=sorted(CASES), metavar="CASE",
                        help="case names of benchmarks/shapes.py, e.g. sd15-512px-64x64")
    parser.add_argument("--backends", nargs="+", required=True)
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", default="float16")
    parser.add_argument("--out", type=Path, default=environment.DEFAULT_RESULTS_ROOT)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = DTYPES[args.dtype.lower()]
    cases = [CASES[name] for name in args.cases]
    rows = [row for case in cases for row in measure_case(case, args.backends, device, dtype)]
    env = environment.environment(device, sys.argv[1:] if argv is None else list(argv),
                                  program="benchmarks.peak_memory")
    method = ("torch.cuda.max_memory_allocated growth, after a warm-up call" if device.type == "cuda"
              else "PyTorch's CPU allocator peak over one call (profiler)")
    doc = {"environment": env, "dtype": str(dtype), "method": method,
           "cases": {case.name: case.describe() for case in cases}, "rows": rows}
    environment.write_results(args.out, doc, "peak-memory", markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
