"""Derivatives of tda_attention's hand-written backward (double backward, forward-over-reverse),
shared by every backend: exact, in closed form, without the whole call's ``Nq x Nk`` scores.

The backward maps (grad_out, q, k, v, points) to (dq, dk, dv, dpoints). Written as the reference
computes it, it is two stages: Eq. 3's backward on the sampled keys and values ``K``, ``V`` (one
chunk of queries at a time, :mod:`.query_chunks`: a query's grad_out and q enter its own dq row
and, summed over the queries, ``dK`` and ``dV``), then the pullback of Eq. 2's sampling from
(``dK``, ``dV``) to (dk, dv, dpoints). Their derivatives are taken stage by stage: the attention
stage's chunk by chunk (FlashAttention's backward formulas, their vjp and their jvp, a handful
of score-sized tensors a chunk where autograd through autograd kept dozens), the sampling stage's
once (:mod:`.sample_derivatives`: one scatter per map-sized result). Everything is
differentiable torch, so a further derivative (a third order) is autograd's, keeping every
chunk's tensors as any autograd would.
"""
from __future__ import annotations

import torch

from .query_chunks import over_query_chunks, rows_per_chunk
from .sample_derivatives import (Corners, grouped, per_head, pullback, pullback_jvp, pullback_vjp, sample,
                                 sampled_tangent, sampled_with_tangent)


class _Stages:
    """The backward's two stages at one (k, v, points) and ``scale``, in at least float32 as the
    reference computes (results in the inputs' dtypes). The sampling stage's derivatives are the
    closed forms of :mod:`.sample_derivatives`, on each group's heads side by side."""

    def __init__(self, q, k, v, points, scale: float):
        self.scale = scale
        self.compute = torch.promote_types(q.dtype, torch.float32)
        self.heads, self.groups = q.shape[2], points.shape[2]
        self.rows = rows_per_chunk(q.shape[0], q.shape[2], points.shape[1], q.device)
        self.corners = Corners(points, k.shape[1:4], torch.promote_types(self.compute, points.dtype))
        self.k, self.v, self.points = k, v, points

    def sample(self):
        """(K, V): k and v sampled at each head's points, ``(B, Nk, heads, d)``."""
        return tuple(per_head(sample(self.corners, grouped(m, self.groups)), self.heads, self.compute)
                     for m in (self.k, self.v))

    def sample_pullback(self, dkeys, dvalues):
        """(dk, dv, dpoints) from the sampled keys' and values' gradients."""
        (dk, from_k), (dv, from_v) = (pullback(self.corners, grouped(g, self.groups), grouped(m, self.groups))
                                      for g, m in ((dkeys, self.k), (dvalues, self.v)))
        return self._maps(dk, dv, from_k + from_v)

    def sampled_cotangents(self, cotangents):
        """The sampling stage's vjp along cotangents of (dk, dv, dpoints), its part on the sampled
        keys' and values' gradients (dK, dV): Eq. 2's tangents along them, which do not depend on
        dK and dV, per head."""
        cot_k, cot_v, cot_points = cotangents
        return tuple(per_head(sampled_tangent(self.corners, m, c, cot_points), self.heads, self.compute)
                     for m, c in ((self.k, cot_k), (self.v, cot_v)))

    def sample_pullback_vjp(self, dkeys, dvalues, cotangents):
        """The rest of the sampling stage's vjp at (k, v, points, dkeys, dvalues): the gradients of
        k, v and points."""
        cot_k, cot_v, cot_points = cotangents
        (_, grad_k, from_k), (_, grad_v, from_v) = (
            pullback_vjp(self.corners, grouped(g, self.groups), grouped(m, self.groups),
                         grouped(c, self.groups), cot_points, with_grad_out=False)
            for g, m, c in ((dkeys, self.k, cot_k), (dvalues, self.v, cot_v)))
        return self._maps(*zeros_for_none((grad_k, grad_v), (self.k, self.v)), from_k + from_v)

    def sample_pullback_jvp(self, dkeys, dvalues, tangents):
        """The tangents of :meth:`sample_pullback`'s (dk, dv, dpoints) along ``tangents`` of (k,
        v, points, dkeys, dvalues)."""
        tan_k, tan_v, tan_points, tan_dkeys, tan_dvalues = tangents
        (tan_dk, from_k), (tan_dv, from_v) = (
            pullback_jvp(self.corners, grouped(g, self.groups), grouped(m, self.groups),
                         (grouped(tg, self.groups), grouped(tm, self.groups), tan_points))
            for g, m, tg, tm in ((dkeys, self.k, tan_dkeys, tan_k), (dvalues, self.v, tan_dvalues, tan_v)))
        return self._maps(tan_dk, tan_dv, from_k + from_v)

    def _maps(self, dk, dv, dpoints):
        return dk.reshape(self.k.shape).to(self.k.dtype), dv.reshape(self.v.shape).to(self.v.dtype), \
            dpoints.to(self.points.dtype)


def zeros_for_none(tensors, like) -> tuple:
    return tuple(torch.zeros_like(p) if t is None else t for t, p in zip(tensors, like))


def _scores_and_grads(grad_out, q, keys, values, scale: float):
    """P = softmax(scale q K^T), dP = dO V^T, its row weights delta = rowsum(P * dP) and
    dS = P * (dP - delta), score-sized ``(B, heads, Nq, Nk)``, with q and dO in the keys'
    (compute) dtype."""
    q, grad_out = q.to(keys.dtype), grad_out.to(keys.dtype)
    probs = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q, keys) * scale, dim=-1)
    dprobs = torch.einsum("bqhd,bkhd->bhqk", grad_out, values)
    delta = (probs * dprobs).sum(-1, keepdim=True)
    return q, grad_out, probs, dprobs, delta, probs * (dprobs - delta)


def _backward(q, grad_out, probs, dscores, keys, scale: float, q_dtype: torch.dtype) -> tuple:
    """dq = scale dS K (in ``q_dtype``), dK = scale dS^T q, dV = P^T dO."""
    return ((scale * torch.einsum("bhqk,bkhd->bqhd", dscores, keys)).to(q_dtype),
            scale * torch.einsum("bhqk,bqhd->bkhd", dscores, q), torch.einsum("bhqk,bqhd->bkhd", probs, grad_out))


def attention_on_sampled_backward(grad_out, q, keys, values, scale: float) -> tuple:
    """Eq. 3's backward on sampled keys and values (``reference.attention_on_sampled``'s), in
    closed form: dq = scale dS K, dK = scale dS^T q, dV = P^T dO; dq in q's dtype."""
    q_c, grad_out_c, probs, _, _, dscores = _scores_and_grads(grad_out, q, keys, values, scale)
    return _backward(q_c, grad_out_c, probs, dscores, keys, scale, q.dtype)


def attention_on_sampled_backward_vjp(grad_out, q, keys, values, scale: float, cotangents) -> tuple:
    """:func:`attention_on_sampled_backward`'s (dq, dK, dV) at (dO, q, K, V) and its vjp along
    cotangents (cq, cK, cV) of those, in closed form, sharing P, dP and dS. With G = scale (cq K^T + q cK^T), the cotangent
    of dS, and r = rowsum(G * P)::

        d/d dP = P * (G - r)
        d/d P  = dO cV^T + G * (dP - rowsum(P * dP)) - r * dP,   d/d S = P * (d/d P - rowsum(P * d/d P))
        dO: P cV + (d/d dP) V        q: scale (dS cK + (d/d S) K)
        K:  scale (dS^T cq + (d/d S)^T q)                        V: (d/d dP)^T dO
    """
    cot_q, cot_keys, cot_values = (c.to(keys.dtype) for c in cotangents)
    q_c, grad_out_c, probs, dprobs, delta, dscores = _scores_and_grads(grad_out, q, keys, values, scale)
    backward = _backward(q_c, grad_out_c, probs, dscores, keys, scale, q.dtype)
    cot_scores = scale * (torch.einsum("bqhd,bkhd->bhqk", cot_q, keys) + torch.einsum("bqhd,bkhd->bhqk", q_c, cot_keys))
    weighted = (cot_scores * probs).sum(-1, keepdim=True)
    cot_dprobs = probs * (cot_scores - weighted)
    cot_probs = (torch.einsum("bqhd,bkhd->bhqk", grad_out_c, cot_values)
                 + cot_scores * (dprobs - delta) - weighted * dprobs)
    del cot_scores, dprobs
    cot_logits = probs * (cot_probs - (probs * cot_probs).sum(-1, keepdim=True))
    del cot_probs
    grad_grad_out = torch.einsum("bhqk,bkhd->bqhd", probs, cot_values) + torch.einsum("bhqk,bkhd->bqhd", cot_dprobs, values)
    grad_q = scale * (torch.einsum("bhqk,bkhd->bqhd", dscores, cot_keys) + torch.einsum("bhqk,bkhd->bqhd", cot_logits, keys))
    grad_keys = scale * (torch.einsum("bhqk,bqhd->bkhd", dscores, cot_q) + torch.einsum("bhqk,bqhd->bkhd", cot_logits, q_c))
    grad_values = torch.einsum("bhqk,bqhd->bkhd", cot_dprobs, grad_out_c)
    return backward, (grad_grad_out.to(grad_out.dtype), grad_q.to(q.dtype), grad_keys, grad_values)


def attention_on_sampled_backward_jvp(grad_out, q, keys, values, scale: float, tangents) -> tuple:
    """:func:`attention_on_sampled_backward`'s (dq, dK, dV) and their tangents along tangents
    (tdO, tq, tK, tV) of (dO, q, K, V), in closed form::

        tS = scale (tq K^T + q tK^T),   tP = P * (tS - rowsum(P * tS)),   tdP = tdO V^T + dO tV^T
        tdS = tP * (dP - rowsum(P * dP)) + P * (tdP - rowsum(tP * dP + P * tdP))
        tdq = scale (tdS K + dS tK),    tdK = scale (tdS^T q + dS^T tq),  tdV = tP^T dO + P^T tdO
    """
    tan_out, tan_q, tan_keys, tan_values = (t.to(keys.dtype) for t in tangents)
    q_c, grad_out_c, probs, dprobs, delta, dscores = _scores_and_grads(grad_out, q, keys, values, scale)
    tan_scores = scale * (torch.einsum("bqhd,bkhd->bhqk", tan_q, keys) + torch.einsum("bqhd,bkhd->bhqk", q_c, tan_keys))
    tan_probs = probs * (tan_scores - (probs * tan_scores).sum(-1, keepdim=True))
    del tan_scores
    tan_dprobs = torch.einsum("bqhd,bkhd->bhqk", tan_out, values) + torch.einsum("bqhd,bkhd->bhqk", grad_out_c, tan_values)
    tan_delta = (tan_probs * dprobs + probs * tan_dprobs).sum(-1, keepdim=True)
    tan_dscores = tan_probs * (dprobs - delta) + probs * (tan_dprobs - tan_delta)
    del tan_dprobs, dprobs
    backward = _backward(q_c, grad_out_c, probs, dscores, keys, scale, q.dtype)
    tangent = ((scale * (torch.einsum("bhqk,bkhd->bqhd", tan_dscores, keys)
                         + torch.einsum("bhqk,bkhd->bqhd", dscores, tan_keys))).to(q.dtype),
               scale * (torch.einsum("bhqk,bqhd->bkhd", tan_dscores, q_c) + torch.einsum("bhqk,bqhd->bkhd", dscores, tan_q)),
               torch.einsum("bhqk,bqhd->bkhd", tan_probs, grad_out_c) + torch.einsum("bhqk,bqhd->bkhd", probs, tan_out))
    return backward, tangent


def attention_backward_vjp(grad_out, q, k, v, points, scale: float, cotangents) -> tuple:
    """The vjp of the backward at (grad_out, q, k, v, points) along ``cotangents`` (of dq, dk, dv,
    dpoints): the gradients of grad_out, q, k, v and points. One pass over the chunks: the
    sampling stage passes on cotangents of dK and dV that do not depend on them."""
    stages = _Stages(q, k, v, points, scale)
    cot_q, cot_k, cot_v, cot_points = cotangents
    keys, values = stages.sample()  # recorded where a third order differentiates this
    cot_keys, cot_values = stages.sampled_cotangents((cot_k, cot_v, cot_points))

    def chunk_vjp(chunk: slice):
        (_, dkeys, dvalues), grads = attention_on_sampled_backward_vjp(
            grad_out[:, chunk], q[:, chunk], keys, values, scale, (cot_q[:, chunk], cot_keys, cot_values))
        return dkeys, dvalues, *grads

    dkeys, dvalues, grad_grad_out, grad_q, grad_keys, grad_values = over_query_chunks(
        chunk_vjp, q.shape[1], stages.rows, per_query=(False, False, True, True, False, False))
    from_k, from_v, from_points = stages.sample_pullback_vjp(dkeys, dvalues, (cot_k, cot_v, cot_points))
    through_k, through_v, through_points = stages.sample_pullback(grad_keys, grad_values)
    return grad_grad_out, grad_q, from_k + through_k, from_v + through_v, from_points + through_points


def attention_backward_jvp(grad_out, q, k, v, points, scale: float, tangents) -> tuple:
    """The jvp of the backward at (grad_out, q, k, v, points) along ``tangents`` of those five
    (None: no tangent): the tangents of dq, dk, dv and dpoints."""
    stages = _Stages(q, k, v, points, scale)
    tan_out, tan_q, tan_k, tan_v, tan_points = zeros_for_none(tangents, (grad_out, q, k, v, points))
    keys, tan_keys = sampled_with_tangent(stages.corners, k, tan_k, tan_points)
    values, tan_values = sampled_with_tangent(stages.corners, v, tan_v, tan_points)
    keys, tan_keys, values, tan_values = (per_head(t, stages.heads, stages.compute)
                                          for t in (keys, tan_keys, values, tan_values))

    def chunk_jvp(chunk: slice):
        (_, dkeys, dvalues), (tan_dq, tan_dkeys, tan_dvalues) = attention_on_sampled_backward_jvp(
            grad_out[:, chunk], q[:, chunk], keys, values, scale, (tan_out[:, chunk], tan_q[:, chunk], tan_keys, tan_values))
        return tan_dq, dkeys, dvalues, tan_dkeys, tan_dvalues

    tan_dq, dkeys, dvalues, tan_dkeys, tan_dvalues = over_query_chunks(
        chunk_jvp, q.shape[1], stages.rows, per_query=(True, False, False, False, False))
    tan_dk, tan_dv, tan_dpoints = stages.sample_pullback_jvp(
        dkeys, dvalues, (tan_k, tan_v, tan_points, tan_dkeys, tan_dvalues))
    return tan_dq, tan_dk, tan_dv, tan_dpoints
