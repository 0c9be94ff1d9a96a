"""Closed forms of Eq. 2's derivatives up to second order, shared by every backend: the tangent
of ``trilinear_sample``, its pullback (the backward) and the pullback's own vjp (double
backward) and jvp (forward over reverse).

Eq. 2 samples ``out[p] = sum_c w_c(p) h[n_c(p)]`` over the eight corners ``c`` of the point's
cell, with ``w_c = g_x g_y g_t`` a product of one piecewise-linear factor per axis. So every
derivative is a sum over corners of the map's values at the corners (gathers) or of per-point
terms put back onto the corners' voxels (scatters), weighted by ``w_c``, its gradient in the
point and its mixed second derivatives ``d2 w_c / da db`` (``a != b``; each factor is linear
within the cell, so ``d2 w_c / da2 = 0``). Reverse over reverse through the reference formula
scatters into a value-sized buffer per corner and again per corner for each later derivative;
here each map-sized result is one scatter. Conventions are the reference's autograd's: the
right-hand derivative at a voxel centre, nothing from corners outside the volume, zero for
non-finite or far-away coordinates.

Layouts as the reference's: a map ``(B, T, H, W, G, C)``, points ``(B, P, G, 3)`` as (x, y, t),
per-point tensors ``(B, P, G, C)``. Computed in at least float32; results in the dtype of the
input they belong to. Everything is differentiable torch, so a further order is autograd's.
"""
from __future__ import annotations

import itertools

import torch

from .reference import axis_corners

_CORNERS = tuple(itertools.product(range(2), repeat=3))  # (t, y, x) of each of the eight corners


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


class Corners:
    """The eight corners of every point in a ``(T, H, W)`` volume, stacked on dim 2 of the point
    layout, ``(B, P, 8, G)``: voxel indices, whether each counts, the weights ``w_c``, their
    gradients in the point (``slope[..., a] = d w_c / da``) and mixed second derivatives
    (``mixed[..., a] = d2 w_c / db dc`` over the two axes ``b, c`` other than ``a``)."""

    def __init__(self, points: torch.Tensor, volume_shape, compute: torch.dtype):
        T, H, W = volume_shape
        self.volume_shape = (T, H, W)
        points = points.to(compute)
        # Per axis (x, y, t): for each of its two corners (index, factor g, counts), and dg/da.
        axes = [axis_corners(points[..., axis], size) for axis, size in ((0, W), (1, H), (2, T))]
        slopes = [(-first[2].to(compute), second[2].to(compute)) for first, second in axes]

        def stacked(per_corner):
            return torch.stack([per_corner(x, y, t) for t, y, x in _CORNERS], dim=2)

        def factor(axis, corner):
            return axes[axis][corner][1]

        def product(x, y, t, slope_axes=()):
            terms = [slopes[a][c] if a in slope_axes else factor(a, c) for a, c in enumerate((x, y, t))]
            return terms[0] * terms[1] * terms[2]

        self.voxel = stacked(lambda x, y, t: (axes[2][t][0] * H + axes[1][y][0]) * W + axes[0][x][0])
        self.counts = stacked(lambda x, y, t: axes[0][x][2] & axes[1][y][2] & axes[2][t][2])
        self.weight = stacked(product)
        self.slope = torch.stack([stacked(lambda x, y, t, a=a: product(x, y, t, (a,))) for a in range(3)], dim=-1)
        self.mixed = torch.stack([stacked(lambda x, y, t, a=a: product(x, y, t, {0, 1, 2} - {a}))
                                  for a in range(3)], dim=-1)

    @classmethod
    def of(cls, value: torch.Tensor, points: torch.Tensor) -> "Corners":
        """The corners of ``points`` in the map ``value`` ``(B, T, H, W, G, C)``, computed in the
        wider of the two dtypes and at least float32."""
        return cls(points, value.shape[1:4], compute_dtype(value, points))

    def _at(self, flat: torch.Tensor, corner: int) -> torch.Tensor:
        """The flattened map's values ``(B, T*H*W, G, C)`` at one corner of every point, zero where
        that corner does not count (its clamped index reads a voxel that must not enter, not
        even as 0 times inf)."""
        B, P, _, G = self.voxel.shape
        index = self.voxel[:, :, corner].unsqueeze(-1).expand(B, P, G, flat.shape[-1])
        return torch.where(self.counts[:, :, corner].unsqueeze(-1), flat.gather(1, index), 0)

    def _flat(self, volume: torch.Tensor) -> torch.Tensor:
        return volume.to(self.weight.dtype).reshape(volume.shape[0], -1, *volume.shape[-2:])

    def weighted_sum(self, volume: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``sum_c weights_c volume[n_c]``, ``(B, P, G, C)``, for per-corner ``(B, P, 8, G)``
        weights; one corner at a time (an eight-fold stack of gathers, freed, would leave the
        allocator's heap fragmented under the chunks that follow)."""
        flat = self._flat(volume)
        total = None
        for corner in range(8):
            total = _add(total, weights[:, :, corner].unsqueeze(-1) * self._at(flat, corner))
        return total

    def inner(self, volume: torch.Tensor, per_point: torch.Tensor) -> torch.Tensor:
        """``<volume[n_c], per_point>`` over channels for every corner, ``(B, P, 8, G)``."""
        flat = self._flat(volume)
        per_point = per_point.to(self.weight.dtype)
        return torch.stack([(self._at(flat, corner) * per_point).sum(-1) for corner in range(8)], dim=2)

    def scatter(self, per_corner: torch.Tensor) -> torch.Tensor:
        """``(B, P, 8, G, C)`` summed onto the corners' voxels (where they count): one map
        ``(B, T, H, W, G, C)``, one scatter."""
        B, P, _, G, C = per_corner.shape
        per_corner = torch.where(self.counts.unsqueeze(-1), per_corner, 0)
        index = self.voxel.reshape(B, P * 8, G, 1).expand(B, P * 8, G, C)
        flat = per_corner.new_zeros(B, self.volume_shape[0] * self.volume_shape[1] * self.volume_shape[2], G, C)
        return flat.scatter_add(1, index, per_corner.reshape(B, P * 8, G, C)).reshape(B, *self.volume_shape, G, C)

    def along(self, direction: torch.Tensor) -> torch.Tensor:
        """``grad w_c . direction`` per corner, ``(B, P, 8, G)``, for a per-point ``(B, P, G, 3)``."""
        return (self.slope * direction.to(self.slope.dtype).unsqueeze(2)).sum(-1)

    def curvature(self, direction: torch.Tensor) -> torch.Tensor:
        """The Hessian of ``w_c`` in the point times ``direction``, ``(B, P, 8, G, 3)``: component
        ``a`` is ``sum over b != a of d2 w_c / da db * direction_b``."""
        d = direction.to(self.mixed.dtype).unsqueeze(2)
        m = self.mixed  # m[..., a]: the mixed derivative over the two axes other than a
        return torch.stack([m[..., 2] * d[..., 1] + m[..., 1] * d[..., 2],
                            m[..., 2] * d[..., 0] + m[..., 0] * d[..., 2],
                            m[..., 1] * d[..., 0] + m[..., 0] * d[..., 1]], dim=-1)


def _slope_sum(slope_weights: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """``sum_c slope_weights_c * inner_c``: ``(B, P, 8, G, 3)`` and ``(B, P, 8, G)`` to ``(B, P, G, 3)``."""
    return (slope_weights * inner.unsqueeze(-1)).sum(2)


def _add(total, term):
    return term if total is None else total + term


def sample(corners: Corners, volume: torch.Tensor) -> torch.Tensor:
    """Eq. 2 of ``volume`` at the corners' points, in the compute dtype."""
    return corners.weighted_sum(volume, corners.weight)


def _tangent(corners: Corners, volume, volume_tangent, points_tangent):
    """Eq. 2's tangent along the map's and the points' tangents (None: none), in the compute
    dtype; None when neither is given."""
    tangent = None if volume_tangent is None else sample(corners, volume_tangent)
    if points_tangent is not None:
        tangent = _add(tangent, corners.weighted_sum(volume, corners.along(points_tangent)))
    return tangent


def sample_jvp(value, points, value_tangent, points_tangent) -> torch.Tensor:
    """The tangent of ``trilinear_sample(value, points)`` along ``value_tangent`` and
    ``points_tangent`` (either may be None: no tangent), in value's dtype."""
    corners = Corners.of(value, points)
    tangent = _tangent(corners, value, value_tangent, points_tangent)
    if tangent is None:
        tangent = value.new_zeros(*points.shape[:3], value.shape[-1])
    return tangent.to(value.dtype)


def sampled_with_tangent(corners: Corners, maps, maps_tangent, points_tangent):
    """Eq. 2 of per-head ``maps`` ``(B, T, H, W, heads, d)`` at the corners' grouped points (head
    ``h`` at group ``h // (heads / G)``) and its tangent (:func:`sampled_tangent`), each
    ``(B, P, G, heads / G * d)`` in the compute dtype (:func:`per_head` splits the heads again)."""
    return sample(corners, grouped(maps, corners.voxel.shape[-1])), sampled_tangent(
        corners, maps, maps_tangent, points_tangent)


def sampled_tangent(corners: Corners, maps, maps_tangent, points_tangent):
    """The tangent of :func:`sampled_with_tangent`'s sample (None when neither tangent is given)."""
    groups = corners.voxel.shape[-1]
    return _tangent(corners, grouped(maps, groups), grouped(maps_tangent, groups), points_tangent)


def grouped(maps: torch.Tensor, groups: int) -> torch.Tensor:
    """``(..., heads, d)`` as ``(..., G, heads / G * d)``: a group's heads side by side (None stays
    None)."""
    return None if maps is None else maps.reshape(*maps.shape[:-2], groups, -1)


def per_head(grouped_tensor, heads: int, dtype: torch.dtype):
    """The inverse of :func:`grouped`, in ``dtype`` (None stays None)."""
    if grouped_tensor is None:
        return None
    return grouped_tensor.reshape(*grouped_tensor.shape[:-2], heads, -1).to(dtype)


def pullback(corners: Corners, grad_out, value) -> tuple[torch.Tensor, torch.Tensor]:
    """The backward at ``grad_out``: (dvalue, dpoints) in the compute dtype, where
    ``dvalue[n] = sum over (p, c) with n_c(p) = n of w_c grad_out[p]`` and
    ``dpoints[p] = sum_c grad w_c <value[n_c], grad_out[p]>``."""
    compute = corners.weight.dtype
    grad_out = grad_out.to(compute)
    dvalue = corners.scatter(corners.weight.unsqueeze(-1) * grad_out.unsqueeze(2))
    dpoints = _slope_sum(corners.slope, corners.inner(value, grad_out))
    return dvalue, dpoints


def pullback_vjp(corners: Corners, grad_out, value, value_cotangent, points_cotangent,
                 with_grad_out: bool = True) -> tuple:
    """The vjp of :func:`pullback` at (grad_out, value, points) along the cotangents of dvalue and
    dpoints (either may be None): the gradients of grad_out, value and points, in the compute
    dtype (value's is None when no points cotangent reaches it)::

        grad_out: sum_c w_c cv[n_c] + sum_c (grad w_c . cp) value[n_c]
        value:    scatter of (grad w_c . cp) grad_out onto n_c
        points:   sum_c grad w_c <cv[n_c], grad_out> + sum_c (Hess w_c cp) <value[n_c], grad_out>

    grad_out's is Eq. 2's tangent along (cv, cp) and does not depend on grad_out: a caller that
    took it before grad_out was known passes ``with_grad_out=False`` (None in its place).
    """
    compute = corners.weight.dtype
    grad_out = grad_out.to(compute)
    grad_grad_out = _tangent(corners, value, value_cotangent, points_cotangent) if with_grad_out else None
    grad_value = grad_points = None
    if value_cotangent is not None:
        grad_points = _slope_sum(corners.slope, corners.inner(value_cotangent, grad_out))
    if points_cotangent is not None:
        along = corners.along(points_cotangent)
        grad_value = corners.scatter(along.unsqueeze(-1) * grad_out.unsqueeze(2))
        grad_points = _add(grad_points, _slope_sum(corners.curvature(points_cotangent), corners.inner(value, grad_out)))
    return grad_grad_out, grad_value, grad_points


def pullback_jvp(corners: Corners, grad_out, value, tangents) -> tuple[torch.Tensor, torch.Tensor]:
    """The tangents of :func:`pullback`'s (dvalue, dpoints) along ``tangents`` of (grad_out,
    value, points), each None for none, in the compute dtype::

        dvalue:  scatter of w_c tg + (grad w_c . tp) grad_out onto n_c
        dpoints: sum_c grad w_c (<tv[n_c], grad_out> + <value[n_c], tg>)
                 + sum_c (Hess w_c tp) <value[n_c], grad_out>
    """
    compute = corners.weight.dtype
    grad_out = grad_out.to(compute)
    tan_out, tan_value, tan_points = (None if t is None else t.to(compute) for t in tangents)
    spread = inner = None
    if tan_out is not None:
        spread = corners.weight.unsqueeze(-1) * tan_out.unsqueeze(2)
        inner = corners.inner(value, tan_out)
    if tan_value is not None:
        inner = _add(inner, corners.inner(tan_value, grad_out))
    tan_dpoints = None if inner is None else _slope_sum(corners.slope, inner)
    if tan_points is not None:
        spread = _add(spread, corners.along(tan_points).unsqueeze(-1) * grad_out.unsqueeze(2))
        tan_dpoints = _add(tan_dpoints, _slope_sum(corners.curvature(tan_points), corners.inner(value, grad_out)))
    B, P, G, C = grad_out.shape
    tan_dvalue = corners.scatter(spread) if spread is not None else value.new_zeros(value.shape, dtype=compute)
    if tan_dpoints is None:
        tan_dpoints = grad_out.new_zeros(B, P, G, 3)
    return tan_dvalue, tan_dpoints
