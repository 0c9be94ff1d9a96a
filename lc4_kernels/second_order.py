"""Derivatives of tda_attention's hand-written backward (double backward, forward-over-reverse),
shared by every backend: the reference formula's, exact, without the whole call's ``Nq x Nk``
scores.

The backward maps (grad_out, q, k, v, points) to (dq, dk, dv, dpoints). Written as the reference
computes it, it is two stages: Eq. 3's backward on the sampled keys and values ``K``, ``V`` (one
chunk of queries at a time, :mod:`.query_chunks`: a query's grad_out and q enter its own dq row
and, summed over the queries, ``dK`` and ``dV``), then the pullback of Eq. 2's sampling from
(``dK``, ``dV``) to (dk, dv, dpoints). Their derivatives are taken stage by stage: the attention
stage's chunk by chunk, the sampling stage's once (its tensors are the size of the maps and the
points). What a further derivative records (a third order) keeps every chunk's tensors, as any
autograd would.
"""
from __future__ import annotations

import torch

from . import reference
from .forward_mode import sampled_with_tangent, value_and_jvp, zeros_for_none
from .query_chunks import over_query_chunks, rows_per_chunk


class _Stages:
    """The backward's two stages at one (k, v, points) and ``scale``, in at least float32 as the
    reference computes (results in the inputs' dtypes)."""

    def __init__(self, q, k, v, points, scale: float):
        self.scale = scale
        self.compute = torch.promote_types(q.dtype, torch.float32)
        self.repeat = q.shape[2] // points.shape[2]
        self.rows = rows_per_chunk(q.shape[0], q.shape[2], points.shape[1])

    def sample(self, k, v, points):
        """(K, V): k and v sampled at each head's points, ``(B, Nk, heads, d)``."""
        per_head = points.repeat_interleave(self.repeat, dim=2)
        return (reference.trilinear_sample(k.to(self.compute), per_head),
                reference.trilinear_sample(v.to(self.compute), per_head))

    def sample_pullback(self, k, v, points, dkeys, dvalues):
        """(dk, dv, dpoints) from the sampled keys' and values' gradients."""
        return torch.func.vjp(self.sample, k, v, points)[1]((dkeys, dvalues))

    def attention_backward(self, grad_out, q, keys, values):
        """(dq, dK, dV) of a chunk of queries."""
        attention = lambda *t: reference.attention_on_sampled(*t, self.scale)  # noqa: E731
        return torch.func.vjp(attention, q, keys, values)[1](grad_out)


def attention_backward_vjp(grad_out, q, k, v, points, scale: float, cotangents) -> tuple:
    """The vjp of the backward at (grad_out, q, k, v, points) along ``cotangents`` (of dq, dk, dv,
    dpoints): the gradients of grad_out, q, k, v and points."""
    stages = _Stages(q, k, v, points, scale)
    cot_q, cot_k, cot_v, cot_points = cotangents
    keys, values = stages.sample(k, v, points)  # recorded where a third order differentiates this
    num_queries = q.shape[1]

    def sampled_grads(chunk: slice):
        return stages.attention_backward(grad_out[:, chunk], q[:, chunk], keys, values)[1:]

    dkeys, dvalues = over_query_chunks(sampled_grads, num_queries, stages.rows, per_query=(False, False))
    from_k, from_v, from_points, cot_keys, cot_values = torch.func.vjp(
        stages.sample_pullback, k, v, points, dkeys, dvalues)[1]((cot_k, cot_v, cot_points))

    def chunk_vjp(chunk: slice):
        return torch.func.vjp(stages.attention_backward, grad_out[:, chunk], q[:, chunk], keys, values)[1](
            (cot_q[:, chunk], cot_keys, cot_values))

    grad_grad_out, grad_q, grad_keys, grad_values = over_query_chunks(
        chunk_vjp, num_queries, stages.rows, per_query=(True, True, False, False))
    through_k, through_v, through_points = stages.sample_pullback(k, v, points, grad_keys, grad_values)
    return grad_grad_out, grad_q, from_k + through_k, from_v + through_v, from_points + through_points


def attention_backward_jvp(grad_out, q, k, v, points, scale: float, tangents) -> tuple:
    """The jvp of the backward at (grad_out, q, k, v, points) along ``tangents`` of those five
    (None: no tangent): the tangents of dq, dk, dv and dpoints."""
    stages = _Stages(q, k, v, points, scale)
    tan_out, tan_q, tan_k, tan_v, tan_points = zeros_for_none(tangents, (grad_out, q, k, v, points))
    per_head, per_head_tangent = (p.repeat_interleave(stages.repeat, dim=2) for p in (points, tan_points))
    compute = stages.compute
    keys, tan_keys = sampled_with_tangent(k.to(compute), per_head, tan_k.to(compute), per_head_tangent)
    values, tan_values = sampled_with_tangent(v.to(compute), per_head, tan_v.to(compute), per_head_tangent)

    def chunk_jvp(chunk: slice):
        (_, dkeys, dvalues), (tan_dq, tan_dkeys, tan_dvalues) = value_and_jvp(
            stages.attention_backward, (grad_out[:, chunk], q[:, chunk], keys, values),
            (tan_out[:, chunk], tan_q[:, chunk], tan_keys, tan_values))
        return tan_dq, dkeys, dvalues, tan_dkeys, tan_dvalues

    tan_dq, dkeys, dvalues, tan_dkeys, tan_dvalues = over_query_chunks(
        chunk_jvp, q.shape[1], stages.rows, per_query=(True, False, False, False, False))
    _, (tan_dk, tan_dv, tan_dpoints) = value_and_jvp(stages.sample_pullback, (k, v, points, dkeys, dvalues),
                                                      (tan_k, tan_v, tan_points, tan_dkeys, tan_dvalues))
    return tan_dq, tan_dk, tan_dv, tan_dpoints
