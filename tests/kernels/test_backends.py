"""Every compiled backend against the reference path: forward, all four gradients, float64
gradcheck, edge coordinates, determinism, empty queries, strided inputs."""
import math

import pytest
import torch

import lc4_kernels

from .cases import (TOLERANCES, assert_close, attention_inputs, compiled_backend_cases, deterministic_algorithms,
                    run_with_grads, sample_inputs)

BACKENDS_F32 = compiled_backend_cases(torch.float32)
BACKENDS_F64 = compiled_backend_cases(torch.float64)
# Each test below skips the dtypes a backend does not declare; half precision is compared with
# its own tolerances against the float64 reference on the same (rounded) inputs.
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
ATTENTION_SHAPES = [
    dict(),                                                    # Nq, Nk not multiples of any block
    dict(B=2, Nq=130, Nk=300, heads=2, d=40, G=1),
    dict(Nq=257, Nk=517, heads=8, d=64, G=8, T=2, H=6, W=7),  # G = heads, Nk past a block of 512
    dict(Nq=19, Nk=23, heads=2, d=80, G=2, T=1),               # single frame
    dict(Nq=19, Nk=23, heads=2, d=160, G=1, H=1, W=9),         # a 1-pixel-high volume
    dict(Nq=5, Nk=7, heads=3, d=8, G=3, T=1, H=1, W=1),        # a single voxel
]
SAMPLE_SHAPES = [dict(), dict(B=1, P=300, G=1, C=40, T=8, H=9, W=7), dict(T=1, H=1, W=1, C=3),
                 dict(B=1, P=70, G=4, C=160, T=2, H=3, W=4)]


def _ids(shapes):
    return [",".join(f"{k}={v}" for k, v in s.items()) or "default" for s in shapes]


def _attention(backend):
    return lambda q, k, v, p: lc4_kernels.tda_attention(q, k, v, p, backend=backend)


def _sample(backend):
    return lambda value, p: lc4_kernels.trilinear_sample(value, p, backend=backend)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", ATTENTION_SHAPES, ids=_ids(ATTENTION_SHAPES))
@pytest.mark.parametrize("backend,device", BACKENDS_F32)
def test_attention_matches_reference(backend, device, shape, dtype):
    if (backend, device) not in compiled_backend_cases(dtype, shape.get("d", 8)):
        pytest.skip(f"{backend} does not run {dtype} on {device}")
    inputs = attention_inputs(**shape, dtype=dtype, device=device)
    out, grads = run_with_grads(_attention(backend), inputs)
    # The oracle runs in float64 on the same values.
    ref_out, ref_grads = run_with_grads(_attention("reference"), [t.double() for t in inputs])
    assert torch.isfinite(out).all()
    assert_close(out, ref_out.to(out.dtype), dtype, "out")
    for name, g, ref_g in zip(("dq", "dk", "dv", "dpoints"), grads, ref_grads):
        assert_close(g, ref_g.to(g.dtype), dtype, name)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SAMPLE_SHAPES, ids=_ids(SAMPLE_SHAPES))
@pytest.mark.parametrize("backend,device", BACKENDS_F32)
def test_sample_matches_reference(backend, device, shape, dtype):
    if (backend, device) not in compiled_backend_cases(dtype):
        pytest.skip(f"{backend} does not run {dtype} on {device}")
    inputs = sample_inputs(**shape, dtype=dtype, device=device)
    out, grads = run_with_grads(_sample(backend), inputs)
    ref_out, ref_grads = run_with_grads(_sample("reference"), [t.double() for t in inputs])
    assert_close(out, ref_out.to(out.dtype), dtype, "out")
    for name, g, ref_g in zip(("dvalue", "dpoints"), grads, ref_grads):
        assert_close(g, ref_g.to(g.dtype), dtype, name)


@pytest.mark.parametrize("backend,device", BACKENDS_F64)
def test_gradcheck_float64(backend, device):
    # Points off the integer kinks (finite differences cannot cross them) and inside or partly outside.
    q, k, v, points = attention_inputs(Nq=6, Nk=7, heads=2, d=3, G=2, T=2, H=3, W=3, dtype=torch.float64,
                                       device=device, special_fraction=0)
    points = points.round() + 0.3141
    for t in (q, k, v, points):
        t.requires_grad_(True)
    assert torch.autograd.gradcheck(_attention(backend), (q, k, v, points))
    value, sample_points = sample_inputs(B=1, P=9, G=2, C=3, dtype=torch.float64, device=device, special_fraction=0)
    sample_points = (sample_points.round() + 0.2718).requires_grad_(True)
    assert torch.autograd.gradcheck(_sample(backend), (value.requires_grad_(True), sample_points))


@pytest.mark.parametrize("backend,device", BACKENDS_F32)
def test_five_dim_sample_form(backend, device):
    value, points = sample_inputs(G=1, device=device)
    out = lc4_kernels.trilinear_sample(value[..., 0, :], points[:, :, 0], backend=backend)
    assert out.shape == (value.shape[0], points.shape[1], value.shape[-1])
    assert_close(out, lc4_kernels.trilinear_sample(value, points, backend="reference")[:, :, 0], torch.float32, "out")


@pytest.mark.parametrize("backend,device", BACKENDS_F32)
def test_non_finite_points_give_zero_samples_and_gradients(backend, device):
    q, k, v, points = attention_inputs(Nq=9, Nk=6, heads=2, d=8, G=1, device=device, special_fraction=0)
    points[0, 1, 0, 0] = float("nan")
    points[0, 2, 0, 1] = float("inf")
    points[0, 3, 0, 2] = -1e30
    points[0, 4, 0] = 1e30
    out, (dq, dk, dv, dpoints) = run_with_grads(_attention(backend), (q, k, v, points))
    for t in (out, dq, dk, dv, dpoints):
        assert torch.isfinite(t).all()
    assert (dpoints[0, 1:5] == 0).all()
    sampled = lc4_kernels.trilinear_sample(k[..., :1, :], points, backend=backend)
    assert (sampled[0, 1:5] == 0).all() and (sampled[0, 0] != 0).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend,device", BACKENDS_F32)
def test_backward_is_bitwise_deterministic_across_runs_and_thread_counts(backend, device, dtype):
    # In deterministic mode (as PyTorch defines it) every backend must give the same bits;
    # backends with a faster atomic path use it only outside this mode.
    if (backend, device) not in compiled_backend_cases(dtype, 40):
        pytest.skip(f"{backend} does not run {dtype} on {device}")
    inputs = attention_inputs(Nq=300, Nk=140, heads=2, d=40, G=1, dtype=dtype, device=device)
    threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    try:
        first = run_with_grads(_attention(backend), inputs)
        torch.set_num_threads(1)
        second = run_with_grads(_attention(backend), inputs)
        torch.set_num_threads(threads)
        third = run_with_grads(_attention(backend), inputs)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(False)
    for a, b, c in zip([first[0], *first[1]], [second[0], *second[1]], [third[0], *third[1]]):
        assert torch.equal(a, b) and torch.equal(a, c)


# Nq = 300: more than one block of queries, where the backward splits the queries into tasks.
EMPTY_ATTENTION_SHAPES = [dict(Nq=0), dict(B=0), dict(heads=0, G=1), dict(d=0), dict(B=0, Nq=300),
                          dict(heads=0, G=1, Nq=300), dict(d=0, Nq=300)]
EMPTY_SAMPLE_SHAPES = [dict(P=0), dict(B=0), dict(G=0), dict(C=0)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("shape", EMPTY_ATTENTION_SHAPES, ids=_ids(EMPTY_ATTENTION_SHAPES))
@pytest.mark.parametrize("backend,device", BACKENDS_F32)
def test_attention_with_an_empty_dimension(backend, device, shape, deterministic, dtype):
    # Every gradient an empty dimension leaves without contributions is zero, never uninitialised
    # memory, and no kernel is launched on an empty grid (a launch error on the device).
    if (backend, device) not in compiled_backend_cases(dtype, shape.get("d", 8)):
        pytest.skip(f"{backend} does not run {dtype} on {device}")
    inputs = attention_inputs(**shape, dtype=dtype, device=device)
    with deterministic_algorithms(deterministic):
        out, grads = run_with_grads(_attention(backend), inputs)
    ref_out, ref_grads = run_with_grads(_attention("reference"), inputs)
    assert out.shape == inputs[0].shape
    for got, expected, t in zip([out, *grads], [ref_out, *ref_grads], [inputs[0], *inputs]):
        assert got.shape == t.shape and torch.equal(got, expected)


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
@pytest.mark.parametrize("shape", EMPTY_SAMPLE_SHAPES, ids=_ids(EMPTY_SAMPLE_SHAPES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend,device", BACKENDS_F32)
def test_sample_with_an_empty_dimension(backend, device, shape, deterministic, dtype):
    if (backend, device) not in compiled_backend_cases(dtype):
        pytest.skip(f"{backend} does not run {dtype} on {device}")
    inputs = sample_inputs(**shape, dtype=dtype, device=device)
    with deterministic_algorithms(deterministic):
        out, grads = run_with_grads(_sample(backend), inputs)
    ref_out, ref_grads = run_with_grads(_sample("reference"), inputs)
    for got, expected in zip([out, *grads], [ref_out, *ref_grads]):
        assert got.shape == expected.shape and torch.equal(got, expected)


@pytest.mark.parametrize("backend,device", BACKENDS_F32)
def test_strided_inputs(backend, device):
    q, k, v, points = attention_inputs(Nq=20, Nk=9, heads=2, d=8, device=device)
    q_strided = q.transpose(1, 2).contiguous().transpose(1, 2)  # same values, other memory order
    k_strided = k[..., :].permute(0, 1, 3, 2, 4, 5).contiguous().permute(0, 1, 3, 2, 4, 5)
    expected = lc4_kernels.tda_attention(q, k, v, points, backend="reference")
    assert not q_strided.is_contiguous() and not k_strided.is_contiguous()
    assert_close(lc4_kernels.tda_attention(q_strided, k_strided, v, points, backend=backend), expected,
                 torch.float32, "out")
    # Rows of q at odd offsets (a slice of a wider tensor): no alignment for a kernel to assume.
    q_odd = torch.cat([q, torch.zeros_like(q[..., :1])], dim=-1)[..., :-1]
    assert q_odd.stride(2) == 9
    assert_close(lc4_kernels.tda_attention(q_odd, k, v, points, backend=backend), expected, torch.float32, "out")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("backend", sorted({name for name, device in BACKENDS_F32 if device == "cuda"}))
def test_inputs_on_another_gpu_than_the_current_one(backend):
    torch.cuda.set_device(0)
    inputs = attention_inputs(Nq=40, Nk=30, heads=2, d=16, device="cuda:1")
    expected_out, expected_grads = run_with_grads(_attention("reference"), inputs)
    out, grads = run_with_grads(_attention(backend), inputs)
    torch.cuda.synchronize("cuda:1")
    assert out.device == torch.device("cuda:1") and torch.cuda.current_device() == 0
    assert_close(out, expected_out, torch.float32, "out")
    for name, grad, expected in zip(("q", "k", "v", "points"), grads, expected_grads):
        assert grad.device == torch.device("cuda:1")
        assert_close(grad, expected, torch.float32, f"grad {name}")


def test_tolerance_table_covers_every_dtype_a_backend_declares():
    for name in lc4_kernels.available_backends():
        assert set(lc4_kernels.get_backend(name).dtypes) <= set(TOLERANCES)


def _other_memory_order(t: torch.Tensor, dim0: int, dim1: int) -> torch.Tensor:
    """t's values with dims dim0 and dim1 swapped in memory: not contiguous."""
    return t.transpose(dim0, dim1).contiguous().transpose(dim0, dim1)


@pytest.mark.parametrize("backend,device", BACKENDS_F32)
def test_strided_inputs_and_incoming_gradients(backend, device):
    # Every input and the gradient that comes back in another memory order, q with a last stride
    # that is not 1: the kernels see them only through the backend's glue, which must hand over
    # what they read (or read the strides). Forward and all gradients against the reference.
    q, k, v, points = attention_inputs(Nq=20, Nk=9, heads=2, d=8, G=2, device=device)
    strided = [_other_memory_order(q, 2, 3), _other_memory_order(k, 2, 3), _other_memory_order(v, 4, 5),
               _other_memory_order(points, 1, 2)]
    assert strided[0].stride(-1) != 1 and not any(t.is_contiguous() for t in strided)
    grad_out = _other_memory_order(torch.randn(q.shape, generator=torch.Generator().manual_seed(1)).to(device), 1, 2)
    leaves = [t.detach().requires_grad_(True) for t in strided]
    out = lc4_kernels.tda_attention(*leaves, backend=backend)
    grads = torch.autograd.grad(out, leaves, grad_out)
    ref_leaves = [t.double().contiguous().requires_grad_(True) for t in (q, k, v, points)]
    ref_out = lc4_kernels.tda_attention(*ref_leaves, backend="reference")
    ref_grads = torch.autograd.grad(ref_out, ref_leaves, grad_out.double())
    assert_close(out, ref_out.float(), torch.float32, "out")
    for name, g, ref_g in zip(("dq", "dk", "dv", "dpoints"), grads, ref_grads):
        assert_close(g, ref_g.float(), torch.float32, name)

    value, sample_points = sample_inputs(B=2, P=13, G=2, C=5, device=device)
    strided = [_other_memory_order(value, 2, 3), _other_memory_order(sample_points, 1, 2)]
    grad_out = _other_memory_order(torch.randn(2, 13, 2, 5, generator=torch.Generator().manual_seed(2)).to(device), 2, 3)
    assert not any(t.is_contiguous() for t in (*strided, grad_out))
    leaves = [t.detach().requires_grad_(True) for t in strided]
    out = lc4_kernels.trilinear_sample(*leaves, backend=backend)
    grads = torch.autograd.grad(out, leaves, grad_out)
    ref_leaves = [t.double().contiguous().requires_grad_(True) for t in (value, sample_points)]
    ref_out = lc4_kernels.trilinear_sample(*ref_leaves, backend="reference")
    ref_grads = torch.autograd.grad(ref_out, ref_leaves, grad_out.double())
    assert_close(out, ref_out.float(), torch.float32, "sample")
    for name, g, ref_g in zip(("dvalue", "dpoints"), grads, ref_grads):
        assert_close(g, ref_g.float(), torch.float32, name)


def _outside_corner_cases(T, H, W):
    """(batch, group, point) with one coordinate half a voxel outside the volume, below it in
    batch 1 and group 1, beyond it in batch 0 and group 0; the others between voxels."""
    cases = []
    for axis, size in enumerate((W, H, T)):
        for b, g, coord in ((1, 1, -0.5), (0, 0, size - 0.5)):
            point = [1.25, 1.5, 0.75]
            point[axis] = coord
            cases.append((b, g, point))
    return cases


def _in_volume_corners(point, T, H, W):
    axes = []
    for coord, size in zip(point, (W, H, T)):
        lower = math.floor(coord)
        axes.append([i for i in (lower, lower + 1) if 0 <= i < size])
    return [(t, y, x) for x in axes[0] for y in axes[1] for t in axes[2]]


@pytest.mark.parametrize("backend,device", BACKENDS_F32)
def test_corners_outside_the_volume_read_nothing(backend, device):
    # The address of an out-of-volume corner is a real voxel's: x = -1 on row y is x = W - 1 on
    # row y - 1, t = T in batch 0 is t = 0 in batch 1. Here every voxel but the point's own
    # in-volume corners is inf, so a kernel that read one, even with weight 0, would return NaN
    # where the reference's sample and gradients are finite. The other rows' points are NaN.
    B, T, H, W, G, C = 2, 3, 4, 5, 2, 3
    gen = torch.Generator().manual_seed(8)
    for b, g, point in _outside_corner_cases(T, H, W):
        value = torch.full((B, T, H, W, G, C), math.inf)
        for t, y, x in _in_volume_corners(point, T, H, W):
            value[b, t, y, x, g] = torch.randn(C, generator=gen)
        points = torch.full((B, 1, G, 3), math.nan)
        points[b, 0, g] = torch.tensor(point)
        inputs = (value.to(device), points.to(device))
        out, grads = run_with_grads(_sample(backend), inputs)
        ref_out, ref_grads = run_with_grads(_sample("reference"), [t.double() for t in inputs])
        assert torch.isfinite(ref_out).all() and all(torch.isfinite(r).all() for r in ref_grads)
        assert_close(out, ref_out.float(), torch.float32, f"sample at {point} in batch {b}, group {g}")
        for name, got, want in zip(("dvalue", "dpoints"), grads, ref_grads):
            assert_close(got, want.float(), torch.float32, f"{name} at {point} in batch {b}, group {g}")
