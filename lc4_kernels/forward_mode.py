"""Forward-mode derivatives (``jvp``) of the two ops, shared by every backend: closed forms of
Eq. 2's and Eq. 3's tangents, so that forward mode (``torch.func.jvp``, ``jacfwd``, ``forward_ad``
dual tensors: the JVPs of consistency-model and flow-map training) never holds the ``Nq x Nk``
scores of the whole call (tda_attention's tangent is taken over chunks of queries,
:mod:`.query_chunks`); the sampling's tangents are :mod:`.sample_derivatives`'.

With ``K``, ``V`` the keys and values sampled at the points (Eq. 2), ``S = scale q K^T``,
``P = softmax(S)`` and ``O = P V`` (Eq. 3), and ``dK``, ``dV`` their tangents (sampling is
linear in the map and differentiable in the points)::

    dS = scale (dq K^T + q dK^T)
    dO = P dV + (P * dS) V - rowsum(P * dS) O
"""
from __future__ import annotations

import torch

from .query_chunks import over_query_chunks, rows_per_chunk
from .sample_derivatives import Corners, per_head, sampled_with_tangent


def attention_jvp(q, k, v, points, scale: float, tangents) -> torch.Tensor:
    """The tangent of ``tda_attention(q, k, v, points, scale)`` along ``tangents`` = (dq, dk, dv,
    dpoints), each a tensor like its input or None (no tangent). Inputs in the grouped layouts:
    q ``(B, Nq, heads, d)``, k/v ``(B, T, H, W, heads, d)``, points ``(B, Nk, G, 3)``. Computed in
    at least float32, as the reference, and returned in q's dtype."""
    dq, dk, dv, dpoints = tangents
    batch, num_queries, heads, _ = q.shape
    compute = torch.promote_types(q.dtype, torch.float32)
    corners = Corners(points, k.shape[1:4], torch.promote_types(compute, points.dtype))
    keys, dkeys = sampled_with_tangent(corners, k, dk, dpoints)
    values, dvalues = sampled_with_tangent(corners, v, dv, dpoints)
    keys, dkeys, values, dvalues = (per_head(t, heads, compute) for t in (keys, dkeys, values, dvalues))

    def chunk_tangent(chunk: slice):
        return (_chunk_tangent(q[:, chunk], None if dq is None else dq[:, chunk], keys, dkeys, values, dvalues,
                               scale, compute).to(q.dtype),)

    rows = rows_per_chunk(batch, heads, keys.shape[1], q.device)
    return over_query_chunks(chunk_tangent, num_queries, rows, per_query=(True,))[0]


def _chunk_tangent(q, dq, keys, dkeys, values, dvalues, scale: float, compute: torch.dtype) -> torch.Tensor:
    """dO of a chunk of queries (module docstring), in ``compute``; its score-sized temporaries
    are freed on return."""
    q = q.to(compute)
    probs = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q, keys) * scale, dim=-1)
    tangent = torch.zeros_like(q) if dvalues is None else torch.einsum("bhqk,bkhd->bqhd", probs, dvalues)
    dscores = None
    if dq is not None:
        dscores = torch.einsum("bqhd,bkhd->bhqk", dq.to(compute), keys)
    if dkeys is not None:
        from_keys = torch.einsum("bqhd,bkhd->bhqk", q, dkeys)
        dscores = from_keys if dscores is None else dscores + from_keys
    if dscores is None:
        return tangent
    weighted = probs * dscores * scale
    del dscores
    out = torch.einsum("bhqk,bkhd->bqhd", probs, values)
    del probs
    return (tangent + torch.einsum("bhqk,bkhd->bqhd", weighted, values)
            - weighted.sum(-1).transpose(1, 2).unsqueeze(-1) * out)
