"""Closed forms of Eq. 2's derivatives (``lc4_kernels.sample_derivatives``): the tangent, the
pullback (backward) and the pullback's vjp (double backward) and jvp (forward over reverse),
against central differences of the formula away from its kinks and against autograd through the
reference everywhere (voxel centres, borders, NaN, infinite and far points); the memory a
trilinear_sample gradient penalty holds."""
import pytest
import torch
from torch import func

import lc4_kernels
from benchmarks.measure import peak_memory
from lc4_kernels import reference, sample_derivatives

from .cases import jvp_by_two_vjps, sample_inputs

SHAPE = dict(B=2, P=13, G=2, C=3, T=3, H=4, W=5)
SUBSETS = {"both": (True, True), "first": (True, False), "second": (False, True)}


def _inputs(special_fraction):
    return sample_inputs(**SHAPE, dtype=torch.float64, special_fraction=special_fraction)


def _points_off_the_kinks(seed=4):
    """Away from the voxel centres and the border (Eq. 2's kinks), inside and in the padded band."""
    g = torch.Generator().manual_seed(seed)
    points = torch.rand(SHAPE["B"], SHAPE["P"], SHAPE["G"], 3, generator=g, dtype=torch.float64)
    points = points * torch.tensor([5.8, 4.8, 3.8], dtype=torch.float64) - 0.9
    return torch.where((points - points.round()).abs() < 0.05, points + 0.1, points)


def _randn_like(tensors, seed):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(t.shape, generator=g, dtype=torch.float64) for t in tensors)


def _grad_out(seed=7):
    return _randn_like([torch.empty(SHAPE["B"], SHAPE["P"], SHAPE["G"], SHAPE["C"])], seed)[0]


def _corners(value, points):
    return sample_derivatives.Corners.of(value, points)


def _reference_pullback(grad_out, value, points):
    return func.vjp(reference.trilinear_sample, value, points)[1](grad_out)


def _pullback(grad_out, value, points):
    return sample_derivatives.pullback(_corners(value, points), grad_out, value)


def test_tangent_equals_central_differences_of_eq2():
    value, _ = _inputs(0)
    points = _points_off_the_kinks()
    tangents = _randn_like((value, points), 10)
    eps = 1e-6
    expected = (reference.trilinear_sample(value + eps * tangents[0], points + eps * tangents[1])
                - reference.trilinear_sample(value - eps * tangents[0], points - eps * tangents[1])) / (2 * eps)
    torch.testing.assert_close(sample_derivatives.sample_jvp(value, points, *tangents), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("subset", SUBSETS.values(), ids=SUBSETS.keys())
def test_tangent_equals_forward_mode_through_the_reference(subset):
    inputs = _inputs(0.3)
    tangents = tuple(t if flag else None for t, flag in zip(_randn_like(inputs, 10), subset))
    _, expected = func.jvp(reference.trilinear_sample, inputs,
                           tuple(torch.zeros_like(x) if t is None else t for x, t in zip(inputs, tangents)))
    actual = sample_derivatives.sample_jvp(*inputs, *tangents)
    assert torch.isfinite(actual).all()
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


def test_pullback_equals_central_differences_of_eq2():
    """<pullback(g), (t_value, t_points)> is the derivative of <sample, g> along the tangents."""
    value, _ = _inputs(0)
    points = _points_off_the_kinks()
    grad_out = _grad_out()
    t_value, t_points = _randn_like((value, points), 11)
    eps = 1e-6
    expected = ((reference.trilinear_sample(value + eps * t_value, points + eps * t_points)
                 - reference.trilinear_sample(value - eps * t_value, points - eps * t_points)) * grad_out).sum() / (2 * eps)
    dvalue, dpoints = _pullback(grad_out, value, points)
    torch.testing.assert_close((dvalue * t_value).sum() + (dpoints * t_points).sum(), expected, rtol=1e-7, atol=1e-8)


def test_pullback_derivatives_equal_central_differences_of_the_pullback():
    """The pullback's vjp and jvp against the pullback differenced along one direction: for
    tangents t of (grad_out, value, points) and cotangents c of (dvalue, dpoints),
    d/de <pullback(x + e t), c> = <pullback_jvp(t), c> = <t, pullback_vjp(c)>."""
    value, _ = _inputs(0)
    points = _points_off_the_kinks()
    grad_out = _grad_out()
    primals = (grad_out, value, points)
    tangents = _randn_like(primals, 12)
    cotangents = _randn_like((value, points), 13)
    eps = 1e-6

    def paired(step):
        moved = [x + step * t for x, t in zip(primals, tangents)]
        return sum((a * c).sum() for a, c in zip(_pullback(*moved), cotangents))

    expected = (paired(eps) - paired(-eps)) / (2 * eps)
    corners = _corners(value, points)
    jvp = sample_derivatives.pullback_jvp(corners, grad_out, value, tangents)
    vjp = sample_derivatives.pullback_vjp(corners, grad_out, value, *cotangents)
    torch.testing.assert_close(sum((a * c).sum() for a, c in zip(jvp, cotangents)), expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(sum((a * t).sum() for a, t in zip(vjp, tangents)), expected, rtol=1e-6, atol=1e-7)


def test_pullback_equals_the_references_backward():
    value, points = _inputs(0.3)
    grad_out = _grad_out()
    for actual, expected in zip(_pullback(grad_out, value, points), _reference_pullback(grad_out, value, points)):
        assert torch.isfinite(actual).all()
        torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("subset", SUBSETS.values(), ids=["both", "value", "points"])
def test_pullback_vjp_equals_reverse_over_reverse_through_the_reference(subset):
    value, points = _inputs(0.3)
    grad_out = _grad_out()
    cotangents = tuple(c if flag else None for c, flag in zip(_randn_like((value, points), 13), subset))
    actual = sample_derivatives.pullback_vjp(_corners(value, points), grad_out, value, *cotangents)
    expected = func.vjp(_reference_pullback, grad_out, value, points)[1](
        tuple(torch.zeros_like(x) if c is None else c for x, c in zip((value, points), cotangents)))
    for name, a, e in zip(("grad_out", "value", "points"), actual, expected):
        if a is None:  # nothing reaches it: the reference's gradient is zero
            assert not e.any(), name
            continue
        assert torch.isfinite(a).all(), name
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("subset", [(True, True, True), (True, False, False), (False, True, False),
                                    (False, False, True)], ids=["all", "grad_out", "value", "points"])
def test_pullback_jvp_equals_forward_over_reverse_through_the_reference(subset):
    value, points = _inputs(0.3)
    grad_out = _grad_out()
    primals = (grad_out, value, points)
    tangents = tuple(t if flag else None for t, flag in zip(_randn_like(primals, 12), subset))
    actual = sample_derivatives.pullback_jvp(_corners(value, points), grad_out, value, tangents)
    expected = jvp_by_two_vjps(_reference_pullback, primals, tangents)
    for a, e in zip(actual, expected):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


def test_third_derivatives_through_the_closed_forms_equal_the_references():
    """Autograd differentiates the closed forms once more (a third order): the trilinear weights'
    d3 w / dx dy dt must survive."""
    value, points = _inputs(0.3)
    grad_out = _grad_out()
    cotangents = _randn_like((value, points), 13)
    outer = _randn_like((grad_out, value, points), 14)

    def closed(grad_out, value, points):
        return sample_derivatives.pullback_vjp(_corners(value, points), grad_out, value, *cotangents)

    def through_reference(grad_out, value, points):
        return func.vjp(_reference_pullback, grad_out, value, points)[1](cotangents)

    actual = func.vjp(closed, grad_out, value, points)[1](outer)
    expected = func.vjp(through_reference, grad_out, value, points)[1](outer)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [dict(B=1, P=0, G=1, C=3, T=2, H=2, W=2), dict(B=1, P=4, G=1, C=2, T=1, H=1, W=1)],
                         ids=["no_points", "one_voxel"])
def test_pullback_vjp_of_degenerate_shapes(shape):
    value, points = sample_inputs(**shape, dtype=torch.float64, special_fraction=0.3)
    grad_out = torch.randn(shape["B"], shape["P"], shape["G"], shape["C"], dtype=torch.float64)
    cotangents = (torch.randn_like(value), torch.randn_like(points))
    actual = sample_derivatives.pullback_vjp(_corners(value, points), grad_out, value, *cotangents)
    expected = func.vjp(_reference_pullback, grad_out, value, points)[1](cotangents)
    for a, e in zip(actual, expected):
        assert a.shape == e.shape
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


@pytest.mark.skipif("cpu" not in lc4_kernels.available_backends(), reason="compiled cpu backend not built")
def test_a_gradient_penalty_holds_few_maps():
    """The cpu backend's trilinear_sample gradient penalty at the SD1.5 32x32 level (a 10 MiB map,
    1024 points a group, where the eight corners' stacked per-point tensors are map-sized too):
    its double backward scatters once per map-sized result. Measured here: about 10 maps (102 and
    111 MiB in two runs); reverse over reverse through the reference, one scatter per corner,
    held 195 MiB."""
    gen = torch.Generator().manual_seed(0)
    value = torch.randn(1, 8, 32, 32, 8, 40, generator=gen)
    points = torch.rand(1, 1024, 8, 3, generator=gen) * torch.tensor([31.0, 31.0, 7.0])
    weight = torch.randn(1, 1024, 8, 40, generator=gen)
    map_bytes = value.numel() * value.element_size()

    def penalty():
        leaves = [value.clone().requires_grad_(True), points.clone().requires_grad_(True)]
        out = lc4_kernels.trilinear_sample(*leaves, backend="cpu")
        grads = torch.autograd.grad((out * weight).sum(), leaves, create_graph=True)
        torch.autograd.grad(sum(g.square().sum() for g in grads), leaves)

    penalty()
    peak = peak_memory(penalty, torch.device("cpu")).bytes
    assert peak < 15 * map_bytes, f"gradient penalty peak {peak / 2**20:.1f} MiB, a map {map_bytes / 2**20:.1f} MiB"
