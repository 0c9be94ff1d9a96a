"""The cpu backend's bfloat16 forward on its two tile paths: bfloat16 products on the CPU's
matrix units (torch's oneDNN brgemm microkernel, where the CPU and torch have it) and float32
products through the BLAS (LC4_CPU_BRGEMM=0, and every CPU without them), against the float64
reference."""
import pytest
import torch

import lc4_kernels

from .cases import assert_close, attention_inputs, run_with_grads

pytestmark = pytest.mark.skipif("cpu" not in lc4_kernels.available_backends(),
                                reason=f"compiled extension missing: {lc4_kernels.extension_error}")

SHAPES = [
    dict(Nq=37, Nk=45, heads=4, d=40, G=2, T=2, H=5, W=6),     # odd Nk: the packed values get a zero row
    dict(Nq=300, Nk=517, heads=2, d=80, G=1, T=2, H=6, W=7),   # two query and two key blocks; d in two chunks
    dict(Nq=19, Nk=23, heads=2, d=3, G=2, T=1),                # odd d: the packed keys get a zero row
    dict(Nq=9, Nk=130, heads=2, d=160, G=1, H=1, W=9),         # d = 160: three column chunks
    dict(Nq=5, Nk=1, heads=1, d=1, G=1, T=1, H=1, W=1),        # one key, one channel
]


def _attention(q, k, v, points):
    return lc4_kernels.tda_attention(q, k, v, points, backend="cpu")


def _matrix_tiles():
    from lc4_kernels import _C
    return _C.cpu_bf16_matrix_tiles()


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
@pytest.mark.parametrize("brgemm", ["1", "0"])
def test_bfloat16_forward_on_either_tile_path_matches_reference(monkeypatch, shape, brgemm):
    monkeypatch.setenv("LC4_CPU_BRGEMM", brgemm)
    inputs = attention_inputs(**shape, dtype=torch.bfloat16)
    with torch.no_grad():
        inputs[3][0, 0, 0] = float("nan")  # a point that samples zeros
    out, grads = run_with_grads(_attention, inputs)
    ref_out, ref_grads = run_with_grads(lambda *t: lc4_kernels.tda_attention(*t, backend="reference"),
                                        [t.double() for t in inputs])
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert_close(out, ref_out.to(torch.bfloat16), torch.bfloat16, f"out, LC4_CPU_BRGEMM={brgemm}")
    for name, g, ref_g in zip(("dq", "dk", "dv", "dpoints"), grads, ref_grads):
        assert_close(g, ref_g.to(g.dtype), torch.bfloat16, f"{name}, LC4_CPU_BRGEMM={brgemm}")


@pytest.mark.parametrize("scale", [-0.3, 0.0])
def test_a_scale_that_is_not_positive_is_applied_before_the_softmax(monkeypatch, scale):
    # A positive scale goes into the softmax's exponent on the matrix-unit path; others are
    # applied to the scores first.
    inputs = attention_inputs(Nq=20, Nk=33, heads=2, d=8, G=1, dtype=torch.bfloat16, special_fraction=0)
    expected = lc4_kernels.tda_attention(*[t.double() for t in inputs], scale, backend="reference")
    for brgemm in ("1", "0"):
        monkeypatch.setenv("LC4_CPU_BRGEMM", brgemm)
        out = lc4_kernels.tda_attention(*inputs, scale, backend="cpu")
        assert_close(out, expected.to(torch.bfloat16), torch.bfloat16, f"scale {scale}, LC4_CPU_BRGEMM={brgemm}")


def test_the_setting_turns_the_matrix_units_off_and_they_change_the_rounding(monkeypatch):
    monkeypatch.setenv("LC4_CPU_BRGEMM", "0")
    assert not _matrix_tiles()
    monkeypatch.setenv("LC4_CPU_BRGEMM", "1")
    if not _matrix_tiles():
        pytest.skip("no bfloat16 matrix units (or no oneDNN microkernel in this torch) here")
    inputs = attention_inputs(Nq=40, Nk=50, heads=2, d=16, G=1, dtype=torch.bfloat16, special_fraction=0)
    on = _attention(*inputs)
    monkeypatch.setenv("LC4_CPU_BRGEMM", "0")
    off = _attention(*inputs)
    # The matrix units multiply k~, v~ and the probabilities rounded to bfloat16: other bits.
    assert not torch.equal(on, off)
