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
  registered op runs instead. Inside differentiating ``torch.func`` transforms (grad, jvp,
  jacrev, jacfwd, hessian) a ``setup_context`` style Function runs the registered ops; under
  vmap alone the registered ops run, their vmap rules (``batching``) folding a mapped dimension
  into the batch.

The first derivative is always the hand-written backward. Where something differentiates it
again (``create_graph=True``: gradient penalties, Hessian-vector products; grad of grad; plain
autograd around a torch.func gradient) that backward is itself a differentiable Function whose
derivatives come from the reference formula: exact, and for tda_attention taken over chunks of
queries (``second_order``), so they never hold the whole Nq x Nk scores. Forward-mode AD
(``jvp``) of the ops comes from ``forward_mode``: closed forms of Eq. 2's and Eq. 3's tangents,
tda_attention's over chunks of queries.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch._C._functorch import TransformType, _unwrap_for_grad, _wrap_for_grad
from torch.autograd import forward_ad
from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

from . import sample_derivatives
from .forward_mode import attention_jvp
from .sample_derivatives import sample_jvp
from .second_order import attention_backward_jvp, attention_backward_vjp

_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)


def _subclassed(*tensors: torch.Tensor) -> bool:
    """Whether an input is a tensor subclass that dispatches by itself (fake, functional), which
    the registered op serves."""
    return any(type(t) not in _PLAIN_TENSORS for t in tensors)


def _differentiating_transform() -> bool:
    """Whether one of the running torch.func transforms differentiates (grad, jvp, ...). Under
    vmap alone the registered op serves (its vmap rule, and its own autograd for plain autograd
    outside the vmap): a Function inside vmap costs about 0.5 ms more host time."""
    return any(interpreter.key() != TransformType.Vmap for interpreter in retrieve_all_functorch_interpreters())


# A torch.func transform (grad, vmap, jvp, ...) is running: its tensors look plain.
_transforms_active = torch._C._are_functorch_transforms_active


def _forward_ad_active() -> bool:
    """A torch.autograd.forward_ad level is open: inputs may be dual tensors, which need a jvp."""
    return forward_ad._current_level >= 0


def _eager_under_compile() -> None:
    """A graph break where torch.compile traces a torch.func transform over the ops, so that the
    transform runs eagerly: Dynamo ignores an autograd.Function's custom ``jvp`` (forward-mode
    results come out silently wrong) and cannot vmap a traced Function's backward."""
    if torch.compiler.is_compiling():
        torch._dynamo.graph_break()


def _save_sample_inputs(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _save_attention_inputs(ctx, inputs, output):
    q, k, v, points, scale = inputs
    out, lse = output
    ctx.scale = scale
    ctx.save_for_backward(q, k, v, points, out, lse)


def _tracked_by_outer_levels(rule, saved: tuple, tangents: tuple):
    """``rule(saved, tangents)``, a Function's jvp, so that an outer forward-mode level
    differentiates it (forward over forward: jvp of jvp, jacfwd of jacfwd). torch.func runs a jvp
    rule with forward AD off at every level, so under an outer jvp the tangent would be a constant
    there and the second-order term silently lost. Under nested jvp levels the rule runs one level
    down, on the tensors unwrapped from this one, with forward AD on; its result is wrapped back."""
    interpreters = retrieve_all_functorch_interpreters()
    current = interpreters[-1] if interpreters else None
    if current is None or current.key() != TransformType.Jvp or not any(
            i.key() == TransformType.Jvp for i in interpreters[:-1]):
        return rule(saved, tangents)
    level = current.level()

    def unwrap(t):
        return _unwrap_for_grad(t, level) if isinstance(t, torch.Tensor) else t

    with forward_ad._set_fwd_grad_enabled(True), current.lower():
        result = rule(tuple(map(unwrap, saved)), tuple(map(unwrap, tangents)))
    return torch.utils._pytree.tree_map_only(torch.Tensor, lambda t: _wrap_for_grad(t, level), result)


class _SampleBackward(torch.autograd.Function):
    """The hand-written backward of trilinear_sample, itself differentiable: its own derivatives
    (double backward, forward-over-reverse) are the closed forms of ``sample_derivatives``."""
    generate_vmap_rule = True

    @staticmethod
    def forward(backward_op, grad_out, value, points):
        return tuple(backward_op(grad_out.contiguous(), value, points))

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[1:])
        ctx.save_for_forward(*inputs[1:])

    @staticmethod
    def backward(ctx, value_cotangent, points_cotangent):
        grad_out, value, points = ctx.saved_tensors
        grads = sample_derivatives.pullback_vjp(sample_derivatives.Corners.of(value, points), grad_out, value,
                                                value_cotangent, points_cotangent)
        return (None, *(torch.zeros_like(x) if g is None else g.to(x.dtype)
                        for g, x in zip(grads, (grad_out, value, points))))

    @staticmethod
    def jvp(ctx, _, *tangents):
        def rule(saved, tangents):
            grad_out, value, points = saved
            dvalue, dpoints = sample_derivatives.pullback_jvp(sample_derivatives.Corners.of(value, points), grad_out,
                                                              value, tangents)
            return dvalue.to(value.dtype), dpoints.to(points.dtype)
        return _tracked_by_outer_levels(rule, ctx.saved_tensors, tangents)


class _AttentionBackward(torch.autograd.Function):
    """The hand-written backward of tda_attention, differentiable as ``_SampleBackward``. Its
    derivatives are those of the gradients as functions of (grad_out, q, k, v, points); out and
    lse, functions of the same, get none of their own."""
    generate_vmap_rule = True

    @staticmethod
    def forward(backward_op, grad_out, q, k, v, points, out, lse, scale):
        return tuple(backward_op(grad_out.contiguous(), q, k, v, points, out, lse, scale))

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.scale = inputs[-1]
        ctx.save_for_backward(*inputs[1:6])
        ctx.save_for_forward(*inputs[1:6])

    @staticmethod
    def backward(ctx, *cotangents):
        grads = attention_backward_vjp(*ctx.saved_tensors, ctx.scale, cotangents)
        return (None, *grads, None, None, None)

    @staticmethod
    def jvp(ctx, _, *tangents):
        return _tracked_by_outer_levels(lambda saved, tangents: attention_backward_jvp(
            *saved, ctx.scale, tangents), ctx.saved_tensors, tangents[:5])


def _level_zero(t: torch.Tensor) -> torch.Tensor:
    while torch._C._functorch.is_functorch_wrapped_tensor(t) or torch._C._functorch.is_batchedtensor(t):
        t = torch._C._functorch.get_unwrapped(t)
    return t


def _backward_is_differentiated(*tensors) -> bool:
    """Whether a backward must itself be differentiable: under create_graph=True or an open
    forward-mode level (forward-over-reverse), or when a differentiating torch.func transform
    outside the one running this backward (grad of grad, hessian) or plain autograd (tracking
    the inputs from outside) will differentiate its result. Inside a single torch.func.grad (or
    a vmap of it) nothing does, and the plain kernel call saves host time."""
    if _forward_ad_active():  # forward mode differentiates whatever the grad mode
        return True
    if not torch.is_grad_enabled():
        return False
    if not _transforms_active():
        return True
    # The transform running this backward is the innermost level its tensors are wrapped at.
    level = max(torch._C._functorch.maybe_get_level(t) for t in tensors)
    return any(interpreter.key() != TransformType.Vmap and interpreter.level() < level
               for interpreter in retrieve_all_functorch_interpreters()) or any(
        _level_zero(t).requires_grad for t in tensors)


def _without_graph(backward_op, *args):
    """The backward kernels, recorded by no autograd: a plain backward runs without grad mode
    already; inside a torch.func.grad the Triton custom op would otherwise apply its own
    (functorch-incompatible) autograd wrapper."""
    if not torch.is_grad_enabled():
        return backward_op(*args)
    with torch.no_grad():
        return backward_op(*args)


def _sample_grads(backward_op, ctx, grad_out) -> tuple:
    value, points = ctx.saved_tensors
    if _backward_is_differentiated(grad_out, value, points):
        return _SampleBackward.apply(backward_op, grad_out, value, points)
    return tuple(_without_graph(backward_op, grad_out.contiguous(), value, points))


def _attention_grads(backward_op, ctx, grad_out) -> tuple:
    q, k, v, points, out, lse = ctx.saved_tensors
    if _backward_is_differentiated(grad_out, q, k, v, points):
        grads = _AttentionBackward.apply(backward_op, grad_out, q, k, v, points, out, lse, ctx.scale)
    else:
        grads = _without_graph(backward_op, grad_out.contiguous(), q, k, v, points, out, lse, ctx.scale)
    return (*grads, None)


class _TransformableSample(torch.autograd.Function):
    """trilinear_sample through the registered ops in the style torch.func transforms need
    (``setup_context``; vmap through the ops' batching rules; forward-mode from the reference)."""
    generate_vmap_rule = True

    @staticmethod
    def forward(ops, value, points):
        with torch.no_grad():  # this Function is the autograd (a registered op would wrap its own)
            return ops.sample(value, points)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.backward_op = inputs[0].sample_backward
        ctx.save_for_backward(*inputs[1:])
        ctx.save_for_forward(*inputs[1:])

    @staticmethod
    def backward(ctx, grad_out):
        return (None, *_sample_grads(ctx.backward_op, ctx, grad_out))

    @staticmethod
    def jvp(ctx, _, *tangents):
        return _tracked_by_outer_levels(lambda saved, tangents: sample_jvp(*saved, *tangents),
                                        ctx.saved_tensors, tangents)


class _TransformableAttention(torch.autograd.Function):
    """tda_attention as ``_TransformableSample``; returns (out, lse), lse not differentiable."""
    generate_vmap_rule = True

    @staticmethod
    def forward(ops, q, k, v, points, scale):
        with torch.no_grad():
            return tuple(ops.attention(q, k, v, points, scale))

    @staticmethod
    def setup_context(ctx, inputs, output):
        ops, q, k, v, points, scale = inputs
        out, lse = output
        ctx.backward_op, ctx.scale = ops.attention_backward, scale
        ctx.mark_non_differentiable(lse)
        ctx.save_for_backward(q, k, v, points, out, lse)
        ctx.save_for_forward(q, k, v, points)

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        return (None, *_attention_grads(ctx.backward_op, ctx, grad_out))

    @staticmethod
    def jvp(ctx, _, *tangents):
        return _tracked_by_outer_levels(lambda saved, tangents: attention_jvp(*saved, ctx.scale, tangents),
                                        ctx.saved_tensors, tangents[:4]), None


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
    """A backend's kernels as plain callables on contiguous tensors: its raw launchers (no
    autograd), or its registered ops (autograd, fake kernels, vmap rules)."""
    sample: Callable  # (value6, points4) -> out
    sample_backward: Callable  # (grad_out, value6, points4) -> (grad_value, grad_points)
    attention: Callable  # (q, k, v, points, scale) -> (out, lse)
    attention_backward: Callable  # (grad_out, q, k, v, points, out, lse, scale) -> (dq, dk, dv, dpoints)


class Kernels:
    """The callables a ``Backend`` runs: eager autograd over ``launchers``; the registered ``ops``
    when traced (torch.compile, torch.export, tensor subclasses); transformable autograd over the
    ops inside torch.func transforms. Inputs are made contiguous, q too unless ``strided_q`` (the
    op reads q of any strides, e.g. a view of a fused qkv projection)."""

    def __init__(self, launchers: Launchers, ops: Launchers, strided_q: bool = False):
        self.ops, self.strided_q = ops, strided_q

        # forward(ctx, ...) rather than a setup_context: Function.apply binds the signature of
        # a setup_context style Function on every call (30 us on a 2-core x86 VM), so only
        # torch.func transforms, which need that style, pay for it (_Transformable*).
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
        if _transforms_active():
            _eager_under_compile()
            if _differentiating_transform():
                return _TransformableSample.apply(self.ops, value, points)
            return self.ops.sample(value, points)
        if _forward_ad_active():
            return _TransformableSample.apply(self.ops, value, points)
        if torch.compiler.is_compiling() or _subclassed(value, points):
            return self.ops.sample(value, points)
        return self._sample.apply(value, points)

    def tda_attention(self, q, k, v, points, scale: float) -> torch.Tensor:
        if not self.strided_q:
            q = q.contiguous()
        k, v, points = k.contiguous(), v.contiguous(), points.contiguous()
        if _transforms_active():
            _eager_under_compile()
            if _differentiating_transform():
                return _TransformableAttention.apply(self.ops, q, k, v, points, scale)[0]
            return self.ops.attention(q, k, v, points, scale)[0]
        if _forward_ad_active():
            return _TransformableAttention.apply(self.ops, q, k, v, points, scale)[0]
        if torch.compiler.is_compiling() or _subclassed(q, k, v, points):
            return self.ops.attention(q, k, v, points, scale)[0]
        return self._attention.apply(q, k, v, points, scale)
