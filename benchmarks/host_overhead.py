"""Host time of a tda_attention call: what each backend costs on the CPU side of its kernels
(argument checks, dispatch, autograd, allocations, launches)::

    python -m benchmarks.host_overhead [--device cpu|cuda] [--dtype float16] [--out DIR]

A tiny case (``CASE``) makes the kernels' own time negligible, so a call's time is its host
time. Per backend: microseconds per forward (no grad) and per forward+backward through the
public op (the eager path), forward+backward through the backend's registered op, the path
``torch.compile`` traces, for comparison, and the same two through ``torch.func``: the forward
under ``vmap`` (one mapped query set) and forward+backward as ``torch.func.grad``. SDPA on pre-sampled k~/v~ is the yardstick: one fused
PyTorch op and its backward.

The Triton kernels cannot run on a CPU outside the interpreter, so on a CPU their launches are
replaced by no-ops (``launches stubbed``): the figure is everything of the triton backend but
Triton's own launch cost. On a GPU they run. Writes
``<out>/<device-slug>/host-overhead.{md,json}``.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import sys
from pathlib import Path

import torch

import lc4_kernels as K

from . import environment, inputs, measure, workloads
from .report import DTYPES
from .shapes import Case

CASE = Case("host-tiny", height=4, width=4, head_dim=16, frames=2, heads=2, spatial_stride=2, temporal_stride=1)
POLICY = measure.TimingPolicy(min_repeats=5, min_total_s=0.5, block_s=0.05, warmup_calls=20)


class _NoLaunch:
    """Stands for a Triton kernel: ``kernel[grid](...)`` evaluates the grid and launches nothing."""

    def __init__(self, kernel):
        self.meta = dict(kernel.configs[0].kwargs) if hasattr(kernel, "configs") else {}

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            if callable(grid):
                grid({**kwargs, **self.meta})
        return launch


@contextlib.contextmanager
def stubbed_triton_launches():
    """The triton backend on CPU tensors, every kernel launch a no-op."""
    from lc4_kernels.triton import attention_kernels, trilinear_kernels
    backend = K.get_backend("triton")
    saved = [(module, name, kernel) for module in (attention_kernels, trilinear_kernels)
             for name, kernel in vars(module).items() if name.endswith("_kernel")]
    saved_backend = (backend.device_types, backend.is_available)
    try:
        for module, name, kernel in saved:
            setattr(module, name, _NoLaunch(kernel))
        backend.device_types, backend.is_available = frozenset({"cpu", "cuda"}), lambda: None
        yield
    finally:
        for module, name, kernel in saved:
            setattr(module, name, kernel)
        backend.device_types, backend.is_available = saved_backend


def _registered_op_workload(attention_inputs, backend: str) -> workloads.Workload:
    kernels = K.get_backend(backend).tda_attention.__self__
    q, k, v, points = leaves = [t.detach().requires_grad_() for t in (attention_inputs.q, attention_inputs.k,
                                                                     attention_inputs.v, attention_inputs.points)]
    scale = attention_inputs.scale
    return workloads.Workload(backend, False, leaves, lambda: kernels.ops.attention(q, k, v, points, scale)[0],
                              attention_inputs.grad_out)


def _transform_calls(attention_inputs, backend: str):
    """The forward under torch.func.vmap and forward+backward as torch.func.grad (every input)."""
    a = attention_inputs
    q, k, v, points = (t.detach() for t in (a.q, a.k, a.v, a.points))

    def loss(*t):
        return (K.tda_attention(*t, a.scale, backend=backend) * a.grad_out).sum()

    grad = torch.func.grad(loss, argnums=(0, 1, 2, 3))
    vmapped = torch.func.vmap(lambda q: K.tda_attention(q, k, v, points, a.scale, backend=backend))
    queries = q.unsqueeze(0)
    return (lambda: vmapped(queries)), (lambda: grad(q, k, v, points))


def _microseconds(fn) -> float:
    return measure.time_callable(fn, POLICY).median_s * 1e6


def measure_backend(attention_inputs, backend: str | None, device: torch.device) -> dict:
    """One row: SDPA when ``backend`` is None."""
    if backend is None:
        workload, registered, transformed = workloads.sdpa_workload(attention_inputs), None, (None, None)
    else:
        workload = workloads.attention_workload(attention_inputs, backend)
        registered = _registered_op_workload(attention_inputs, backend) if backend != "reference" else None
        transformed = _transform_calls(attention_inputs, backend)
    row = {"label": workload.label}
    for key, fn in (("forward_us", workload.forward), ("forward_backward_us", workload.forward_backward),
                    ("registered_op_forward_backward_us", registered and registered.forward_backward),
                    ("vmap_forward_us", transformed[0]), ("func_grad_us", transformed[1])):
        if fn is None:
            row[key] = None
            continue
        measure.warm_up(fn, device, POLICY)
        row[key] = _microseconds(fn)
    return row


def _backends(device: torch.device, dtype: torch.dtype) -> list[tuple[str, bool]]:
    """(name, launches stubbed) of every backend ``auto`` may pick here; on a CPU also triton,
    its launches stubbed, when Triton is installed."""
    rows = [(n, False) for n in K.available_backends()
            if K.get_backend(n).auto_selectable and K.get_backend(n).unsupported_reason(device, dtype, CASE.head_dim) is None]
    if device.type == "cpu" and importlib.util.find_spec("triton") is not None:
        rows.append(("triton", True))
    return rows


def markdown(doc: dict) -> str:
    lines = environment.markdown_header("Host time of tda_attention", doc,
                                        "kernels too small to matter, a call's time is its host time")
    lines += ["| backend | forward us | forward+backward us | forward+backward through the registered op us "
              "| forward under torch.func.vmap us | forward+backward as torch.func.grad us |",
              "|---|---|---|---|---|---|"]

    def cell(value):
        return "" if value is None else f"{value:.0f}"

    for r in doc["rows"]:
        label = r["label"] + (" (launches stubbed)" if r.get("launches_stubbed") else "")
        lines.append(f"| {label} | {cell(r['forward_us'])} | {cell(r['forward_backward_us'])} | "
                     f"{cell(r['registered_op_forward_backward_us'])} | {cell(r.get('vmap_forward_us'))} | "
                     f"{cell(r.get('func_grad_us'))} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.host_overhead", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", default=None, help="float16 on CUDA, float32 on the CPU by default")
    parser.add_argument("--out", type=Path, default=environment.DEFAULT_RESULTS_ROOT)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = DTYPES[(args.dtype or ("float16" if device.type == "cuda" else "float32")).lower()]
    attention_inputs = inputs.attention_inputs(CASE, device, dtype)
    rows = [{**measure_backend(attention_inputs, None, device), "launches_stubbed": False}]
    for name, stubbed in _backends(device, dtype):
        with stubbed_triton_launches() if stubbed else contextlib.nullcontext():
            rows.append({**measure_backend(attention_inputs, name, device), "launches_stubbed": stubbed})
    env = environment.environment(device, sys.argv[1:] if argv is None else list(argv),
                                  program="benchmarks.host_overhead")
    doc = {"environment": env, "case": CASE.describe(), "dtype": str(dtype), "rows": rows}
    environment.write_results(args.out, doc, "host-overhead", markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
