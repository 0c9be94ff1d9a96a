"""Higher-order derivatives of tda_attention, as training takes them through a network::

    python -m benchmarks.higher_order [--device cpu|cuda] [--dtype float32] [--shapes SPEC] [--out DIR]

Three workloads per case and backend, each timed (milliseconds per call) with its peak memory
measured as the kernel report measures memory:

- ``jvp``: ``torch.func.jvp`` along every input (q, k, v, points), the JVP of consistency-model
  and flow-map training. Every backend runs its fused forward kernel for the output and
  ``lc4_kernels.forward_mode``'s closed form, chunk by chunk of queries, for the tangent; the
  reference backend's is autograd's forward mode through the reference formula, which holds the
  whole ``Nq x Nk`` scores and their tangents.
- ``gradient penalty``: the forward, the four inputs' gradients with ``create_graph=True``, then
  the gradients of the squared norm of those gradients (double backward, as in WGAN-GP or R1).
- ``hessian-vector product``: ``torch.func.jvp`` of ``torch.func.grad`` along every input
  (forward over reverse, as Newton-type optimisers and curvature probes take it).

In the last two every backend's first gradient comes from its backward kernels and their
derivatives from ``lc4_kernels.second_order`` over chunks of queries; the reference backend's
from autograd through the whole formula.

Defaults: the CPU performance case (``cpu-32x32-nk1024``) on a CPU, the 512 px SD1.5 levels on
CUDA. Writes ``<out>/<device-slug>/higher-order.{md,json}``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import lc4_kernels as K
from lc4_kernels import query_chunks

from . import environment, inputs, measure, shapes
from .report import DTYPES

POLICY = measure.TimingPolicy(min_repeats=3, min_total_s=1.0, block_s=0.05, warmup_calls=1)
DEFAULT_SHAPES = {"cpu": shapes.ISSUE2_CPU_CASE.name, "cuda": "sd15-512"}
WORKLOADS = ("jvp", "gradient penalty", "hessian-vector product")


def _backends(device: torch.device, dtype: torch.dtype, head_dim: int) -> list[str]:
    """Every backend that runs here (reference last: the yardstick)."""
    names = [n for n in K.available_backends() if n != "reference" and K.get_backend(n).auto_selectable
             and K.get_backend(n).unsupported_reason(device, dtype, head_dim) is None]
    return names + ["reference"]


def measure_case(case: shapes.Case, device: torch.device, dtype: torch.dtype) -> list[dict]:
    a = inputs.attention_inputs(case, device, dtype)
    primals = (a.q, a.k, a.v, a.points)
    gen = torch.Generator().manual_seed(1)
    tangents = tuple(torch.randn(t.shape, generator=gen).to(t) for t in primals)
    weight = torch.randn(a.q.shape, generator=gen).to(a.q)
    rows = []
    for workload in WORKLOADS:
        for backend in _backends(device, dtype, case.head_dim):
            def op(*t, backend=backend):
                return K.tda_attention(*t, a.scale, backend=backend)

            if workload == "jvp":
                call = lambda op=op: torch.func.jvp(op, primals, tangents)  # noqa: E731
            elif workload == "gradient penalty":
                call = lambda op=op: gradient_penalty(op, primals, weight)  # noqa: E731
            else:
                call = lambda op=op: hessian_vector_product(op, primals, weight, tangents)  # noqa: E731
            row = {"case": case.name, "workload": workload, "backend": backend, "nq": case.nq, "nk": case.nk}
            try:
                measure.warm_up(call, device, POLICY)
                row["ms"] = measure.time_callable(call, POLICY).median_s * 1e3
                row["peak_mib"] = measure.peak_memory(call, device).bytes / 2**20
            except torch.OutOfMemoryError:
                row["ms"] = row["peak_mib"] = None
                row["error"] = "out of memory"
            rows.append(row)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def hessian_vector_product(op, primals, weight, tangents) -> tuple[torch.Tensor, ...]:
    """The Hessian of <op(...), weight> w.r.t. all inputs times ``tangents``, forward over
    reverse (``torch.func.jvp`` of ``torch.func.grad``), with the gradient."""
    def loss(*inputs):
        return (op(*inputs) * weight).sum()
    return torch.func.jvp(torch.func.grad(loss, argnums=tuple(range(len(primals)))), primals, tangents)


def gradient_penalty(op, primals, weight) -> tuple[torch.Tensor, ...]:
    """The gradients of sum over inputs of |d<op(...), weight>/d input|^2 w.r.t. the inputs."""
    leaves = [t.detach().requires_grad_(True) for t in primals]
    grads = torch.autograd.grad((op(*leaves) * weight).sum(), leaves, create_graph=True)
    penalty = sum(g.square().sum() for g in grads)
    return torch.autograd.grad(penalty, leaves)


def markdown(doc: dict) -> str:
    env = doc["environment"]
    lines = [f"# Higher-order derivatives of tda_attention: {env['device']['name']}",
             "", f"- {doc['dtype'].removeprefix('torch.')}; heads and head dims per case in the JSON; the fused "
             f"backends' derivatives in chunks of at most {doc['chunk_elements']} score elements",
             "- jvp: `torch.func.jvp` along q, k, v and points; gradient penalty: the four inputs' gradients "
             "with `create_graph=True`, then the gradients of their squared norm; hessian-vector product: "
             "`torch.func.jvp` of `torch.func.grad` along all four",
             f"- torch {env['torch']}, Triton {env['triton'] or 'not installed'}; commit {env['commit'] or 'unknown'}; "
             f"{env['date']}", f"- Command: `{env['command']}`", ""]
    lines += ["| case | Nq | Nk | workload | backend | ms | peak MiB | vs reference: time | vs reference: memory |",
              "|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple, dict] = {}
    for r in doc["rows"]:
        groups.setdefault((r["case"], r["workload"]), {})[r["backend"]] = r

    def cell(value, digits):
        return "" if value is None else f"{value:.{digits}f}"

    for (case, workload), rows in groups.items():
        ref = rows.get("reference", {})
        for backend, r in rows.items():
            ratio = lambda key: ("" if backend == "reference" or not r.get(key) or not ref.get(key)  # noqa: E731
                                 else f"{ref[key] / r[key]:.1f}x less")
            lines.append(f"| {case} | {r['nq']} | {r['nk']} | {workload} | {backend} | {cell(r['ms'], 1)} | "
                         f"{cell(r['peak_mib'], 1)} | {ratio('ms')} | {ratio('peak_mib')} |"
                         + (f" {r['error']}" if r.get("error") else ""))
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.higher_order", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", default="float32", help="the inputs' dtype (default float32)")
    parser.add_argument("--shapes", help="shape sets or case names, comma-separated (benchmarks/shapes.py)")
    parser.add_argument("--out", type=Path, default=environment.DEFAULT_RESULTS_ROOT)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.dtype.lower() not in DTYPES:
        raise SystemExit(f"--dtype: expected one of {sorted(DTYPES)}, got {args.dtype!r}")
    dtype = DTYPES[args.dtype.lower()]
    cases = shapes.resolve(args.shapes or DEFAULT_SHAPES[device.type])
    rows = [row for case in cases for row in measure_case(case, device, dtype)]
    env = environment.environment(device, sys.argv[1:] if argv is None else list(argv),
                                  program="benchmarks.higher_order")
    doc = {"environment": env, "dtype": str(dtype), "chunk_elements": query_chunks.chunk_elements(device),
           "cases": [case.describe() for case in cases], "rows": rows}
    environment.write_results(args.out, doc, "higher-order", markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
