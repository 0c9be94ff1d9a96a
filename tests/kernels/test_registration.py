"""Op registration: schemas, fake kernels and autograd (opcheck), torch.compile without graph
breaks, and the autocast policy."""
import pytest
import torch

import lc4_kernels

from .cases import attention_inputs, compiled_backend_cases, sample_inputs

needs_extension = pytest.mark.skipif(lc4_kernels.extension_error is not None,
                                     reason=f"compiled extension missing: {lc4_kernels.extension_error}")


@needs_extension
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_opcheck_attention_and_sample_ops(dtype):
    # float64 and bfloat16 too: the fake kernels must give the log-sum-exp the dtype the kernel
    # gives it (float64, float32 for both).
    q, k, v, points = attention_inputs(Nq=9, Nk=7, heads=2, d=4, G=1, special_fraction=0, dtype=dtype)
    args = [t.requires_grad_(True) for t in (q, k, v, points)]
    torch.library.opcheck(torch.ops.lc4.tda_attention.default, (*args, 0.5))
    value, sample_points = sample_inputs(B=1, P=5, G=1, C=3, special_fraction=0, dtype=dtype)
    torch.library.opcheck(torch.ops.lc4.trilinear_sample.default,
                          (value.requires_grad_(True), sample_points.requires_grad_(True)))


@needs_extension
def test_fake_kernels_give_the_strides_of_the_kernels_for_strided_inputs():
    # The kernels return contiguous tensors; fake kernels that copied the inputs' strides would
    # hand a traced graph layouts the real run does not have.
    q, k, v, points = attention_inputs(Nq=9, Nk=7, heads=2, d=4, G=1, special_fraction=0)
    q_t = q.transpose(1, 2).contiguous().transpose(1, 2)
    k_t = k.permute(0, 1, 3, 2, 4, 5).contiguous().permute(0, 1, 3, 2, 4, 5)
    points_t = points.transpose(1, 2).contiguous().transpose(1, 2)
    args = [t.requires_grad_(True) for t in (q_t, k_t, v, points_t)]
    assert not args[0].is_contiguous() and not args[1].is_contiguous()
    torch.library.opcheck(torch.ops.lc4.tda_attention.default, (*args, 0.5))
    value, sample_points = sample_inputs(B=1, P=5, G=1, C=3, special_fraction=0)
    value_t = value.transpose(2, 3).contiguous().transpose(2, 3)
    torch.library.opcheck(torch.ops.lc4.trilinear_sample.default,
                          (value_t.requires_grad_(True), sample_points.requires_grad_(True)))


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
@pytest.mark.parametrize("backend,device", compiled_backend_cases(torch.float32) + [("reference", "cpu")])
def test_torch_compile_fullgraph_forward_and_backward(backend, device, compiler):
    q, k, v, points = attention_inputs(Nq=16, Nk=10, heads=2, d=8, G=2, device=device, special_fraction=0)

    def layer(q, k, v, points):
        sampled = lc4_kernels.trilinear_sample(k, points.repeat_interleave(1, dim=2)[:, :, :1].expand(-1, -1, 2, -1),
                                               backend=backend)
        return lc4_kernels.tda_attention(q, k, v, points, backend=backend).sum() + sampled.sum()

    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, backend=compiler)
    eager_inputs = [t.clone().requires_grad_(True) for t in (q, k, v, points)]
    compiled_inputs = [t.clone().requires_grad_(True) for t in (q, k, v, points)]
    expected = layer(*eager_inputs)
    expected.backward()
    actual = compiled(*compiled_inputs)
    actual.backward()
    torch.testing.assert_close(actual, expected)
    for a, e in zip(compiled_inputs, eager_inputs):
        torch.testing.assert_close(a.grad, e.grad)


def test_autocast_runs_in_low_precision_and_keeps_coordinates_float32():
    # value(x) = x - 100 makes a sample at x equal x - 100. bfloat16 coordinates would move
    # x = 100.3 to 100.5 and x = 101.7 to 101.5 (spacing 0.5 there), far beyond output rounding.
    W = 128
    ramp = (torch.arange(W, dtype=torch.float32) - 100).reshape(1, 1, 1, W, 1).expand(1, 2, 3, W, 1).contiguous()
    points = torch.tensor([[[100.3, 1.0, 0.5], [101.7, 0.0, 1.0]]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = lc4_kernels.trilinear_sample(ramp, points)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float().flatten(), torch.tensor([0.3, 1.7]), rtol=0, atol=1e-2)

    q, k, v, pts = attention_inputs(Nq=8, Nk=6, heads=2, d=8, special_fraction=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = "cpu" if "cpu" in lc4_kernels.available_backends() else "reference"
        assert lc4_kernels.backend_for("tda_attention", q, k, v, pts) == expected
        out = lc4_kernels.tda_attention(q, k, v, pts)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), lc4_kernels.tda_attention(q, k, v, pts), rtol=3e-2, atol=3e-2)


def test_autocast_casts_mixed_precision_inputs_first_and_leaves_float64_alone():
    q, k, v, pts = attention_inputs(Nq=8, Nk=6, heads=2, d=8, special_fraction=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        # As a native autocast op: float32 q with bfloat16 k, v runs in bfloat16.
        mixed = lc4_kernels.tda_attention(q, k.bfloat16(), v.bfloat16(), pts)
        assert mixed.dtype == torch.bfloat16
        torch.testing.assert_close(mixed, lc4_kernels.tda_attention(q, k, v, pts))
        # Autocast never casts float64.
        double = [t.double() for t in (q, k, v, pts)]
        assert lc4_kernels.tda_attention(*double).dtype == torch.float64
        assert lc4_kernels.trilinear_sample(double[1], double[3]).dtype == torch.float64
    torch.testing.assert_close(lc4_kernels.tda_attention(*double), lc4_kernels.tda_attention(*double, backend="reference"))


def test_autocast_keeps_attention_coordinates_float32():
    # One key: the output is v sampled at its point. v(x) = x - 100 in every channel, so the
    # output is x - 100; bfloat16 coordinates would move x = 100.3 to 100.5.
    W = 128
    ramp = (torch.arange(W, dtype=torch.float32) - 100).reshape(1, 1, 1, W, 1, 1).expand(1, 2, 3, W, 2, 8).contiguous()
    q = torch.randn(1, 4, 2, 8, generator=torch.Generator().manual_seed(0))
    points = torch.tensor([[[[100.3, 1.0, 0.5]]]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = lc4_kernels.tda_attention(q, torch.zeros_like(ramp), ramp, points)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), torch.full(out.shape, 0.3), rtol=0, atol=1e-2)
