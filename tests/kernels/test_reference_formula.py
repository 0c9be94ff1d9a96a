"""The reference path against the seed's formulas: Eq. 2 summed literally over every voxel,
hand-computed cases, grid_sample, and Eq. 3 written out with explicit exponentials."""
import math

import pytest
import torch
import torch.nn.functional as F

import lc4_kernels
from lc4_kernels import reference

from .cases import SPECIAL_COORDINATES, random_points


def eq2_literal(value, points):
    """phi(h; p) = sum over every integer (rx, ry, rt) of g(px,rx) g(py,ry) g(pt,rt) h[rt,ry,rx]."""
    B, T, H, W, G, C = value.shape

    def g(coord, size):  # (B, P, G) -> (B, P, G, size)
        grid = torch.arange(size, dtype=coord.dtype)
        return torch.clamp(1 - (coord.unsqueeze(-1) - grid).abs(), min=0)

    gx, gy, gt = g(points[..., 0], W), g(points[..., 1], H), g(points[..., 2], T)
    return torch.einsum("bpgt,bpgy,bpgx,btyxgc->bpgc", gt, gy, gx, value)


def test_matches_eq2_summed_over_every_voxel():
    gen = torch.Generator().manual_seed(0)
    value = torch.randn(2, 3, 4, 5, 2, 6, dtype=torch.float64, generator=gen)
    points = random_points(2, 50, 2, 3, 4, 5, dtype=torch.float64, generator=gen, special_fraction=0)
    torch.testing.assert_close(reference.trilinear_sample(value, points), eq2_literal(value, points))


@pytest.mark.parametrize("T,H,W", [(1, 4, 5), (3, 1, 5), (3, 4, 1), (1, 1, 1)])
def test_size_one_axes_follow_eq2(T, H, W):
    gen = torch.Generator().manual_seed(1)
    value = torch.randn(1, T, H, W, 1, 3, dtype=torch.float64, generator=gen)
    points = random_points(1, 40, 1, T, H, W, dtype=torch.float64, generator=gen, special_fraction=0)
    torch.testing.assert_close(reference.trilinear_sample(value, points), eq2_literal(value, points))


def test_hand_computed_points():
    value = torch.arange(2 * 2 * 3, dtype=torch.float64).reshape(1, 2, 2, 3, 1, 1)  # h[t, y, x] = 6t + 3y + x
    cases = [
        ((1.0, 1.0, 1.0), 6 + 3 + 1),            # on a voxel centre
        ((0.5, 0.0, 0.0), 0.5),                  # halfway between h[0,0,0]=0 and h[0,0,1]=1
        ((1.25, 0.5, 0.0), 1.25 + 1.5),          # bilinear inside a frame
        ((0.0, 0.0, 0.5), 3.0),                  # halfway between frames: (0 + 6) / 2
        ((-0.5, 0.0, 0.0), 0.0),                 # half outside: g(-0.5, 0) * h[0,0,0] = 0.5 * 0
        ((2.5, 1.0, 1.0), 0.5 * (6 + 3 + 2)),    # half outside on the right
        ((-1.0, 0.0, 0.0), 0.0),                 # fully outside
        ((3.0, 0.0, 0.0), 0.0),
        ((1.0, 1.0, -0.25), 0.75 * 4),           # t before the first frame: 0.75 * h[0,1,1]
        ((1.0, 1.0, 1.25), 0.75 * 10),           # t beyond the last frame
    ]
    points = torch.tensor([c for c, _ in cases], dtype=torch.float64).reshape(1, -1, 1, 3)
    expected = torch.tensor([e for _, e in cases], dtype=torch.float64)
    torch.testing.assert_close(reference.trilinear_sample(value, points).flatten(), expected)


def test_single_frame_volume_weighs_time_by_eq2():
    # grid_sample cannot express a size-1 axis (its normalisation divides by n - 1): Eq. 2 gives
    # g(t, 0) = 1 - |t| on the only frame.
    value = torch.full((1, 1, 1, 1, 1, 1), 4.0, dtype=torch.float64)
    t = torch.tensor([0.0, 0.25, -0.5, 0.9, 1.0, -1.0], dtype=torch.float64)
    points = torch.stack([torch.zeros_like(t), torch.zeros_like(t), t], -1).reshape(1, -1, 1, 3)
    torch.testing.assert_close(reference.trilinear_sample(value, points).flatten(), 4.0 * (1 - t.abs()).clamp(min=0))


def _grid_sample(value, points):
    """Eq. 2 through F.grid_sample (align_corners=True maps -1..1 to the first..last voxel)."""
    B, T, H, W, G, C = value.shape
    vol = value.permute(0, 4, 5, 1, 2, 3).reshape(B * G, C, T, H, W)
    sizes = torch.tensor([W, H, T], dtype=points.dtype)
    grid = points / (sizes - 1) * 2 - 1  # (B, P, G, 3) in (x, y, t) order, as grid_sample wants
    grid = grid.permute(0, 2, 1, 3).reshape(B * G, -1, 1, 1, 3)
    out = F.grid_sample(vol, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.reshape(B, G, C, -1).permute(0, 3, 1, 2)


def test_matches_grid_sample_on_random_points_with_gradients():
    gen = torch.Generator().manual_seed(2)
    value = torch.randn(2, 4, 5, 6, 2, 3, dtype=torch.float64, generator=gen)
    points = random_points(2, 64, 2, 4, 5, 6, dtype=torch.float64, generator=gen, edge_fraction=0, special_fraction=0)
    ours_v, ours_p = value.clone().requires_grad_(), points.clone().requires_grad_()
    gs_v, gs_p = value.clone().requires_grad_(), points.clone().requires_grad_()
    ours = reference.trilinear_sample(ours_v, ours_p)
    theirs = _grid_sample(gs_v, gs_p)
    torch.testing.assert_close(ours, theirs)
    weight = torch.randn(ours.shape, dtype=torch.float64, generator=gen)
    (ours * weight).sum().backward()
    (theirs * weight).sum().backward()
    torch.testing.assert_close(ours_v.grad, gs_v.grad)
    torch.testing.assert_close(ours_p.grad, gs_p.grad)


def test_gradient_at_integer_coordinates_follows_grid_sample():
    # Sizes with n - 1 a power of two make the normalisation exact, so both see exact integers.
    T, H, W = 3, 5, 9
    gen = torch.Generator().manual_seed(3)
    value = torch.randn(1, T, H, W, 1, 2, dtype=torch.float64, generator=gen)
    coords = torch.stack(torch.meshgrid(torch.arange(-1, W + 1.0), torch.arange(-1, H + 1.0), torch.arange(-1, T + 1.0),
                                        indexing="ij"), -1).reshape(1, -1, 1, 3).to(torch.float64)
    ours_p, gs_p = coords.clone().requires_grad_(), coords.clone().requires_grad_()
    weight = torch.randn(1, coords.shape[1], 1, 2, dtype=torch.float64, generator=gen)
    (reference.trilinear_sample(value, ours_p) * weight).sum().backward()
    (_grid_sample(value, gs_p) * weight).sum().backward()
    torch.testing.assert_close(ours_p.grad, gs_p.grad)


@pytest.mark.parametrize("special", SPECIAL_COORDINATES)
def test_non_finite_and_huge_coordinates_sample_zero_with_zero_gradient(special):
    value = torch.randn(1, 2, 3, 4, 1, 5, dtype=torch.float64, requires_grad=True)
    points = torch.tensor([[[[1.5, 1.0, 0.5]], [[special, 1.0, 0.5]], [[1.0, special, 0.5]], [[1.0, 1.0, special]]]],
                          dtype=torch.float64, requires_grad=True)
    out = reference.trilinear_sample(value, points)
    assert torch.isfinite(out).all()
    assert (out[:, 1:] == 0).all()
    out.sum().backward()
    assert torch.isfinite(points.grad).all() and torch.isfinite(value.grad).all()
    assert (points.grad[:, 1:] == 0).all()
    assert (points.grad[:, 0] != 0).any()


def test_a_voxel_outside_a_points_corners_never_enters_its_sample():
    # Out-of-volume corners and non-finite points read no voxel, so an infinite value where
    # their indices would be clamped to leaves their samples (and gradients) finite.
    value = torch.randn(1, 2, 3, 4, 1, 2, dtype=torch.float64)
    value[0, 0, 0, 0] = math.inf
    value.requires_grad_(True)
    points = torch.tensor([[[[math.nan, math.nan, math.nan]], [[-0.5, 2.0, 1.0]], [[1.0, -0.5, 1.0]],
                            [[2.0, 1.0, -0.5]], [[-0.5, 0.0, 0.0]]]], dtype=torch.float64, requires_grad=True)
    out = reference.trilinear_sample(value, points)
    assert (out[:, 0] == 0).all()
    assert torch.isfinite(out[:, 1:4]).all()
    assert torch.isinf(out[:, 4]).all()  # its corner (0, 0, 0) weighs 1/2
    out[:, :4].sum().backward()
    assert torch.isfinite(points.grad[:, :4]).all() and torch.isfinite(value.grad).all()


def eq3_literal(q, k, v, points, scale):
    """Eq. 3 per batch and head with k~, v~ from the literal Eq. 2 and an explicit softmax."""
    B, Nq, heads, d = q.shape
    G = points.shape[2]
    out = torch.empty_like(q)
    for b in range(B):
        for h in range(heads):
            g = h // (heads // G)
            k_s = eq2_literal(k[b:b + 1, ..., h:h + 1, :], points[b:b + 1, :, g:g + 1])[0, :, 0]  # (Nk, d)
            v_s = eq2_literal(v[b:b + 1, ..., h:h + 1, :], points[b:b + 1, :, g:g + 1])[0, :, 0]
            logits = scale * q[b, :, h] @ k_s.T
            weights = torch.exp(logits - logits.max(dim=1, keepdim=True).values)
            out[b, :, h] = (weights / weights.sum(dim=1, keepdim=True)) @ v_s
    return out


@pytest.mark.parametrize("G", [1, 2, 4])
def test_attention_matches_eq3(G):
    gen = torch.Generator().manual_seed(4)
    B, Nq, Nk, heads, d, T, H, W = 2, 11, 13, 4, 6, 3, 4, 5
    q = torch.randn(B, Nq, heads, d, dtype=torch.float64, generator=gen)
    k = torch.randn(B, T, H, W, heads, d, dtype=torch.float64, generator=gen)
    v = torch.randn(B, T, H, W, heads, d, dtype=torch.float64, generator=gen)
    points = random_points(B, Nk, G, T, H, W, dtype=torch.float64, generator=gen, special_fraction=0)
    expected = eq3_literal(q, k, v, points, d ** -0.5)
    torch.testing.assert_close(lc4_kernels.tda_attention(q, k, v, points, backend="reference"), expected)
    torch.testing.assert_close(reference.tda_attention(q, k, v, points, 0.3), eq3_literal(q, k, v, points, 0.3))
    # An explicit scale reaches the backend through the public op.
    torch.testing.assert_close(lc4_kernels.tda_attention(q, k, v, points, 0.3, backend="reference"),
                               eq3_literal(q, k, v, points, 0.3))


def test_attention_projection_commutes_with_sampling():
    # Eq. 1 samples h and then projects; the op projects first. They agree for a bias-free projection.
    gen = torch.Generator().manual_seed(5)
    B, T, H, W, C, heads, d = 1, 2, 3, 4, 6, 2, 3
    hidden = torch.randn(B, T, H, W, C, dtype=torch.float64, generator=gen)
    w_k = torch.randn(C, heads * d, dtype=torch.float64, generator=gen)
    points = random_points(B, 9, 1, T, H, W, dtype=torch.float64, generator=gen, special_fraction=0)
    sample_then_project = reference.trilinear_sample(hidden.unsqueeze(4), points)[:, :, 0] @ w_k
    project_then_sample = reference.trilinear_sample((hidden @ w_k).reshape(B, T, H, W, 1, heads * d), points)[:, :, 0]
    torch.testing.assert_close(sample_then_project, project_then_sample)
    assert not math.isnan(sample_then_project.sum().item())


@pytest.mark.parametrize("axis", [0, 1, 2], ids=["x", "y", "t"])
def test_an_out_of_volume_corner_adds_nothing_even_to_an_infinite_voxel(axis):
    # A corner outside the volume on one axis has its index clamped onto the in-volume corner of
    # that axis; Eq. 2 leaves it out of the sum, so the sample is g * inf = inf, never the NaN of
    # 0 * inf. Each axis on its own, below the volume and beyond it.
    T, H, W = 2, 3, 4
    value = torch.zeros(1, T, H, W, 1, 1, dtype=torch.float64)
    value[0, 0, 0, 0] = math.inf
    value[0, T - 1, H - 1, W - 1] = math.inf
    below, beyond = [0.0, 0.0, 0.0], [W - 1.0, H - 1.0, T - 1.0]
    below[axis] -= 0.5  # corners -1 (outside, clamped to 0) and 0, g = 1/2 each
    beyond[axis] += 0.5  # corners n - 1 and n (outside, clamped to n - 1)
    points = torch.tensor([below, beyond], dtype=torch.float64).reshape(1, 2, 1, 3)
    out = reference.trilinear_sample(value, points)
    assert torch.isinf(out).all() and (out > 0).all(), out.flatten()


def _within_one_ulp(actual, exact, dtype, what):
    """actual (of dtype) is exact rounded to dtype, give or take one unit in the last place."""
    rounded = exact.to(dtype)
    ulp = (torch.nextafter(rounded.abs(), torch.tensor(math.inf, dtype=dtype)) - rounded.abs()).double()
    error = (actual.double() - exact).abs()
    assert actual.dtype == dtype, f"{what}: dtype {actual.dtype}, expected {dtype}"
    assert (error <= ulp).all(), f"{what}: {(error / ulp).max().item():.0f} ulps from the formula"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_sampling_is_eq2_rounded_once(dtype):
    # Weights and sums run in float32 whatever the value's (and the coordinates') dtype: only the
    # result is rounded. Coordinates on a 1/8 grid, exact in both half types.
    gen = torch.Generator().manual_seed(6)
    value = torch.randn(2, 3, 4, 5, 2, 16, dtype=torch.float64, generator=gen).to(dtype)
    points = random_points(2, 60, 2, 3, 4, 5, dtype=torch.float64, generator=gen, special_fraction=0)
    points = ((points * 8).round() / 8).to(dtype)
    _within_one_ulp(reference.trilinear_sample(value, points), eq2_literal(value.double(), points.double()), dtype,
                    "sample")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_attention_is_eq3_rounded_once(dtype):
    # Scores, softmax and products run in float32 (sampled k~, v~ are not rounded to the inputs'
    # dtype either); only the output is rounded.
    gen = torch.Generator().manual_seed(7)
    B, Nq, Nk, heads, d, T, H, W = 2, 11, 40, 4, 16, 3, 4, 5
    q = torch.randn(B, Nq, heads, d, dtype=torch.float64, generator=gen).to(dtype)
    k = torch.randn(B, T, H, W, heads, d, dtype=torch.float64, generator=gen).to(dtype)
    v = torch.randn(B, T, H, W, heads, d, dtype=torch.float64, generator=gen).to(dtype)
    points = random_points(B, Nk, 2, T, H, W, dtype=torch.float64, generator=gen, special_fraction=0).float()
    expected = eq3_literal(q.double(), k.double(), v.double(), points.double(), 0.25)
    _within_one_ulp(reference.tda_attention(q, k, v, points, 0.25), expected, dtype, "attention")
