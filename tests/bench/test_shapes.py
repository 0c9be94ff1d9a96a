"""The named shape sets, the key-point rule and the work counts behind TFLOP/s and GB/s."""
import pytest
import torch

import lc4_kernels as K
from benchmarks import inputs, metrics, report, shapes
from lc4_kernels import reference
from lc4_kernels.backends import Backend, register_backend, unregister_backend


def test_sd15_levels_follow_the_unet():
    for pixels in (256, 512):
        cases = shapes.SHAPE_SETS[f"sd15-{pixels}"]
        latent = pixels // 8
        assert [c.height for c in cases] == [latent, latent // 2, latent // 4, latent // 8]
        assert [c.head_dim for c in cases] == [40, 80, 160, 160]
        assert [c.spatial_stride for c in cases] == [4, 2, 1, 1]
        assert all(c.heads == 8 and c.frames == 8 and c.nq == 8 * c.height * c.width for c in cases)
    assert [c.nk for c in shapes.SHAPE_SETS["sd15-512"]] == [1024, 1024, 1024, 256]
    assert [c.nk for c in shapes.SHAPE_SETS["sd15-256"]] == [256, 256, 256, 64]
    assert (shapes.ISSUE2_CPU_CASE.nq, shapes.ISSUE2_CPU_CASE.nk, shapes.ISSUE2_CPU_CASE.head_dim) == (8192, 1024, 40)


@pytest.mark.parametrize("case", [*shapes.SHAPE_SETS["sd15-512"], *shapes.SHAPE_SETS["quick"]], ids=lambda c: c.name)
def test_key_points_are_the_reference_grid_plus_bounded_offsets(case):
    grid = inputs.reference_grid(case)
    assert grid.shape == (case.nk, 3)
    assert grid[0].tolist() == [0, 0, 0]
    if case.width > case.spatial_stride:
        assert grid[1].tolist() == [case.spatial_stride, 0, 0]
    assert (grid >= 0).all() and (grid <= torch.tensor([case.width - 1, case.height - 1, case.frames - 1])).all()
    points = inputs.key_points(case, torch.Generator().manual_seed(0))
    assert points.shape == (case.batch, case.nk, case.groups, 3)
    offsets = points - grid.reshape(1, -1, 1, 3)
    assert offsets.abs().max() <= shapes.OFFSET_RANGE and offsets.abs().max() > 0


def test_reference_grid_matches_the_lc4_model():
    tda = pytest.importorskip("lc4.tda", reason="the lc4 model layer is not importable here")
    for case in shapes.SHAPE_SETS["sd15-256"]:
        strides = (case.temporal_stride, case.spatial_stride, case.spatial_stride)
        expected = tda.reference_grid(case.frames, case.height, case.width, strides)
        assert torch.equal(inputs.reference_grid(case), expected)


def test_resolve_sets_and_cases_without_repeats():
    cases = shapes.resolve("quick,quick-8x8,sd15-256px-4x4")
    assert [c.name for c in cases] == ["quick-8x8", "quick-4x4-d80", "sd15-256px-4x4"]
    with pytest.raises(ValueError, match="unknown shape set"):
        shapes.resolve("no-such-set")


def test_attention_flops_and_sample_bytes():
    case = shapes.Case("t", height=4, width=4, head_dim=8, frames=2, heads=2, spatial_stride=2, temporal_stride=1)
    flops = metrics.attention_flops(case)
    assert flops["fwd"] == 4 * 2 * case.nq * case.nk * 8
    assert flops["fwd_bwd"] == pytest.approx(3.5 * flops["fwd"])
    sampled = metrics.sample_bytes(case, element_size=4)
    assert sampled["fwd"] == case.nk * (12 + 9 * 16 * 4)
    assert sampled["fwd_bwd"] > 2 * sampled["fwd"]


def test_default_backends_leave_out_test_only_ones():
    register_backend(Backend(name="test-only", priority=-1, device_types=frozenset({"cpu"}),
                             dtypes=frozenset({torch.float32}), auto_selectable=False,
                             trilinear_sample=reference.trilinear_sample, tda_attention=reference.tda_attention))
    try:
        chosen = report._backends(None)
        assert "test-only" not in chosen and "test-only" in K.available_backends()
        assert chosen[0] == "reference"
        assert set(chosen) == {n for n in K.available_backends() if K.get_backend(n).auto_selectable}
        assert report.default_backends() == [n for n in K.available_backends() if K.get_backend(n).auto_selectable]
        assert report._backends("test-only") == ["reference", "test-only"]
    finally:
        unregister_backend("test-only")
