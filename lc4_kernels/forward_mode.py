"""Forward-mode derivatives (``jvp``) of the two ops, shared by every backend: closed forms of
Eq. 2's and Eq. 3's tangents, so that forward mode (``torch.func.jvp``, ``jacfwd``, ``forward_ad``
dual tensors: the JVPs of consistency-model and flow-map training) never holds the ``Nq x Nk``
scores of the whole call (tda_attention's tangent is taken over chunks of queries,
:mod:`.query_chunks`) nor the reference's value-sized buffer per corner (trilinear_sample's).

With ``K``, ``V`` the keys and values sampled at the points (Eq. 2), ``S = scale q K^T``,
``P = softmax(S)`` and ``O = P V`` (Eq. 3), and ``dK``, ``dV`` their tangents (sampling is
linear in the map and differentiable in the points)::

    dS = scale (dq K^T + q dK^T)
    dO = P dV + (P * dS) V - rowsum(P * dS) O
"""
from __future__ import annotations

import torch

from . import reference
from .query_chunks import over_query_chunks, rows_per_chunk


def zeros_for_none(tensors, like) -> tuple:
    return tuple(torch.zeros_like(p) if t is None else t for t, p in zip(tensors, like))


def value_and_jvp(formula, primals, tangents):
    """formula(*primals) and its tangent along ``tangents`` (None: zero), by two reverse passes
    (the vjp of the vjp, linear in its cotangent): torch.func.jvp would open a forward-mode level,
    which a plain forward_ad level around the call refuses to nest."""
    out, pullback = torch.func.vjp(formula, *primals)
    _, pullback_of_pullback = torch.func.vjp(pullback, torch.utils._pytree.tree_map(torch.zeros_like, out))
    (tangent,) = pullback_of_pullback(zeros_for_none(tangents, primals))
    return out, tangent


def jvp_by_two_vjps(formula, primals, tangents):
    """The tangent of :func:`value_and_jvp`."""
    return value_and_jvp(formula, primals, tangents)[1]


def sample_jvp(value, points, value_tangent, points_tangent) -> torch.Tensor:
    """The tangent of Eq. 2, ``trilinear_sample(value, points)``, along ``value_tangent`` and
    ``points_tangent`` (either may be None: no tangent), in closed form: the eight corners'
    weights times the value tangent, plus their derivatives along the points' tangent times the
    value (the right-hand derivative at a voxel centre, zero where a coordinate is non-finite or
    far away, as the reference's autograd gives). Gathers only: the reference's autograd would
    scatter into a value-sized buffer per corner. Layouts as the reference's."""
    B, T, H, W, G, C = value.shape
    P = points.shape[1]
    compute = torch.promote_types(torch.promote_types(value.dtype, points.dtype), torch.float32)
    points = points.to(compute)
    flat = value.reshape(B, T * H * W, G, C)
    flat_tangent = None if value_tangent is None else value_tangent.reshape(B, T * H * W, G, C)
    axes = [reference.axis_corners(points[..., axis], size) for axis, size in ((0, W), (1, H), (2, T))]
    # d weight / d coordinate of each axis's two corners: -1 and +1 where the corner counts.
    slopes = [(-inside0.to(compute), inside1.to(compute)) for (_, _, inside0), (_, _, inside1) in axes]
    moves = None if points_tangent is None else points_tangent.to(compute).unbind(-1)
    out = value.new_zeros(B, P, G, C, dtype=compute)
    for t_corner in range(2):
        for y_corner in range(2):
            for x_corner in range(2):
                corner = (x_corner, y_corner, t_corner)
                (x_index, x_weight, x_inside), (y_index, y_weight, y_inside), (t_index, t_weight, t_inside) = (
                    axes[axis][c] for axis, c in enumerate(corner))
                voxel = ((t_index * H + y_index) * W + x_index).unsqueeze(-1).expand(B, P, G, C)
                counts = (t_inside & y_inside & x_inside).unsqueeze(-1)
                weights = (x_weight, y_weight, t_weight)
                if flat_tangent is not None:
                    gathered = torch.where(counts, flat_tangent.gather(1, voxel), 0)
                    out = out + (x_weight * y_weight * t_weight).unsqueeze(-1) * gathered
                if moves is not None:
                    moved = sum(slopes[axis][corner[axis]] * moves[axis]
                                * weights[(axis + 1) % 3] * weights[(axis + 2) % 3] for axis in range(3))
                    out = out + moved.unsqueeze(-1) * torch.where(counts, flat.gather(1, voxel), 0)
    return out.to(value.dtype)


def sampled_with_tangent(volume, points, volume_tangent, points_tangent):
    """Eq. 2 of ``volume`` at ``points`` and its tangent; None when neither input has one."""
    sampled = reference.trilinear_sample(volume, points)
    if volume_tangent is None and points_tangent is None:
        return sampled, None
    return sampled, sample_jvp(volume, points, volume_tangent, points_tangent)


def attention_jvp(q, k, v, points, scale: float, tangents) -> torch.Tensor:
    """The tangent of ``tda_attention(q, k, v, points, scale)`` along ``tangents`` = (dq, dk, dv,
    dpoints), each a tensor like its input or None (no tangent). Inputs in the grouped layouts:
    q ``(B, Nq, heads, d)``, k/v ``(B, T, H, W, heads, d)``, points ``(B, Nk, G, 3)``. Computed in
    at least float32, as the reference, and returned in q's dtype."""
    dq, dk, dv, dpoints = tangents
    batch, num_queries, heads, _ = q.shape
    compute = torch.promote_types(q.dtype, torch.float32)
    repeat = heads // points.shape[2]
    per_head_points = points.repeat_interleave(repeat, dim=2)
    per_head_tangent = None if dpoints is None else dpoints.repeat_interleave(repeat, dim=2)
    as_compute = lambda t: None if t is None else t.to(compute)  # noqa: E731
    keys, dkeys = sampled_with_tangent(k.to(compute), per_head_points, as_compute(dk), per_head_tangent)
    values, dvalues = sampled_with_tangent(v.to(compute), per_head_points, as_compute(dv), per_head_tangent)

    def chunk_tangent(chunk: slice):
        return (_chunk_tangent(q[:, chunk], None if dq is None else dq[:, chunk], keys, dkeys, values, dvalues,
                               scale, compute).to(q.dtype),)

    rows = rows_per_chunk(batch, heads, keys.shape[1])
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
