"""Cases the shared equivalence suite (test_backends.py) leaves out, each a way a kernel can go
wrong while every other test passes (found by mutation testing of csrc/): work split by a
channel chunk and a group whose counts share a factor, a row of logits spread wider than the
float32 exp range, the compiled ops called directly with inputs the Python wrapper would have
normalised, and ties in the emulation's float16/bfloat16 rounding."""
import pytest
import torch

import lc4_kernels

from .cases import assert_close, attention_inputs, compiled_backend_cases, run_with_grads, sample_inputs

BACKENDS_F32 = compiled_backend_cases(torch.float32)


def _attention(backend, scale=None):
    return lambda q, k, v, p: lc4_kernels.tda_attention(q, k, v, p, scale, backend=backend)


def _sample(backend):
    return lambda value, p: lc4_kernels.trilinear_sample(value, p, backend=backend)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend,device", BACKENDS_F32)
def test_sample_gradient_with_channel_chunks_and_groups_sharing_a_factor(backend, device, dtype):
    # The cpu backward gives each (batch, group, 64-channel chunk) a task. With C = 160 and G = 4
    # (the wide case of test_backends.py) the 3 chunks and 4 groups are coprime, so a task index
    # decoded into the wrong (group, chunk) pair still visits every pair once; with 2 chunks and
    # 2 groups it does not.
    if (backend, device) not in compiled_backend_cases(dtype):
        pytest.skip(f"{backend} does not run {dtype} on {device}")
    inputs = sample_inputs(B=2, P=40, G=2, C=128, T=2, H=3, W=4, dtype=dtype, device=device)
    out, grads = run_with_grads(_sample(backend), inputs)
    ref_out, ref_grads = run_with_grads(_sample("reference"), [t.double() for t in inputs])
    assert_close(out, ref_out.to(dtype), dtype, "out")
    for name, g, ref_g in zip(("dvalue", "dpoints"), grads, ref_grads):
        assert_close(g, ref_g.to(g.dtype), dtype, name)


@pytest.mark.parametrize("backend,device", BACKENDS_F32)
def test_logits_spread_wider_than_the_float32_exp_range(backend, device):
    # With scale = 1, channel 0 of q is 25 and channel 0 of k is 0 on the row y = 0 of frame 0
    # and -5 elsewhere: keys 0-3 sit on that row (logits about 0), every other key in frame 1
    # (about -125). A softmax that subtracts less than the row's max (the cpu backend's
    # vectorised max taking a lane's minimum, say) pushes exp of the four largest logits past
    # float32's range, where they flush to one value; the other channels keep their true
    # probabilities apart.
    q, k, v, points = attention_inputs(Nq=19, Nk=40, heads=2, d=8, G=1, T=2, H=4, W=5, device=device,
                                       special_fraction=0)
    with torch.no_grad():
        q[..., 0] = 25.0
        k[..., 0] = -5.0
        k[:, 0, 0, :, :, 0] = 0.0
        points[..., 0].clamp_(0, 4)
        points[..., 1].clamp_(0, 3)
        points[..., 2] = 1.0
        points[:, :4, 0] = torch.tensor([[x, 0.0, 0.0] for x in range(4)])
    inputs = (q, k, v, points)
    ref_out, ref_grads = run_with_grads(_attention("reference", 1.0), [t.double() for t in inputs])
    out, grads = run_with_grads(_attention(backend, 1.0), inputs)
    assert torch.isfinite(out).all()
    assert_close(out, ref_out.float(), torch.float32, "out")
    for name, g, ref_g in zip(("dq", "dk", "dv", "dpoints"), grads, ref_grads):
        assert_close(g, ref_g.float(), torch.float32, name)


@pytest.mark.parametrize("points_dtype", [torch.float64, torch.float16])
@pytest.mark.parametrize("backend,device", BACKENDS_F32)
def test_points_in_another_dtype_than_q(backend, device, points_dtype):
    # The wrappers leave the points' dtype alone outside autocast: the compiled ops convert them
    # to the accumulation type themselves, and dpoints comes back in the points' dtype. The
    # coordinates are multiples of 1/8, which float16 holds exactly, so every dtype samples the
    # same places. dpoints is as precise as the narrower of float32 (the kernels' accumulation
    # type for float32 q) and the points' dtype.
    q, k, v, points = attention_inputs(Nq=21, Nk=13, heads=4, d=8, G=2, device=device, special_fraction=0)
    points = (points * 8).round() / 8
    inputs = (q, k, v, points.to(points_dtype))
    out, grads = run_with_grads(_attention(backend), inputs)
    ref_out, ref_grads = run_with_grads(_attention("reference"), [t.double() for t in inputs])
    assert grads[3].dtype == points_dtype
    assert_close(out, ref_out.float(), torch.float32, "out")
    for name, g, ref_g in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert_close(g, ref_g.float(), torch.float32, name)
    tolerance = torch.float32 if points_dtype == torch.float64 else points_dtype
    assert_close(grads[3].double(), ref_grads[3].to(points_dtype).double(), tolerance, "dpoints")
    value, sample_points = sample_inputs(device=device, special_fraction=0)
    sample_points = ((sample_points * 8).round() / 8).to(points_dtype)
    out, grads = run_with_grads(_sample(backend), (value, sample_points))
    ref_out, ref_grads = run_with_grads(_sample("reference"), (value.double(), sample_points.double()))
    assert grads[1].dtype == points_dtype
    assert_close(out, ref_out.float(), torch.float32, "sample out")
    assert_close(grads[0], ref_grads[0].float(), torch.float32, "dvalue")
    assert_close(grads[1].double(), ref_grads[1].to(points_dtype).double(), tolerance, "sample dpoints")


_OP_NAMESPACES = {"cpu": "lc4", "cuda_emu": "lc4_emu"}


@pytest.mark.parametrize("backend", [b for b, d in BACKENDS_F32 if b in _OP_NAMESPACES and d == "cpu"])
def test_compiled_ops_take_strided_tensors(backend):
    # The Python wrappers hand the ops contiguous tensors, but the registered ops are public
    # (torch.ops.lc4.*) and make their inputs contiguous themselves: called directly with views
    # of other strides they give the bits they give on contiguous copies.
    ops = getattr(torch.ops, _OP_NAMESPACES[backend])
    q, k, v, points = attention_inputs(Nq=20, Nk=9, heads=2, d=8, G=2, special_fraction=0)  # NaN != NaN
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(3))

    def strided(t):  # the same values with the last two axes stored the other way round
        s = t.transpose(-1, -2).contiguous().transpose(-1, -2)
        assert not s.is_contiguous() and torch.equal(s, t)
        return s

    with torch.inference_mode():
        out, lse = ops.tda_attention(q, k, v, points, 0.3)
        out_s, lse_s = ops.tda_attention(strided(q), strided(k), strided(v), strided(points), 0.3)
        assert torch.equal(out_s, out) and torch.equal(lse_s, lse)
        torch.use_deterministic_algorithms(True)
        try:
            grads = ops.tda_attention_backward(grad_out, q, k, v, points, out, lse, 0.3)
            grads_s = ops.tda_attention_backward(strided(grad_out), strided(q), strided(k), strided(v),
                                                 strided(points), strided(out), lse, 0.3)
        finally:
            torch.use_deterministic_algorithms(False)
        for name, a, b in zip(("dq", "dk", "dv", "dpoints"), grads_s, grads):
            assert torch.equal(a, b), name
        value, sample_points = sample_inputs(special_fraction=0)
        sampled = ops.trilinear_sample(value, sample_points)
        assert torch.equal(ops.trilinear_sample(strided(value), strided(sample_points)), sampled)


@pytest.mark.parametrize("backend", [b for b, d in BACKENDS_F32 if b in _OP_NAMESPACES and d == "cpu"])
def test_compiled_ops_check_shapes_themselves(backend):
    # The same ValueErrors as the Python wrappers (test_errors.py), from the ops called directly.
    ops = getattr(torch.ops, _OP_NAMESPACES[backend])
    q, k, v, points = attention_inputs(Nq=5, Nk=4, heads=4, d=8, G=2, special_fraction=0)
    cases = [((q, k, v[:, :, :, :-1], points), "v must have the shape of k"),
             ((q, k[..., :-1], v[..., :-1], points), r"k must be \(B, T, H, W, heads, d\)"),
             ((q, k, v, points[:, :0]), "Nk > 0"),
             ((q, k, v.double(), points), "q, k and v must share one dtype")]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            ops.tda_attention(*args, 1.0)
    value, sample_points = sample_inputs(G=2)
    with pytest.raises(ValueError, match=r"points must be \(B, P, G, 3\)"):
        ops.trilinear_sample(value, sample_points[:, :, :1])


@pytest.mark.skipif("cuda_emu" not in lc4_kernels.available_backends(), reason="cuda_emu backend not built")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_emulated_half_conversions_round_ties_to_even_as_torch_does(dtype):
    # The emulation's __half and __nv_bfloat16 must round as the GPU and torch do. Sampling
    # halfway between two neighbouring values a < b of the dtype gives (a + b) / 2, exact in
    # float32 and a tie of the dtype, so the output is the float32 midpoint rounded once by the
    # emulation: it must be what torch rounds it to, bit for bit (ties to even). Subnormals,
    # normals and both signs; the tolerance-based tests cannot see a tie rounded the wrong way.
    g = torch.Generator().manual_seed(0)
    last_finite = 0x7bff if dtype == torch.float16 else 0x7f7f
    bits = torch.randint(0, last_finite, (512,), generator=g, dtype=torch.int32)
    sign = (torch.rand(512, generator=g) < 0.5).to(torch.int32) * 0x8000
    lower = (bits | sign).to(torch.int16).view(dtype)
    upper = ((bits + 1) | sign).to(torch.int16).view(dtype)  # the neighbour away from zero
    value = torch.stack([lower, upper]).reshape(1, 1, 1, 2, 1, -1)  # (B, T, H, W = 2, G, C)
    points = torch.tensor([[[[0.5, 0.0, 0.0]]]])
    out = lc4_kernels.trilinear_sample(value, points, backend="cuda_emu")
    expected = (lower.float() * 0.5 + upper.float() * 0.5).to(dtype)  # halves first: a + b may overflow
    assert torch.equal(out.reshape(-1).view(torch.int16), expected.view(torch.int16))
