"""Where the time of one tda_attention forward+backward goes, per backend (``make gpu-check``)::

    python -m benchmarks.profile [--case sd15-512px-64x64] [--dtype float16] [--backends triton,cuda]
                                 [--iterations 5] [--tag NAME] [--out DIR] [--device cpu|cuda]

For the lower bound (SDPA on pre-sampled k~/v~) and each backend: wall time per call measured
without the profiler, then under ``torch.profiler`` the device time of every kernel, how many
kernels a call launches, and the share of the wall time the device was busy (low: the call is
bound by host-side launch cost, not by its kernels). On the CPU, the top operators by own CPU
time instead. Writes ``<out>/<device-slug>/profile-<case>-<dtype>[-<tag>].{md,json}``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

import lc4_kernels as K

from . import environment, inputs, shapes, workloads
from .report import DTYPES

TOP = 8


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _wall_ms(workload: workloads.Workload, device: torch.device, iterations: int) -> float:
    _sync(device)
    start = time.perf_counter()
    for _ in range(iterations):
        workload.forward_backward()
    _sync(device)
    return (time.perf_counter() - start) / iterations * 1e3


def _top(totals: dict[str, tuple[int, float]], iterations: int) -> list[dict]:
    """The TOP entries of {name: (calls, microseconds)} over all iterations, per iteration."""
    rows = [{"name": name, "calls_per_iteration": calls / iterations, "ms_per_iteration": us / iterations / 1e3}
            for name, (calls, us) in totals.items()]
    return sorted(rows, key=lambda r: -r["ms_per_iteration"])[:TOP]


def profile_workload(workload: workloads.Workload, device: torch.device, iterations: int, warmup: int = 3) -> dict:
    for _ in range(warmup):
        workload.forward_backward()
    wall = _wall_ms(workload, device, iterations)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(iterations):
            workload.forward_backward()
        _sync(device)
    totals: dict[str, tuple[int, float]] = {}
    if device.type == "cuda":  # kernels as the device ran them
        for event in prof.events():
            if event.device_type == DeviceType.CUDA:
                calls, us = totals.get(event.name, (0, 0.0))
                totals[event.name] = (calls + 1, us + event.time_range.elapsed_us())
    else:
        totals = {e.key: (e.count, e.self_cpu_time_total) for e in prof.key_averages()}
    row = {"label": workload.label, "lower_bound": workload.is_lower_bound, "wall_ms": wall,
           "top": _top(totals, iterations)}
    if device.type == "cuda":
        busy_ms = sum(us for _, us in totals.values()) / iterations / 1e3
        row.update(device_busy_ms=busy_ms, device_busy_share=busy_ms / wall if wall > 0 else None,
                   kernels_per_iteration=sum(calls for calls, _ in totals.values()) / iterations)
    return row


def markdown(doc: dict) -> str:
    env = doc["environment"]
    lines = environment.markdown_header("Profile of tda_attention forward+backward", doc,
                                        f"{doc['iterations']} calls profiled after 3 warm-up calls")
    cuda = env["device"]["type"] == "cuda"
    if cuda:
        lines += ["| backend | wall ms per call | device busy ms | busy share of wall | kernels per call |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['label']}{' (lower bound)' if r['lower_bound'] else ''} | {r['wall_ms']:.3f} | "
                  f"{r['device_busy_ms']:.3f} | {r['device_busy_share']:.0%} | {r['kernels_per_iteration']:.0f} |"
                  for r in doc["rows"]]
    else:
        lines += ["| backend | wall ms per call |", "|---|---|"]
        lines += [f"| {r['label']}{' (lower bound)' if r['lower_bound'] else ''} | {r['wall_ms']:.3f} |"
                  for r in doc["rows"]]
    title, column = ("kernels by device time", "kernel") if cuda else ("operators by own CPU time", "operator")
    for r in doc["rows"]:
        lines += ["", f"## {r['label']}: top {title}", "", f"| {column} | calls per call | ms per call |", "|---|---|---|"]
        lines += [f"| `{t['name'][:90]}` | {t['calls_per_iteration']:g} | {t['ms_per_iteration']:.4f} |" for t in r["top"]]
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", default="sd15-512px-64x64", help="a case name of benchmarks/shapes.py")
    parser.add_argument("--dtype", default=None, help="float16 on CUDA, float32 on the CPU by default")
    parser.add_argument("--backends", help="comma-separated (default: every backend auto may choose)")
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--tag", default="", help="suffix of the output files, e.g. for an environment variant")
    parser.add_argument("--out", type=Path, default=environment.DEFAULT_RESULTS_ROOT)
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = DTYPES[(args.dtype or ("float16" if device.type == "cuda" else "float32")).lower()]
    try:
        (case,) = shapes.resolve(args.case)
    except ValueError as exc:
        raise SystemExit(str(exc))
    names = ([n.strip() for n in args.backends.split(",") if n.strip()] if args.backends else
             [n for n in K.available_backends() if K.get_backend(n).auto_selectable])
    attention_inputs = inputs.attention_inputs(case, device, dtype)
    runnable = [n for n in names if K.get_backend(n).unsupported_reason(device, dtype, case.head_dim) is None]
    rows = [profile_workload(w, device, args.iterations)
            for w in workloads.workloads_for(workloads.ATTENTION, attention_inputs, runnable)]
    env = environment.environment(device, sys.argv[1:] if argv is None else list(argv), program="benchmarks.profile")
    doc = {"environment": env, "case": case.describe(), "dtype": str(dtype), "iterations": args.iterations,
           "left_out": sorted(set(names) - set(runnable)), "rows": rows}
    stem = f"profile-{case.name}-{str(dtype).removeprefix('torch.')}" + (f"-{args.tag}" if args.tag else "")
    environment.write_results(args.out, doc, stem, markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
