"""The CUDA kernels through their host emulation (cuda_emu), beyond the shared equivalence suite:
float16/bfloat16 (the WMMA forward and dk~/dv~ kernels) against the reference, every head-dim bucket, deterministic mode (identical
bits, no atomics) against the atomic path, registration (never chosen by auto)."""
import pytest
import torch

import lc4_kernels

from .cases import assert_close, attention_inputs, run_with_grads, sample_inputs

pytestmark = pytest.mark.skipif("cuda_emu" not in lc4_kernels.available_backends(),
                                reason=f"compiled extension missing: {lc4_kernels.extension_error}")


def attention(backend):
    return lambda q, k, v, p: lc4_kernels.tda_attention(q, k, v, p, backend=backend)


def sample(backend):
    return lambda value, p: lc4_kernels.trilinear_sample(value, p, backend=backend)


def check_attention(inputs, dtype):
    out, grads = run_with_grads(attention("cuda_emu"), inputs)
    ref_out, ref_grads = run_with_grads(attention("reference"), [t.double() for t in inputs])
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert_close(out, ref_out.to(dtype), dtype, "out")
    for name, g, ref_g in zip(("dq", "dk", "dv", "dpoints"), grads, ref_grads):
        assert_close(g, ref_g.to(g.dtype), dtype, name)


def test_registered_as_test_only_backend():
    backend = lc4_kernels.get_backend("cuda_emu")
    assert not backend.auto_selectable
    q, k, v, points = attention_inputs()
    assert lc4_kernels.backend_for("tda_attention", q, k, v, points) != "cuda_emu"
    assert lc4_kernels.backend_for("tda_attention", q, k, v, points, backend="cuda_emu") == "cuda_emu"
    assert "cuda" not in lc4_kernels.available_backends() or torch.cuda.is_available()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [dict(Nq=33, Nk=41, heads=2, d=40, G=1), dict(Nq=20, Nk=17, heads=4, d=80, G=2),
                                   dict(Nq=21, Nk=35, heads=2, d=160, G=1, T=2)], ids=["d40", "d80", "d160"])
def test_half_precision_matches_reference(dtype, shape):
    check_attention(attention_inputs(**shape, dtype=dtype), dtype)
    value, points = sample_inputs(C=24, dtype=dtype)
    out, grads = run_with_grads(sample("cuda_emu"), (value, points))
    ref_out, ref_grads = run_with_grads(sample("reference"), (value.double(), points.double()))
    assert_close(out, ref_out.to(dtype), dtype, "sample out")
    assert_close(grads[0], ref_grads[0].to(dtype), dtype, "dvalue")
    assert_close(grads[1], ref_grads[1].float(), dtype, "dpoints")


@pytest.mark.parametrize("d", [1, 64, 96, 256])
def test_half_precision_every_tile_shape_matches_reference(d):
    # The tensor-core kernels use 32-row tiles up to d = 64 and 16-row tiles above, with d padded
    # to whole 16-column WMMA tiles; Nq and Nk here end inside a tile of either size.
    check_attention(attention_inputs(Nq=37, Nk=45, heads=2, d=d, G=1, T=2, H=3, W=3, dtype=torch.float16),
                    torch.float16)


@pytest.mark.parametrize("d", [1, 32, 96, 128, 192, 250, 256])
def test_every_head_dim_bucket_matches_reference(d):
    check_attention(attention_inputs(Nq=9, Nk=11, heads=2, d=d, G=1, T=2, H=3, W=3), torch.float32)


def test_head_dims_above_256_are_refused():
    with pytest.raises(ValueError, match="head dim 264 > 256"):
        lc4_kernels.tda_attention(*attention_inputs(Nq=3, Nk=4, d=264), backend="cuda_emu")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_deterministic_mode_gives_identical_bits_and_agrees_with_the_atomic_path(dtype):
    attention_args = attention_inputs(Nq=70, Nk=90, heads=2, d=40, G=1, T=2, H=3, W=4, dtype=dtype)
    sample_args = sample_inputs(P=120, C=40, T=2, H=3, W=4, dtype=dtype)

    def both():
        return (run_with_grads(attention("cuda_emu"), attention_args), run_with_grads(sample("cuda_emu"), sample_args))

    atomic = both()
    torch.use_deterministic_algorithms(True)
    try:
        first, second = both(), both()
    finally:
        torch.use_deterministic_algorithms(False)
    for run_a, run_b, run_atomic in zip(first, second, atomic):
        for a, b, c in zip([run_a[0], *run_a[1]], [run_b[0], *run_b[1]], [run_atomic[0], *run_atomic[1]]):
            assert torch.equal(a, b)
            assert_close(a, c, dtype, "deterministic vs atomic")


def test_forced_sm70_paths_refuse_bfloat16_and_run_float16(monkeypatch):
    # LC4_CUDA_FORCE_SM70=1 puts a newer GPU, and the emulation, on the V100's paths: the backend
    # declines bfloat16 (Python side), the op itself refuses it (C++ side, which a GPU without
    # sm_80 reaches), and float16 runs as on the default paths.
    monkeypatch.setenv("LC4_CUDA_FORCE_SM70", "1")
    q, k, v, points = attention_inputs(Nq=20, Nk=9, heads=2, d=16, G=1)
    half = [t.bfloat16() for t in (q, k, v)]
    with pytest.raises(ValueError, match=r"backend 'cuda_emu' cannot run these inputs: bfloat16 is off on the sm_70"):
        lc4_kernels.tda_attention(*half, points, backend="cuda_emu")
    with pytest.raises(ValueError, match="runs bfloat16 on sm_80 and newer only"):
        torch.ops.lc4_emu.tda_attention(*half, points, 0.25)
    value, sample_points = sample_inputs()
    with pytest.raises(ValueError, match="runs bfloat16 on sm_80 and newer only"):
        torch.ops.lc4_emu.trilinear_sample(value.bfloat16(), sample_points)
    check_attention([t.half() for t in (q, k, v)] + [points], torch.float16)
    monkeypatch.delenv("LC4_CUDA_FORCE_SM70")
    assert torch.ops.lc4_emu.tda_attention(*half, points, 0.25)[0].dtype == torch.bfloat16
