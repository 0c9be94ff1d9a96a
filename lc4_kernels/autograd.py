"""Autograd of the two ops, shared by the compiled and the Triton backends: the hand-written
backward ops behind two entry points.

- ``register``: the registered ops' autograd (``torch.library.register_autograd``), which
  ``torch.compile`` and ``torch.export`` trace through their fake kernels.
- ``Kernels.trilinear_sample`` / ``Kernels.tda_attention``: what a backend runs. In eager mode an
  ``autograd.Function`` calls the launchers directly: the custom-op dispatch around a Python op
  (argument binding, dynamo guards, redispatch, once forward and once backward) was a sixth of
  the Triton backend's host time per forward+backward (``python -m benchmarks.host_overhead``),
  and at the 32x32 layer that call is bound by its host time on an H200. Inside
  ``torch.compile`` or ``torch.export``, and for tensor subclasses (fake, functional), the
  registered op runs instead.

A backward under ``create_graph=True`` (double backward: gradient penalties, Hessian-vector
products) differentiates the reference formula instead of running the hand-written kernels, whose
gradients a second backward would see as constants. It is exact, and as the reference it
allocates the Nq x Nk scores.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from . import reference

_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)


def _traced(*tensors: torch.Tensor) -> bool:
    """Whether the call must go through the registered op: a compiler is tracing it, or an
    input is a tensor subclass that dispatches by itself (fake, functional)."""
    return torch.compiler.is_compiling() or any(type(t) not in _PLAIN_TENSORS for t in tensors)


def _save_sample_inputs(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _save_attention_inputs(ctx, inputs, output):
    q, k, v, points, scale = inputs
    out, lse = output
    ctx.scale = scale
    ctx.save_for_backward(q, k, v, points, out, lse)


def _differentiable_grads(formula, inputs, needs_grad, grad_out) -> tuple:
    """The gradients of ``formula`` at ``inputs`` against ``grad_out``, themselves differentiable
    w.r.t. the inputs and ``grad_out``; None where ``needs_grad`` says no."""
    wanted = [t for t, need in zip(inputs, needs_grad) if need]
    with torch.enable_grad():
        out = formula(*inputs)
        grads = iter(torch.autograd.grad(out, wanted, grad_out, create_graph=True, materialize_grads=True))
    return tuple(next(grads) if need else None for need in needs_grad)


def _sample_grads(launcher, ctx, grad_out) -> tuple:
    value, points = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True
        return _differentiable_grads(reference.trilinear_sample, (value, points), ctx.needs_input_grad[:2], grad_out)
    return tuple(launcher(grad_out.contiguous(), value, points))


def _attention_grads(launcher, ctx, grad_out) -> tuple:
    q, k, v, points, out, lse = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True
        formula = lambda *t: reference.tda_attention(*t, ctx.scale)  # noqa: E731
        grads = _differentiable_grads(formula, (q, k, v, points), ctx.needs_input_grad[:4], grad_out)
    else:
        grads = launcher(grad_out.contiguous(), q, k, v, points, out, lse, ctx.scale)
    return (*grads, None)


def register(sample_op, sample_backward_op, attention_op, attention_backward_op) -> None:
    """Autograd of the registered ops ``sample_op`` and ``attention_op`` through their backward ops."""
    def sample_backward(ctx, grad_out):
        return _sample_grads(sample_backward_op, ctx, grad_out)

    def attention_backward(ctx, grad_out, grad_lse):
        return _attention_grads(attention_backward_op, ctx, grad_out)

    torch.library.register_autograd(sample_op, sample_backward, setup_context=_save_sample_inputs)
    torch.library.register_autograd(attention_op, attention_backward, setup_context=_save_attention_inputs)


@dataclass(frozen=True)
class Launchers:
    """A backend's kernels as plain callables on contiguous tensors (no autograd)."""
    sample: Callable  # (value6, points4) -> out
    sample_backward: Callable  # (grad_out, value6, points4) -> (grad_value, grad_points)
    attention: Callable  # (q, k, v, points, scale) -> (out, lse)
    attention_backward: Callable  # (grad_out, q, k, v, points, out, lse, scale) -> (dq, dk, dv, dpoints)


class Kernels:
    """The callables a ``Backend`` runs: eager autograd over ``launchers``, the registered ops
    ``sample_op`` / ``attention_op`` when traced. Inputs are made contiguous, q too unless
    ``strided_q`` (the op reads q of any strides, e.g. a view of a fused qkv projection)."""

    def __init__(self, launchers: Launchers, sample_op, attention_op, strided_q: bool = False):
        self.sample_op, self.attention_op, self.strided_q = sample_op, attention_op, strided_q

        # forward(ctx, ...) rather than a setup_context: Function.apply binds the signature of
        # a setup_context style Function on every call (30 us on a 2-core x86 VM). functorch
        # transforms would need that style; the registered ops' autograd does not support them
        # either.
        class Sample(torch.autograd.Function):
            @staticmethod
            def forward(ctx, value, points):
                ctx.save_for_backward(value, points)
                return launchers.sample(value, points)

            @staticmethod
            def backward(ctx, grad_out):
                return _sample_grads(launchers.sample_backward, ctx, grad_out)

        class Attention(torch.autograd.Function):
            @staticmethod
            def forward(ctx, q, k, v, points, scale):
                out, lse = launchers.attention(q, k, v, points, scale)
                ctx.scale = scale
                ctx.save_for_backward(q, k, v, points, out, lse)
                return out

            @staticmethod
            def backward(ctx, grad_out):
                return _attention_grads(launchers.attention_backward, ctx, grad_out)

        self._sample, self._attention = Sample, Attention

    def trilinear_sample(self, value: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        value, points = value.contiguous(), points.contiguous()
        if _traced(value, points):
            return self.sample_op(value, points)
        return self._sample.apply(value, points)

    def tda_attention(self, q, k, v, points, scale: float) -> torch.Tensor:
        if not self.strided_q:
            q = q.contiguous()
        k, v, points = k.contiguous(), v.contiguous(), points.contiguous()
        if _traced(q, k, v, points):
            return self.attention_op(q, k, v, points, scale)[0]
        return self._attention.apply(q, k, v, points, scale)
