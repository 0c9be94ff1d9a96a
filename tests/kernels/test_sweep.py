"""A randomized sweep of shapes and coordinates: every compiled backend against the reference."""
import pytest
import torch

import lc4_kernels

from .cases import TOLERANCES, assert_close, compiled_backend_cases, random_points, run_with_grads

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies

CASES = compiled_backend_cases(torch.float32)
pytestmark = pytest.mark.skipif(not CASES, reason="no compiled backend to compare with the reference")


@st.composite
def attention_problems(draw):
    heads = draw(st.sampled_from([1, 2, 3, 4, 6]))
    G = draw(st.sampled_from([g for g in range(1, heads + 1) if heads % g == 0]))
    return dict(
        B=draw(st.integers(1, 2)), Nq=draw(st.integers(0, 70)), Nk=draw(st.integers(1, 70)), heads=heads, G=G,
        d=draw(st.sampled_from([1, 3, 8, 16, 40])), T=draw(st.integers(1, 4)), H=draw(st.integers(1, 6)),
        W=draw(st.integers(1, 6)), seed=draw(st.integers(0, 2 ** 31 - 1)),
        special=draw(st.sampled_from([0.0, 0.1])), edge=draw(st.sampled_from([0.0, 0.5, 1.0])),
        dtype=draw(st.sampled_from([torch.float32, torch.float64])))


@hypothesis.settings(max_examples=60, deadline=None, derandomize=True)
@hypothesis.given(problem=attention_problems())
def test_sweep_against_reference(problem):
    p = problem
    gen = torch.Generator().manual_seed(p["seed"])
    q = torch.randn(p["B"], p["Nq"], p["heads"], p["d"], generator=gen, dtype=torch.float64)
    k = torch.randn(p["B"], p["T"], p["H"], p["W"], p["heads"], p["d"], generator=gen, dtype=torch.float64)
    v = torch.randn(k.shape, generator=gen, dtype=torch.float64)
    points = random_points(p["B"], p["Nk"], p["G"], p["T"], p["H"], p["W"], dtype=torch.float64, generator=gen,
                           edge_fraction=p["edge"], special_fraction=p["special"])
    dtype = p["dtype"]
    inputs = [t.to(dtype) for t in (q, k, v)] + [points.to(dtype)]
    ref_out, ref_grads = run_with_grads(
        lambda *a: lc4_kernels.tda_attention(*a, backend="reference"), [t.double() for t in inputs])
    for backend, device in CASES:
        if (backend, device) not in compiled_backend_cases(dtype, p["d"]):
            continue
        out, grads = run_with_grads(lambda *a: lc4_kernels.tda_attention(*a, backend=backend),
                                    [t.to(device) for t in inputs])
        assert_close(out.cpu(), ref_out.to(dtype), dtype, f"{backend} out")
        for name, g, ref_g in zip(("dq", "dk", "dv", "dpoints"), grads, ref_grads):
            assert_close(g.cpu(), ref_g.to(dtype), dtype, f"{backend} {name}")
        value = k[..., : p["G"], :].to(dtype)
        sample_ref = lc4_kernels.trilinear_sample(value.double(), points, backend="reference")
        sample = lc4_kernels.trilinear_sample(value.to(device), points.to(dtype).to(device), backend=backend)
        assert_close(sample.cpu(), sample_ref.to(dtype), dtype, f"{backend} sample")
    assert dtype in TOLERANCES
