"""Bad input: a ValueError naming the argument and the expected shape or dtype."""
import pytest
import torch

import lc4_kernels

from .cases import attention_inputs, sample_inputs

BACKENDS = lc4_kernels.available_backends()


def _attention_case(**changes):
    q, k, v, points = attention_inputs(Nq=5, Nk=4, heads=4, d=8, G=2, special_fraction=0)
    args = dict(q=q, k=k, v=v, points=points)
    args.update(changes)
    return args


ATTENTION_ERRORS = [
    (dict(q=torch.randn(5, 4, 8)), r"q must be \(B, Nq, heads, d\)"),
    (dict(k=torch.randn(1, 3, 5, 6, 4)), r"k must be \(B, T, H, W, heads, d\)"),
    (dict(k=torch.randn(1, 3, 5, 6, 4, 7)), r"k must be \(B, T, H, W, heads, d\) with B=1, heads=4, d=8"),
    (dict(v=torch.randn(1, 3, 5, 7, 4, 8)), r"v must have the shape of k"),
    (dict(k=torch.randn(1, 0, 5, 6, 4, 8), v=torch.randn(1, 0, 5, 6, 4, 8)), r"k must have non-empty T, H, W"),
    (dict(v=torch.randn(1, 3, 5, 6, 4, 8, dtype=torch.float64)), r"q, k and v must share one dtype"),
    (dict(points=torch.randn(1, 4, 2, 2)), r"points must be \(B, Nk, G, 3\)"),
    (dict(points=torch.randn(2, 4, 2, 3)), r"points must be \(B, Nk, G, 3\) with B=1"),
    (dict(points=torch.randn(1, 0, 2, 3)), r"Nk > 0"),
    (dict(points=torch.randn(1, 4, 3, 3)), r"G dividing heads=4"),
    (dict(q=torch.randint(0, 3, (1, 5, 4, 8))), r"q must be a floating tensor"),
    (dict(points=torch.randn(1, 4, 2, 3, device="meta")), r"points must be on the same device as q"),
    (dict(q=torch.randn(1, 5, 4, 8, 1)), r"q must be \(B, Nq, heads, d\)"),
    (dict(k=torch.randn(2, 3, 5, 6, 4, 8), v=torch.randn(2, 3, 5, 6, 4, 8)),
     r"k must be \(B, T, H, W, heads, d\) with B=1, heads=4, d=8"),
    (dict(k=torch.randn(1, 3, 5, 6, 2, 8), v=torch.randn(1, 3, 5, 6, 2, 8)),
     r"k must be \(B, T, H, W, heads, d\) with B=1, heads=4, d=8"),
    (dict(k=torch.randn(1, 3, 5, 6, 4, 8, dtype=torch.float64)), r"q, k and v must share one dtype"),
    (dict(points=torch.randn(1, 4, 0, 3)), r"points must be \(B, Nk, G, 3\) with G dividing heads=4; got G=0"),
    (dict(points=torch.randint(0, 3, (1, 4, 2, 3))), r"points must be a floating tensor"),
    (dict(v=torch.randn(1, 3, 5, 6, 4, 8, device="meta")), r"v must be on the same device as q"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("changes,message", ATTENTION_ERRORS, ids=[m for _, m in ATTENTION_ERRORS])
def test_attention_errors(backend, changes, message):
    with pytest.raises(ValueError, match=message):
        lc4_kernels.tda_attention(**_attention_case(**changes), backend=backend)


SAMPLE_ERRORS = [
    (torch.randn(1, 3, 4, 5), torch.randn(1, 6, 3), r"value must be \(B, T, H, W, G, C\) or \(B, T, H, W, C\)"),
    (torch.randn(1, 3, 4, 5, 2), torch.randn(1, 6, 1, 3), r"points must be \(B, P, 3\) for a 5-D value"),
    (torch.randn(1, 3, 4, 5, 2, 2), torch.randn(1, 6, 3), r"points must be \(B, P, G, 3\) for a 6-D value"),
    (torch.randn(1, 3, 4, 5, 2, 2), torch.randn(1, 6, 2, 2), r"coordinate axis of size 3"),
    (torch.randn(1, 3, 4, 5, 2, 2), torch.randn(1, 6, 3, 3), r"points must be \(B, P, G, 3\) with B=1, G=2"),
    (torch.randn(1, 3, 0, 5, 2), torch.randn(1, 6, 3), r"value must have non-empty T, H, W"),
    (torch.randn(1, 3, 4, 0, 2), torch.randn(1, 6, 3), r"value must have non-empty T, H, W"),
    (torch.randn(1, 3, 4, 5, 2, 2), torch.randn(2, 6, 2, 3), r"points must be \(B, P, G, 3\) with B=1, G=2"),
    (torch.randn(1, 3, 4, 5, 2), torch.randn(2, 6, 3), r"points must be \(B, P, 3\) with B=1 to match"),
    (torch.randn(1, 3, 4, 5, 2), torch.randn(1, 6, 3, device="meta"), r"points must be on the same device as value"),
    (torch.randn(1, 3, 4, 5, 2), torch.randint(0, 3, (1, 6, 3)), r"points must be a floating tensor"),
    (torch.randint(0, 3, (1, 3, 4, 5, 2)), torch.randn(1, 6, 3), r"value must be a floating tensor"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("value,points,message", SAMPLE_ERRORS, ids=[m for *_, m in SAMPLE_ERRORS])
def test_sample_errors(backend, value, points, message):
    with pytest.raises(ValueError, match=message):
        lc4_kernels.trilinear_sample(value, points, backend=backend)


def test_unknown_backend_is_a_value_error(monkeypatch):
    value, points = sample_inputs()
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        lc4_kernels.trilinear_sample(value, points, backend="nope")
    monkeypatch.setenv("LC4_BACKEND", "nope")
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        lc4_kernels.trilinear_sample(value, points)


@pytest.mark.skipif("cpu" not in BACKENDS, reason="compiled cpu backend not built")
def test_forcing_a_backend_that_cannot_run_the_inputs_says_why():
    value, points = sample_inputs()
    with pytest.raises(ValueError, match=r"backend 'cpu' cannot run these inputs: device meta not in \['cpu'\]"):
        lc4_kernels.trilinear_sample(value.to("meta"), points.to("meta"), backend="cpu")


@pytest.mark.skipif("cpu" not in BACKENDS, reason="compiled cpu backend not built")
def test_compiled_ops_check_their_inputs_too():
    q, k, v, points = attention_inputs(Nq=5, Nk=4, heads=4, d=8, G=2)
    with pytest.raises(ValueError, match=r"G dividing heads=4"):
        torch.ops.lc4.tda_attention(q, k, v, points[:, :, :1].expand(-1, -1, 3, -1).contiguous(), 1.0)
    low = [t.to(torch.float8_e4m3fn) for t in (q, k, v)]
    with pytest.raises(ValueError, match="cpu backend supports float32, float64, float16 and bfloat16, got Float8_e4m3fn"):
        torch.ops.lc4.tda_attention(*low, points, 1.0)
