"""Derivatives of tda_attention's backward (``lc4_kernels.second_order``) over chunks of queries:
the attention stage's closed forms (backward, its vjp and jvp) against central differences and
autograd through the reference; the chunked vjp and jvp of the backward against those of the whole backward through
the reference formula, and every backend's second derivatives (a gradient penalty under
create_graph, forward-over-reverse, a Hessian) over several ragged chunks against the reference
backend's, and in float16/bfloat16 against the float64 reference. (The memory:
tests/kernels/test_memory.py.)"""
import pytest
import torch
from torch import func

import lc4_kernels
from lc4_kernels import reference, second_order

from .cases import assert_close, attention_inputs, chunks_of_three_queries, compiled_backend_cases, jvp_by_two_vjps

SCALE = 0.4


def _inputs(device="cpu", dtype=torch.float64, special_fraction=0.2):
    # Grouped heads (4 heads over 2 point groups); NaN, infinite and far points among them.
    return attention_inputs(B=2, Nq=11, Nk=7, heads=4, d=3, G=2, T=2, H=3, W=4, dtype=dtype, device=device,
                            special_fraction=special_fraction)


def _random_like(tensors, seed):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(t.shape, generator=g, dtype=torch.float64).to(t) for t in tensors)


def _whole_backward(grad_out, q, k, v, points):
    return func.vjp(lambda *t: reference.tda_attention(*t, SCALE), q, k, v, points)[1](grad_out)


def _sampled(seed=5, num_queries=6, num_keys=5, heads=3, dim=4):
    g = torch.Generator().manual_seed(seed)
    shapes = [(2, num_queries, heads, dim), (2, num_queries, heads, dim), (2, num_keys, heads, dim), (2, num_keys, heads, dim)]
    return tuple(torch.randn(shape, generator=g, dtype=torch.float64) for shape in shapes)  # dO, q, K, V


def test_attention_stage_closed_forms_equal_central_differences():
    """Eq. 3's backward on sampled keys against differences of the formula, and its vjp
    against differences of the backward: d/de <backward(x + e t), c> = <t, vjp(c)>."""
    grad_out, q, keys, values = primals = _sampled()
    eps = 1e-6
    t_q, t_keys, t_values = _random_like((q, keys, values), 6)

    def attention(step):
        out = reference.attention_on_sampled(q + step * t_q, keys + step * t_keys, values + step * t_values, SCALE)
        return (out * grad_out).sum()

    backward = second_order.attention_on_sampled_backward(*primals, SCALE)
    torch.testing.assert_close(sum((g * t).sum() for g, t in zip(backward, (t_q, t_keys, t_values))),
                               (attention(eps) - attention(-eps)) / (2 * eps), rtol=1e-7, atol=1e-8)

    tangents = _random_like(primals, 7)
    cotangents = _random_like((q, keys, values), 8)

    def paired(step):
        moved = [x + step * t for x, t in zip(primals, tangents)]
        return sum((g * c).sum() for g, c in zip(second_order.attention_on_sampled_backward(*moved, SCALE), cotangents))

    expected = (paired(eps) - paired(-eps)) / (2 * eps)
    _, vjp = second_order.attention_on_sampled_backward_vjp(*primals, SCALE, cotangents)
    torch.testing.assert_close(sum((g * t).sum() for g, t in zip(vjp, tangents)), expected, rtol=1e-6, atol=1e-7)
    _, jvp = second_order.attention_on_sampled_backward_jvp(*primals, SCALE, tangents)
    torch.testing.assert_close(sum((g * c).sum() for g, c in zip(jvp, cotangents)), expected, rtol=1e-6, atol=1e-7)


def test_attention_stage_closed_forms_equal_autograd_through_the_reference():
    grad_out, q, keys, values = primals = _sampled()

    def through_reference(grad_out, q, keys, values):
        return func.vjp(lambda *t: reference.attention_on_sampled(*t, SCALE), q, keys, values)[1](grad_out)

    for a, e in zip(second_order.attention_on_sampled_backward(*primals, SCALE), through_reference(*primals)):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)
    cotangents = _random_like((q, keys, values), 8)
    expected = func.vjp(through_reference, *primals)[1](cotangents)
    backward, actual = second_order.attention_on_sampled_backward_vjp(*primals, SCALE, cotangents)
    for a, e in zip(backward, through_reference(*primals)):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)
    for a, e, name in zip(actual, expected, ["grad_out", "q", "keys", "values"]):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12, msg=name)
    tangents = _random_like(primals, 9)
    backward, tangent = second_order.attention_on_sampled_backward_jvp(*primals, SCALE, tangents)
    for a, e in zip(backward, through_reference(*primals)):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)
    for a, e, name in zip(tangent, jvp_by_two_vjps(through_reference, primals, tangents), ["dq", "dK", "dV"]):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12, msg=name)


def test_chunked_vjp_of_the_backward_equals_the_whole_backwards(monkeypatch):
    q, k, v, points = inputs = _inputs()
    chunks_of_three_queries(monkeypatch, inputs)
    primals = (*_random_like([q], 1), q, k, v, points)
    cotangents = _random_like([q, k, v, points], 2)
    expected = func.vjp(_whole_backward, *primals)[1](cotangents)
    actual = second_order.attention_backward_vjp(*primals, SCALE, cotangents)
    assert len(actual) == 5
    for a, e, name in zip(actual, expected, ["grad_out", "q", "k", "v", "points"]):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("missing", [None, 0, 1, 4])
def test_chunked_jvp_of_the_backward_equals_the_whole_backwards(monkeypatch, missing):
    q, k, v, points = inputs = _inputs()
    chunks_of_three_queries(monkeypatch, inputs)
    primals = (*_random_like([q], 1), q, k, v, points)
    tangents = list(_random_like(primals, 3))
    if missing is not None:
        tangents[missing] = None
    _, expected = func.jvp(_whole_backward, primals,
                           tuple(torch.zeros_like(p) if t is None else t for p, t in zip(primals, tangents)))
    actual = second_order.attention_backward_jvp(*primals, SCALE, tuple(tangents))
    assert len(actual) == 4
    for a, e, name in zip(actual, expected, ["dq", "dk", "dv", "dpoints"]):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12, msg=name)


def _gradient_penalty(op, inputs):
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    weight = _random_like([inputs[0]], 5)[0]
    grads = torch.autograd.grad((op(*leaves) * weight).sum(), leaves, create_graph=True)
    return torch.autograd.grad(sum(g.square().sum() for g in grads), leaves)


def _forward_over_reverse(op, inputs):
    import torch.autograd.forward_ad as fwAD

    weight = _random_like([inputs[0]], 5)[0]
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    with fwAD.dual_level():
        duals = [fwAD.make_dual(t, d) for t, d in zip(leaves, _random_like(inputs, 6))]
        grads = torch.autograd.grad((op(*duals) * weight).sum(), duals)
        return [fwAD.unpack_dual(g).tangent for g in grads]


def _hessian_of_queries(op, inputs):
    q, k, v, points = inputs
    weight = _random_like([q], 5)[0]
    return func.hessian(lambda x: (op(x, k, v, points) * weight).sum() + op(x, k, v, points).square().sum())(q)


def _third_order(op, inputs):
    """The gradient of a gradient penalty's gradient norm: the chunked second derivatives
    differentiated once more."""
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    weight = _random_like([inputs[0]], 5)[0]
    grads = torch.autograd.grad((op(*leaves) * weight).sum(), leaves, create_graph=True)
    second = torch.autograd.grad(sum(g.square().sum() for g in grads), leaves, create_graph=True)
    return torch.autograd.grad(sum(g.square().sum() for g in second), leaves)


SECOND_ORDER = {"gradient_penalty": _gradient_penalty, "forward_over_reverse": _forward_over_reverse,
                "hessian_of_queries": _hessian_of_queries, "third_order": _third_order}


@pytest.mark.parametrize("name", sorted(SECOND_ORDER))
@pytest.mark.parametrize("backend,device", compiled_backend_cases(torch.float32))
def test_every_backend_second_order_over_ragged_chunks_equals_the_reference(monkeypatch, backend, device, name):
    inputs = attention_inputs(B=1, Nq=7, Nk=5, heads=2, d=3, G=1, T=2, H=3, W=3, device=device, special_fraction=0)
    chunks_of_three_queries(monkeypatch, inputs)

    def op(backend_name):
        return lambda q, k, v, points: lc4_kernels.tda_attention(q, k, v, points, SCALE, backend=backend_name)

    actual, expected = (SECOND_ORDER[name](op(b), inputs) for b in (backend, "reference"))
    for a, e in zip(torch.utils._pytree.tree_leaves(actual), torch.utils._pytree.tree_leaves(expected)):
        assert_close(a, e, torch.float32, f"{backend} {name}")


HALF_CASES = [(backend, device, dtype) for dtype in (torch.float16, torch.bfloat16)
              for backend, device in compiled_backend_cases(dtype, 3)]


@pytest.mark.parametrize("name", ["gradient_penalty", "forward_over_reverse"])
@pytest.mark.parametrize("backend,device,dtype", HALF_CASES, ids=[f"{b}-{d}-{t}" for b, d, t in HALF_CASES])
def test_half_precision_second_order_equals_the_float64_reference(monkeypatch, backend, device, dtype, name):
    # Half-precision inputs keep their dtype through the closed forms: within the dtype's
    # tolerance of the float64 reference on the same (rounded) values.
    inputs = attention_inputs(B=1, Nq=7, Nk=5, heads=2, d=3, G=1, T=2, H=3, W=3, dtype=dtype, device=device,
                              special_fraction=0)
    chunks_of_three_queries(monkeypatch, inputs)

    def op(backend_name):
        return lambda q, k, v, points: lc4_kernels.tda_attention(q, k, v, points, SCALE, backend=backend_name)

    actual = SECOND_ORDER[name](op(backend), inputs)
    expected = SECOND_ORDER[name](op("reference"), [t.double() for t in inputs])
    for a, e, t in zip(actual, expected, inputs):
        assert a.dtype == t.dtype and torch.isfinite(a).all()
        assert_close(a, e.to(a.dtype), dtype, f"{backend} {name} {dtype}")
