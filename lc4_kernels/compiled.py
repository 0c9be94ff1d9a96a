"""Loads the compiled extension (``lc4_kernels._C``), which registers the ``lc4::`` ops through
TORCH_LIBRARY, and gives those ops what torch needs around them: autograd through the
hand-written backward ops, and fake kernels so that ``torch.compile`` traces them.

Without the extension (no compiler, build skipped) only the reference backend is available,
and ``EXTENSION_ERROR`` says why.
"""
from __future__ import annotations

import warnings

import torch

from . import backends

EXTENSION_ERROR = None
try:
    from . import _C  # noqa: F401  (importing registers the ops)
except ImportError as exc:  # pragma: no cover - exercised on installs without a build
    EXTENSION_ERROR = (f"lc4_kernels._C is not built ({exc}); only the 'reference' backend is available. "
                       "Build it with `pip install -e . --no-build-isolation` (needs a C++ compiler and ninja).")
    warnings.warn(EXTENSION_ERROR, stacklevel=2)


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _register_op_support() -> None:
    ops = torch.ops.lc4

    @torch.library.register_fake("lc4::trilinear_sample")
    def _(value, points):
        B, _, _, _, G, C = value.shape
        return value.new_empty((B, points.shape[1], G, C))

    @torch.library.register_fake("lc4::trilinear_sample_backward")
    def _(grad_out, value, points):
        return torch.empty_like(value), torch.empty_like(points)

    @torch.library.register_fake("lc4::tda_attention")
    def _(q, k, v, points, scale):
        B, Nq, heads, _ = q.shape
        return torch.empty_like(q), q.new_empty((B, heads, Nq), dtype=_accumulation_dtype(q.dtype))

    @torch.library.register_fake("lc4::tda_attention_backward")
    def _(grad_out, q, k, v, points, out, lse, scale):
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), torch.empty_like(points)

    def sample_setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def sample_backward(ctx, grad_out):
        value, points = ctx.saved_tensors
        grad_value, grad_points = ops.trilinear_sample_backward(grad_out.contiguous(), value, points)
        return grad_value, grad_points

    torch.library.register_autograd("lc4::trilinear_sample", sample_backward, setup_context=sample_setup)

    def attention_setup(ctx, inputs, output):
        q, k, v, points, scale = inputs
        out, lse = output
        ctx.scale = scale
        ctx.save_for_backward(q, k, v, points, out, lse)

    def attention_backward(ctx, grad_out, grad_lse):
        q, k, v, points, out, lse = ctx.saved_tensors
        grads = ops.tda_attention_backward(grad_out.contiguous(), q, k, v, points, out, lse, ctx.scale)
        return (*grads, None)

    torch.library.register_autograd("lc4::tda_attention", attention_backward, setup_context=attention_setup)


def _cpu_trilinear_sample(value, points):
    return torch.ops.lc4.trilinear_sample(value.contiguous(), points.contiguous())


def _cpu_tda_attention(q, k, v, points, scale):
    out, _ = torch.ops.lc4.tda_attention(q.contiguous(), k.contiguous(), v.contiguous(), points.contiguous(), scale)
    return out


if EXTENSION_ERROR is None:
    _register_op_support()
    backends.register_backend(backends.Backend(
        name="cpu",
        priority=10,
        device_types=frozenset({"cpu"}),
        dtypes=frozenset({torch.float32, torch.float64}),
        trilinear_sample=_cpu_trilinear_sample,
        tda_attention=_cpu_tda_attention,
    ))
