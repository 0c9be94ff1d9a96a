"""The ops' forward-mode derivatives (``lc4_kernels.forward_mode``): the closed form of Eq. 3's
tangent over chunks of queries against central differences of the formula and against autograd's
forward mode through the reference; every backend's jvp over several ragged chunks (also in
float16/bfloat16, against the float64 reference); the chunk
setting's errors. (Eq. 2's tangent: tests/kernels/test_sample_derivatives.py.) (The memory: tests/kernels/test_memory.py.)"""
import itertools

import pytest
import torch
from torch import func

import lc4_kernels
from lc4_kernels import forward_mode, query_chunks, reference

from .cases import assert_close, attention_inputs, chunks_of_three_queries, compiled_backend_cases, sample_inputs

SCALE = 0.4


def _tangents(inputs, seed=10):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(t.shape, generator=g, dtype=torch.float64).to(t) for t in inputs)


def _reference(q, k, v, points):
    return reference.tda_attention(q, k, v, points, SCALE)


@pytest.fixture
def small_chunks(monkeypatch):
    return lambda inputs: chunks_of_three_queries(monkeypatch, inputs)


def test_closed_form_equals_central_differences_of_eq3(small_chunks):
    q, k, v, _ = attention_inputs(Nq=10, Nk=7, heads=2, d=5, G=1, T=3, H=4, W=5, dtype=torch.float64)
    # Points away from the voxel centres and the border, where Eq. 2 has kinks that central
    # differences would straddle: inside the volume and in the zero-padded band around it.
    g = torch.Generator().manual_seed(2)
    points = torch.rand(1, 7, 1, 3, generator=g, dtype=torch.float64) * torch.tensor([5.8, 4.8, 3.8]) - 0.9
    points = torch.where((points - points.round()).abs() < 0.05, points + 0.1, points)
    inputs = (q, k, v, points)
    small_chunks(inputs)
    tangents = _tangents(inputs)
    eps = 1e-6
    plus = _reference(*(x + eps * t for x, t in zip(inputs, tangents)))
    minus = _reference(*(x - eps * t for x, t in zip(inputs, tangents)))
    expected = (plus - minus) / (2 * eps)
    actual = forward_mode.attention_jvp(*inputs, SCALE, tangents)
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("with_tangent", list(itertools.product([True, False], repeat=4)),
                         ids=lambda flags: "".join("qkvp"[i] if f else "-" for i, f in enumerate(flags)))
def test_closed_form_equals_forward_mode_through_the_reference(small_chunks, with_tangent):
    # Grouped heads (4 heads over 2 point groups), NaN, infinite and far points among them.
    inputs = attention_inputs(B=2, Nq=11, Nk=7, heads=4, d=3, G=2, T=2, H=3, W=4, dtype=torch.float64,
                              special_fraction=0.2)
    small_chunks(inputs)
    tangents = tuple(t if flag else None for t, flag in zip(_tangents(inputs), with_tangent))
    expected_tangents = tuple(torch.zeros_like(x) if t is None else t for x, t in zip(inputs, tangents))
    _, expected = func.jvp(_reference, inputs, expected_tangents)
    actual = forward_mode.attention_jvp(*inputs, SCALE, tangents)
    assert actual.dtype == inputs[0].dtype and torch.isfinite(actual).all()
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)


def test_half_precision_queries_get_a_tangent_of_their_dtype(small_chunks):
    inputs = attention_inputs(Nq=10, Nk=7, heads=2, d=4, G=1, dtype=torch.bfloat16, special_fraction=0)
    small_chunks(inputs)
    tangents = _tangents(inputs)
    actual = forward_mode.attention_jvp(*inputs, SCALE, tangents)
    wide = [x.double() for x in inputs]
    _, expected = func.jvp(_reference, tuple(wide), tuple(t.double() for t in tangents))
    assert actual.dtype == torch.bfloat16
    assert_close(actual, expected.to(torch.bfloat16), torch.bfloat16, "bfloat16 jvp")


def test_no_queries_give_an_empty_tangent():
    q, k, v, points = attention_inputs(Nq=0, Nk=4, heads=2, d=3, G=1)
    tangent = forward_mode.attention_jvp(q, k, v, points, SCALE, (torch.zeros_like(q), k, v, points))
    assert tangent.shape == q.shape


@pytest.mark.parametrize("text", ["0", "-5", "many", "1.5"])
def test_a_bad_chunk_setting_is_named(monkeypatch, text):
    monkeypatch.setenv(query_chunks.CHUNK_ENV, text)
    with pytest.raises(ValueError, match=query_chunks.CHUNK_ENV):
        query_chunks.chunk_elements()


def test_the_default_chunks_are_the_devices(monkeypatch):
    monkeypatch.delenv(query_chunks.CHUNK_ENV, raising=False)
    assert query_chunks.chunk_elements("cpu") == 1 << 20
    assert query_chunks.chunk_elements(torch.device("cuda", 0)) == 1 << 22
    monkeypatch.setenv(query_chunks.CHUNK_ENV, "4096")
    assert query_chunks.chunk_elements("cuda") == query_chunks.chunk_elements("cpu") == 4096


@pytest.mark.parametrize("backend,device", compiled_backend_cases(torch.float32))
def test_every_backend_jvp_over_ragged_chunks_equals_the_reference(small_chunks, backend, device):
    inputs = attention_inputs(B=2, Nq=11, Nk=7, heads=2, d=4, G=1, T=2, H=3, W=4, device=device)
    small_chunks(inputs)
    tangents = _tangents(inputs)

    def run(name):
        def op(q, k, v, points):
            return lc4_kernels.tda_attention(q, k, v, points, SCALE, backend=name)
        return func.jvp(op, inputs, tangents)

    (out, tangent), (expected_out, expected_tangent) = run(backend), run("reference")
    assert_close(out, expected_out, torch.float32, f"{backend} jvp output")
    assert_close(tangent, expected_tangent, torch.float32, f"{backend} jvp tangent")


HALF_CASES = [(backend, device, dtype) for dtype in (torch.float16, torch.bfloat16)
              for backend, device in compiled_backend_cases(dtype, 4)]


@pytest.mark.parametrize("backend,device,dtype", HALF_CASES, ids=[f"{b}-{d}-{t}" for b, d, t in HALF_CASES])
def test_every_backend_half_precision_jvp_equals_the_float64_reference(small_chunks, backend, device, dtype):
    inputs = attention_inputs(B=2, Nq=11, Nk=7, heads=2, d=4, G=1, T=2, H=3, W=4, dtype=dtype, device=device)
    small_chunks(inputs)
    tangents = _tangents(inputs)
    out, tangent = func.jvp(lambda q, k, v, points: lc4_kernels.tda_attention(q, k, v, points, SCALE, backend=backend),
                            inputs, tangents)
    expected_out, expected_tangent = func.jvp(_reference, tuple(t.double() for t in inputs),
                                              tuple(t.double() for t in tangents))
    assert out.dtype == tangent.dtype == dtype
    assert_close(out, expected_out.to(dtype), dtype, f"{backend} {dtype} jvp output")
    assert_close(tangent, expected_tangent.to(dtype), dtype, f"{backend} {dtype} jvp tangent")


NESTED = {
    # vmap over the chunked jvp: the chunk buffers are batched
    "jacfwd": lambda op, inputs: func.jacfwd(op, argnums=tuple(range(len(inputs))))(*inputs),
    # forward over forward: the inner jvp rule differentiated by the outer level
    "jvp_of_jvp": lambda op, inputs: func.jvp(
        lambda x: func.jvp(lambda y: op(y, *inputs[1:]).square().sum(), (x,), (_tangents(inputs)[0],))[1],
        (inputs[0],), (_tangents(inputs, seed=20)[0],)),
    "hessian_by_jacfwd_of_jacfwd": lambda op, inputs: func.jacfwd(func.jacfwd(
        lambda x: op(x, *inputs[1:]).square().sum()))(inputs[0]),
    "hessian_of_points_by_jacfwd_of_jacfwd": lambda op, inputs: func.jacfwd(func.jacfwd(
        lambda p: op(*inputs[:-1], p).square().sum()))(inputs[-1]),
}


def _op(op_name, backend):
    if op_name == "sample":
        return lambda value, points: lc4_kernels.trilinear_sample(value, points, backend=backend)
    return lambda q, k, v, points: lc4_kernels.tda_attention(q, k, v, points, SCALE, backend=backend)


@pytest.mark.parametrize("op_name", ["attention", "sample"])
@pytest.mark.parametrize("name", sorted(NESTED))
@pytest.mark.parametrize("backend,device", compiled_backend_cases(torch.float32))
def test_nested_forward_mode_equals_the_reference(small_chunks, backend, device, name, op_name):
    if op_name == "attention":  # over ragged chunks of queries
        inputs = attention_inputs(B=1, Nq=7, Nk=5, heads=2, d=3, G=1, T=2, H=3, W=3, device=device,
                                  special_fraction=0)
        small_chunks(inputs)
    else:
        inputs = sample_inputs(B=1, P=5, G=1, C=2, T=2, H=3, W=3, device=device, special_fraction=0)
    actual, expected = (NESTED[name](_op(op_name, b), inputs) for b in (backend, "reference"))
    for a, e in zip(torch.utils._pytree.tree_leaves(actual), torch.utils._pytree.tree_leaves(expected)):
        assert_close(a, e, torch.float32, f"{backend} {name} {op_name}")
