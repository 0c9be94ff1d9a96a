"""Shared input builders and tolerances for the kernel tests."""
from __future__ import annotations

import contextlib
import math
import os

import torch

import lc4_kernels
from lc4_kernels import query_chunks

# (rtol, atol) of a compiled backend against the reference, per dtype of the inputs.
TOLERANCES = {
    torch.float64: (1e-9, 1e-10),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}

SPECIAL_COORDINATES = (math.nan, math.inf, -math.inf, 1e30, -1e30)


def devices() -> list[str]:
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def selected_for_testing(name: str) -> bool:
    """``LC4_TEST_BACKENDS=name[,name...]`` limits the backend cases to those backends: the
    second test process, under ``TRITON_INTERPRET=1``, tests only ``triton`` (and leaves out the
    cases of other backends, the reference's included, which the first process runs:
    conftest.py)."""
    selected = os.environ.get("LC4_TEST_BACKENDS", "").strip()
    return not selected or name in {s.strip() for s in selected.split(",")}


def compiled_backend_cases(dtype: torch.dtype = torch.float32, head_dim: int | None = None):
    """(backend, device) pairs for every non-reference backend that can run this dtype here,
    including test-only backends that ``auto`` never picks."""
    cases = []
    for name in lc4_kernels.available_backends():
        if name == "reference" or not selected_for_testing(name):
            continue
        backend = lc4_kernels.get_backend(name)
        for device in devices():
            if backend.unsupported_reason(torch.device(device), dtype, head_dim) is None:
                cases.append((name, device))
    return cases


def random_points(batch, count, groups, T, H, W, *, dtype=torch.float32, device="cpu", generator=None,
                  edge_fraction=0.3, special_fraction=0.05):
    """Points spread over [-1.5, n + 0.5) on each axis (inside, on the border, just outside, far
    outside), with a share snapped to integers (borders included) and a few non-finite or huge."""
    sizes = torch.tensor([W, H, T], dtype=torch.float64)
    u = torch.rand(batch, count, groups, 3, generator=generator, dtype=torch.float64)
    pts = u * (sizes + 2.0) - 1.5
    snap = torch.rand(batch, count, groups, 1, generator=generator) < edge_fraction
    pts = torch.where(snap, pts.round(), pts)
    special = torch.rand(batch, count, groups, 3, generator=generator) < special_fraction
    choice = torch.randint(len(SPECIAL_COORDINATES), (batch, count, groups, 3), generator=generator)
    values = torch.tensor(SPECIAL_COORDINATES, dtype=torch.float64)[choice]
    pts = torch.where(special, values, pts)
    return pts.to(dtype=dtype, device=device)


def attention_inputs(B=1, Nq=37, Nk=45, heads=4, d=8, G=2, T=3, H=5, W=6, *, dtype=torch.float32, device="cpu",
                     seed=0, special_fraction=0.05):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Nq, heads, d, generator=g, dtype=torch.float64)
    k = torch.randn(B, T, H, W, heads, d, generator=g, dtype=torch.float64)
    v = torch.randn(B, T, H, W, heads, d, generator=g, dtype=torch.float64)
    points = random_points(B, Nk, G, T, H, W, dtype=torch.float64, generator=g, special_fraction=special_fraction)
    cast = dict(dtype=dtype, device=device)
    return (q.to(**cast), k.to(**cast), v.to(**cast),
            points.to(dtype=torch.float64 if dtype == torch.float64 else torch.float32, device=device))


def sample_inputs(B=2, P=29, G=2, C=8, T=3, H=4, W=5, *, dtype=torch.float32, device="cpu", seed=0,
                  special_fraction=0.05):
    g = torch.Generator().manual_seed(seed)
    value = torch.randn(B, T, H, W, G, C, generator=g, dtype=torch.float64)
    points = random_points(B, P, G, T, H, W, dtype=torch.float64, generator=g, special_fraction=special_fraction)
    return (value.to(dtype=dtype, device=device),
            points.to(dtype=torch.float64 if dtype == torch.float64 else torch.float32, device=device))


def run_with_grads(fn, inputs, grad_seed=1):
    """Output of fn(*inputs) and the gradients of <output, R> w.r.t. every input, for a fixed
    random R (so that every output element matters)."""
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*leaves)
    g = torch.Generator().manual_seed(grad_seed)
    weight = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype).to(out.device)
    grads = torch.autograd.grad((out * weight).sum(), leaves, allow_unused=True)
    grads = [torch.zeros_like(t) if gr is None else gr for t, gr in zip(leaves, grads)]
    return out.detach(), grads


def assert_close(actual, expected, dtype, what):
    rtol, atol = TOLERANCES[dtype]
    # Gradients sum many terms; scale the absolute tolerance by the expected magnitude.
    scale = max(1.0, expected.detach().abs().float().max().item()) if expected.numel() else 1.0
    torch.testing.assert_close(actual.to(expected.dtype), expected, rtol=rtol, atol=atol * scale,
                               msg=lambda m: f"{what}: {m}")


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool = True):
    """torch.use_deterministic_algorithms(enabled) inside the block, off again after it."""
    torch.use_deterministic_algorithms(enabled)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(False)


def chunks_of_three_queries(monkeypatch, inputs) -> None:
    """Sets the derivatives' query chunks (``lc4_kernels.query_chunks``) so that the queries of the
    attention ``inputs`` (q, k, v, points) come three a chunk, the last chunk ragged."""
    q, _, _, points = inputs
    batch, num_queries, heads, _ = q.shape
    assert num_queries > 3 and num_queries % 3, "the shapes must give several chunks, the last ragged"
    monkeypatch.setenv(query_chunks.CHUNK_ENV, str(3 * batch * heads * points.shape[1]))


def jvp_by_two_vjps(formula, primals, tangents):
    """The tangent of ``formula`` at ``primals`` along ``tangents`` (None: zero) by two reverse
    passes through autograd (the vjp of the vjp, linear in its cotangent): the oracle of the
    closed-form jvps of backward formulas."""
    out, pullback = torch.func.vjp(formula, *primals)
    _, pullback_of_pullback = torch.func.vjp(pullback, torch.utils._pytree.tree_map(torch.zeros_like, out))
    (tangent,) = pullback_of_pullback(tuple(torch.zeros_like(p) if t is None else t for p, t in zip(primals, tangents)))
    return tangent
