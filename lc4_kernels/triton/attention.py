"""Launchers of TDA attention: sample k~ and v~ at the points (small: Nk rows), then the
FlashAttention-2 style kernels; the backward scatters dk~ and dv~ back through the trilinear
weights (sorted, see sampling.scatter_mode) and takes dpoints from both."""
from __future__ import annotations

import torch

from . import attention_kernels as kernels
from .sampling import sample_backward, sample_values
from .tuning import (cdiv, forced_query_splits, head_split, launch_capability, launch_class, padded_head_dim,
                     split_queries)


def _grouped(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, T, H, W, heads, d) as (B, T, H, W, G, heads/G * d): the heads of a group share its
    points and are adjacent, so one sample of the grouped view samples all of them."""
    B, T, H, W, heads, d = x.shape
    return x.contiguous().view(B, T, H, W, groups, heads // groups * d)


def _sampled_keys_values(k, v, points):
    """k~, v~ as contiguous (B, Nk, heads, d) in the inputs' dtype."""
    B, _, _, _, heads, d = k.shape
    G = points.shape[2]
    shape = (B, points.shape[1], heads, d)
    k_sampled, v_sampled = sample_values([_grouped(k, G), _grouped(v, G)], points)
    return k_sampled.view(shape), v_sampled.view(shape)


def _processors(device: torch.device) -> int:
    """Streaming multiprocessors of a GPU (1 for the interpreter on the CPU)."""
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def _precision(dtype: torch.dtype) -> str:
    # float32 inputs must not be rounded to tf32 by tl.dot: the float32 contract is ~1e-5.
    return "ieee" if dtype == torch.float32 else "tf32"


def alignment(*strides: int) -> int:
    """The largest power of two up to 16 that divides every stride (in elements)."""
    align = 16
    while any(stride % align for stride in strides):
        align //= 2
    return align


def _launch_arguments(q, Nk, scale, kernel: str):
    B, Nq, heads, d = q.shape
    launch = launch_class(q.element_size(), launch_capability(q.device))
    d_head, d_tail = head_split(d, kernel, launch)
    return dict(Nq=Nq, Nk=Nk, heads=heads, HEAD_DIM=d, scale=scale, D_PAD=padded_head_dim(d), D_HEAD=d_head,
                D_TAIL=d_tail, PRECISION=_precision(q.dtype))


def attention_forward(q, k, v, points, scale: float):
    """(out, lse): out ``(B, Nq, heads, d)`` in q's dtype, lse ``(B, heads, Nq)`` float32."""
    B, Nq, heads, d = q.shape
    out = torch.empty((B, Nq, heads, d), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, heads, Nq), dtype=torch.float32, device=q.device)
    if Nq == 0 or d == 0:
        return out.zero_(), lse.zero_()
    if q.stride(-1) != 1:
        q = q.contiguous()
    k_sampled, v_sampled = _sampled_keys_values(k, v, points)
    grid = lambda meta: (cdiv(Nq, meta["BLOCK_M"]), B * heads)  # noqa: E731
    kernels.attention_forward_kernel[grid](q, k_sampled, v_sampled, out, lse, q.stride(0), q.stride(1), q.stride(2),
                                           Q_ALIGN=alignment(q.stride(0), q.stride(1), q.stride(2)),
                                           **_launch_arguments(q, points.shape[1], scale, "forward"))
    return out, lse


def attention_backward(grad_out, q, k, v, points, out, lse, scale: float, query_splits: int | None = None):
    """(dq, dk, dv, dpoints) of ``<grad_out, attention(q, k, v, points)>``. ``query_splits`` fixes
    how many programs share the queries of a key block in the dk~/dv~ kernel (default:
    ``LC4_TRITON_QUERY_SPLITS`` if set, else enough programs to fill the GPU, one under
    deterministic algorithms)."""
    B, Nq, heads, d = q.shape
    Nk, G = points.shape[1], points.shape[2]
    if Nq == 0 or d == 0:
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v), torch.zeros_like(points)
    q, grad_out, out = q.contiguous(), grad_out.contiguous(), out.contiguous()
    k_sampled, v_sampled = _sampled_keys_values(k, v, points)
    delta = torch.empty((B, heads, Nq), dtype=torch.float32, device=q.device)  # written by the dq kernel
    sampled_grads = torch.zeros((2, B, Nk, heads, d), dtype=torch.float32, device=q.device)  # dk~, dv~
    dk_sampled, dv_sampled = sampled_grads
    dq = torch.empty_like(q)
    q_grid = lambda meta: (cdiv(Nq, meta["BLOCK_M"]), B * heads)  # noqa: E731
    kernels.attention_backward_q_kernel[q_grid](q, k_sampled, v_sampled, out, grad_out, lse, delta, dq,
                                                **_launch_arguments(q, Nk, scale, "dq"))
    processors = _processors(q.device)
    query_splits = query_splits or forced_query_splits()

    def kv_grid(meta):
        key_programs = cdiv(Nk, meta["BLOCK_N"]) * B * heads
        splits = query_splits or split_queries(key_programs, cdiv(Nq, meta["BLOCK_M"]), processors)
        return (cdiv(Nk, meta["BLOCK_N"]), B * heads, splits)

    kernels.attention_backward_kv_kernel[kv_grid](q, k_sampled, v_sampled, grad_out, lse, delta,
                                                  dk_sampled, dv_sampled, **_launch_arguments(q, Nk, scale, "dkv"))
    # Freed before the scatter allocates dk and dv, the backward's peak (Nk rows each: 2.6 MB at
    # the 32x32 layer, where the whole forward+backward is about 45 MB). dk~ and dv~ go on in
    # the inputs' dtype, as SDPA returns them: at d = 160 (the 16x16 layer) the float32 pair
    # weighs as much as dk and dv.
    del k_sampled, v_sampled, delta, dk_sampled, dv_sampled
    sampled_grads = sampled_grads.to(q.dtype)
    grouped_grads = [g.view(B, Nk, G, heads // G * d) for g in sampled_grads]
    # Sorted by default: few points on full-resolution maps, whose float32 copies for the atomics
    # (and the conversion after) would cost three times dk and dv in half precision.
    (dk, dv), dpoints = sample_backward(grouped_grads, [_grouped(k, G), _grouped(v, G)], points, scatter="sorted")
    return dq, dk.view(k.shape), dv.view(v.shape), dpoints
