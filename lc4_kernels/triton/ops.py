"""The Triton kernels as ``torch.ops.lc4_triton.*`` custom ops, with fake kernels (so that
``torch.compile(fullgraph=True)`` traces them), autograd through the hand-written backward ops
and vmap rules; ``KERNELS`` is what the backend runs (see ``lc4_kernels.autograd``). Kernel
modules are imported on the first call, after ``TRITON_INTERPRET`` has been read."""
from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from .. import autograd, batching


def _kernels():
    from . import attention, sampling
    return attention, sampling


def _device_of(tensor: Tensor):
    """Triton launches on the current CUDA device's stream: make it the tensors' device (as the
    CUDA backend's device guard does), for inputs on another GPU than the current one."""
    if tensor.device.type == "cuda" and tensor.device.index != torch.cuda.current_device():
        return torch.cuda.device(tensor.device)
    return contextlib.nullcontext()


def _sample(value: Tensor, points: Tensor) -> Tensor:
    with _device_of(value):
        return _kernels()[1].sample(value, points)


def _sample_backward(grad_out: Tensor, value: Tensor, points: Tensor) -> tuple[Tensor, Tensor]:
    with _device_of(value):
        (grad_value,), grad_points = _kernels()[1].sample_backward([grad_out], [value], points)
    return grad_value, grad_points


def _attention(q, k, v, points, scale):
    with _device_of(q):
        return _kernels()[0].attention_forward(q, k, v, points, scale)


def _attention_backward(grad_out, q, k, v, points, out, lse, scale):
    with _device_of(q):
        return _kernels()[0].attention_backward(grad_out, q, k, v, points, out, lse, scale)


@torch.library.custom_op("lc4_triton::trilinear_sample", mutates_args=())
def trilinear_sample(value: Tensor, points: Tensor) -> Tensor:
    return _sample(value, points)


@trilinear_sample.register_fake
def _(value, points):
    B, _, _, _, G, C = value.shape
    return value.new_empty((B, points.shape[1], G, C))


@torch.library.custom_op("lc4_triton::trilinear_sample_backward", mutates_args=())
def trilinear_sample_backward(grad_out: Tensor, value: Tensor, points: Tensor) -> tuple[Tensor, Tensor]:
    return _sample_backward(grad_out, value, points)


@trilinear_sample_backward.register_fake
def _(grad_out, value, points):
    return (torch.empty_like(value, memory_format=torch.contiguous_format),
            torch.empty_like(points, memory_format=torch.contiguous_format))


@torch.library.custom_op("lc4_triton::tda_attention", mutates_args=())
def tda_attention(q: Tensor, k: Tensor, v: Tensor, points: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """(out, lse): lse is the float32 per-query log-sum-exp ``(B, heads, Nq)`` the backward needs."""
    return _attention(q, k, v, points, scale)


@tda_attention.register_fake
def _(q, k, v, points, scale):
    B, Nq, heads, _ = q.shape
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty((B, heads, Nq), dtype=torch.float32)


@torch.library.custom_op("lc4_triton::tda_attention_backward", mutates_args=())
def tda_attention_backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, points: Tensor, out: Tensor,
                           lse: Tensor, scale: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _attention_backward(grad_out, q, k, v, points, out, lse, scale)


@tda_attention_backward.register_fake
def _(grad_out, q, k, v, points, out, lse, scale):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v, points))


autograd.register(trilinear_sample, trilinear_sample_backward, tda_attention, tda_attention_backward)
for _op in (trilinear_sample, trilinear_sample_backward, tda_attention, tda_attention_backward):
    batching.register(_op, _op._name, _op)

# The forward reads q of any strides.
KERNELS = autograd.Kernels(autograd.Launchers(_sample, _sample_backward, _attention, _attention_backward),
                           autograd.Launchers(trilinear_sample, trilinear_sample_backward, tda_attention,
                                              tda_attention_backward),
                           strided_q=True)
