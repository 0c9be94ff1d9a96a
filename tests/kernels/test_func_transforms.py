"""torch.func transforms (grad, vmap, vjp, jvp, jacrev, jacfwd, hessian) over the two public ops
on every backend, against the same transforms over the reference backend; and the vmap rules of
the registered ops, with PyTorch's per-sample fallback loop switched off so that only those rules
can serve a vmap."""
import pytest
import torch
from torch import func

import lc4_kernels
from lc4_kernels import autograd, batching

from .cases import assert_close, attention_inputs, compiled_backend_cases, sample_inputs

CASES = compiled_backend_cases(torch.float32)


@pytest.fixture(autouse=True)
def no_vmap_fallback():
    """A vmap over an op without a batching rule raises instead of looping over the samples."""
    before = torch._C._functorch._is_vmap_fallback_enabled()
    torch._C._functorch._set_vmap_fallback_enabled(False)
    yield
    torch._C._functorch._set_vmap_fallback_enabled(before)


def _attention(backend, scale=0.45):
    return lambda q, k, v, points: lc4_kernels.tda_attention(q, k, v, points, scale, backend=backend)


def _sample(backend):
    return lambda value, points: lc4_kernels.trilinear_sample(value, points, backend=backend)


def _inputs(device):
    attention = attention_inputs(Nq=6, Nk=5, heads=2, d=3, G=1, T=2, H=3, W=3, device=device, special_fraction=0)
    sample = sample_inputs(B=1, P=4, G=1, C=3, T=2, H=3, W=3, device=device, special_fraction=0)
    return {"attention": (_attention, attention), "sample": (_sample, sample)}


def _loss(op, inputs):
    """A scalar of op's output that weighs every element differently (the same weights for the
    backend and the reference); ``inputs`` give the output's shape, outside any transform."""
    out = op(*inputs)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(3)).to(out)

    def loss(*inputs):
        out = op(*inputs)
        return (out * weight).sum() + 0.5 * out.square().sum()
    return loss


def _assert_all_close(actual, expected, what):
    actual, expected = torch.utils._pytree.tree_leaves(actual), torch.utils._pytree.tree_leaves(expected)
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a.shape == e.shape, what
        assert_close(a, e, torch.float32, what)


def _argnums(inputs):
    return tuple(range(len(inputs)))


def _transforms():
    """name -> (op, inputs) -> a function of the inputs applying the transform; the function does
    no random draws and no untransformed calls (torch.compile traces it whole)."""
    def grad(op, inputs):
        return func.grad(_loss(op, inputs), argnums=_argnums(inputs))

    def vmap_grad(op, inputs):
        # Per-sample gradients: 3 query (or volume) sets against shared other inputs.
        per_sample = grad(op, inputs)
        in_dims = (0,) + (None,) * (len(inputs) - 1)
        return lambda first, *rest: func.vmap(per_sample, in_dims=in_dims)(
            torch.stack([first, -0.5 * first, 2.0 * first]), *rest)

    def jvp(op, inputs):
        tangents = tuple(torch.randn(t.shape, generator=torch.Generator().manual_seed(i)).to(t)
                         for i, t in enumerate(inputs))
        return lambda *t: func.jvp(op, t, tangents)

    def vjp(op, inputs):
        cotangent = torch.randn(op(*inputs).shape, generator=torch.Generator().manual_seed(5)).to(inputs[0])
        return lambda *t: (lambda out, pullback: (out, pullback(cotangent)))(*func.vjp(op, *t))

    def hessian_of_points(op, inputs):  # the trilinear weights' second order
        loss = _loss(op, inputs)
        return lambda *t: func.hessian(lambda p: loss(*t[:-1], p))(t[-1])

    def hessian_of_first_input(op, inputs):
        loss = _loss(op, inputs)
        return lambda *t: func.hessian(lambda x: loss(x, *t[1:]))(t[0])

    def grad_of_grad_norm(op, inputs):  # a gradient penalty written with torch.func
        first = grad(op, inputs)
        return func.grad(lambda *t: sum(g.square().sum() for g in first(*t)), argnums=_argnums(inputs))

    return {
        "grad": grad,
        "vmap_grad": vmap_grad,
        "vjp": vjp,
        "jvp": jvp,
        "jacrev": lambda op, inputs: func.jacrev(op, argnums=_argnums(inputs)),
        "jacfwd": lambda op, inputs: func.jacfwd(op, argnums=_argnums(inputs)),
        "hessian_of_points": hessian_of_points,
        "hessian_of_first_input": hessian_of_first_input,
        "grad_of_grad_norm": grad_of_grad_norm,
    }


def _apply(transform, op, inputs):
    return _transforms()[transform](op, inputs)(*inputs)


@pytest.mark.parametrize("op_name", ["attention", "sample"])
@pytest.mark.parametrize("transform", sorted(_transforms()))
@pytest.mark.parametrize("backend,device", CASES)
def test_transform_equals_the_reference(backend, device, transform, op_name):
    build, inputs = _inputs(device)[op_name]
    _assert_all_close(_apply(transform, build(backend), inputs), _apply(transform, build("reference"), inputs),
                      f"{backend} {transform} {op_name}")


@pytest.mark.parametrize("backend,device", CASES)
def test_vmap_over_every_argument_position(backend, device):
    q, k, v, points = attention_inputs(B=2, Nq=5, Nk=4, heads=2, d=3, G=2, T=2, H=3, W=3, device=device,
                                       special_fraction=0)
    attention = _attention(backend)
    factors = (1.0, 2.0, -1.0)
    queries = torch.stack([q * f for f in factors])  # mapped along dim 0
    keys = torch.stack([k * f for f in factors], dim=1)  # mapped along dim 1, a strided view
    out = func.vmap(attention, in_dims=(0, 1, None, None))(queries, keys, v, points)
    for i in range(3):
        expected = _attention("reference")(queries[i], keys.select(1, i), v, points)
        assert_close(out[i], expected, torch.float32, f"{backend} vmap item {i}")


@pytest.mark.parametrize("backend,device", CASES)
def test_vmap_alone_runs_the_registered_ops_and_their_autograd(backend, device, monkeypatch):
    """No differentiating transform: the registered ops serve (vmap rules), and plain autograd
    outside the vmap goes through their registered backward."""
    def refuse(*args):
        raise AssertionError("the torch.func Function ran under vmap alone")

    q, k, v, points = attention_inputs(B=2, Nq=5, Nk=4, heads=2, d=3, G=2, T=2, H=3, W=3, device=device,
                                       special_fraction=0)
    queries = torch.stack([q, -q, 0.5 * q])
    grads = {}
    for name in (backend, "reference"):
        if name != "reference":
            monkeypatch.setattr(autograd._TransformableAttention, "apply", refuse)
        leaves = [t.clone().requires_grad_(True) for t in (queries, k, v, points)]
        out = func.vmap(_attention(name), in_dims=(0, None, None, None))(*leaves)
        grads[name] = (out, *torch.autograd.grad(out.square().sum(), leaves))
        monkeypatch.undo()
    _assert_all_close(grads[backend], grads["reference"], f"{backend} vmap with autograd")


@pytest.mark.parametrize("backend,device", CASES)
def test_a_gradient_nothing_differentiates_again_skips_the_differentiable_backward(backend, device, monkeypatch):
    """grad and vmap(grad) call the backward kernels directly (host time); the differentiable
    backward is kept for what differentiates the gradient, which the other tests check."""
    def refuse(*args):
        raise AssertionError("the differentiable backward ran under a single torch.func.grad")

    monkeypatch.setattr(autograd._AttentionBackward, "apply", refuse)
    monkeypatch.setattr(autograd._SampleBackward, "apply", refuse)
    for name in ("attention", "sample"):
        build, inputs = _inputs(device)[name]
        _apply("grad", build(backend), inputs)
        _apply("vmap_grad", build(backend), inputs)
    with pytest.raises(AssertionError, match="differentiable backward ran"):
        _apply("grad_of_grad_norm", build(backend), inputs)


@pytest.mark.parametrize("op_name", ["attention", "sample"])
@pytest.mark.parametrize("backend,device", CASES)
def test_plain_autograd_through_a_torch_func_gradient(backend, device, op_name):
    """torch.func.grad of inputs that plain autograd tracks from outside: its result is
    differentiated again by autograd, so the backward must be differentiable there."""
    build, inputs = _inputs(device)[op_name]
    results = {}
    for name in (backend, "reference"):
        leaves = [t.clone().requires_grad_(True) for t in inputs]
        grads = func.grad(_loss(build(name), inputs), argnums=_argnums(leaves))(*leaves)
        results[name] = torch.autograd.grad(sum(g.square().sum() for g in grads), leaves)
    _assert_all_close(results[backend], results["reference"], f"{backend} autograd through torch.func.grad")


def _dual_tangents(op, inputs, under):
    """Tangents of ``under(op, dual inputs)`` inside a torch.autograd.forward_ad level."""
    import torch.autograd.forward_ad as fwAD

    tangents = [torch.randn(t.shape, generator=torch.Generator().manual_seed(i)).to(t) for i, t in enumerate(inputs)]
    with fwAD.dual_level():
        outputs = under(op, [fwAD.make_dual(t, d) for t, d in zip(inputs, tangents)])
        return [fwAD.unpack_dual(out).tangent for out in outputs]


_FORWARD_AD_CASES = {
    "output": lambda op, duals: [op(*duals)],
    # forward-over-reverse: the gradient's tangent, through plain autograd and through torch.func
    "autograd_grad": lambda op, duals: torch.autograd.grad(_loss(op, duals)(*duals), duals),
    "func_grad": lambda op, duals: func.grad(_loss(op, duals), argnums=_argnums(duals))(*duals),
}


@pytest.mark.parametrize("case", sorted(_FORWARD_AD_CASES))
@pytest.mark.parametrize("op_name", ["attention", "sample"])
@pytest.mark.parametrize("backend,device", CASES)
def test_forward_ad_dual_tensors(backend, device, op_name, case):
    build, inputs = _inputs(device)[op_name]
    if case == "autograd_grad":
        inputs = [t.clone().requires_grad_(True) for t in inputs]
    actual, expected = (_dual_tangents(build(name), inputs, _FORWARD_AD_CASES[case]) for name in (backend, "reference"))
    assert all(t is not None for t in actual), f"{backend} {case}: a tangent went missing"
    _assert_all_close(actual, expected, f"{backend} forward_ad {case} {op_name}")


def _op_namespace(backend):
    return {"cpu": torch.ops.lc4, "cuda": torch.ops.lc4, "cuda_emu": torch.ops.lc4_emu}.get(backend) or (
        torch.ops.lc4_triton)


@pytest.mark.parametrize("backend,device", CASES)
def test_registered_ops_have_vmap_rules(backend, device):
    """Each of the four ops, vmapped with its inputs mapped or not, against a loop of calls."""
    ops = _op_namespace(backend)
    q, k, v, points = attention_inputs(B=2, Nq=5, Nk=4, heads=2, d=3, G=1, T=2, H=3, W=3, device=device,
                                       special_fraction=0)
    value, sample_points = sample_inputs(B=2, P=4, G=1, C=3, device=device, special_fraction=0)
    scale = 0.5
    out, lse = ops.tda_attention(q, k, v, points, scale)
    grad_out = torch.randn_like(out)
    calls = {
        "trilinear_sample": (ops.trilinear_sample, (value, sample_points)),
        "trilinear_sample_backward": (ops.trilinear_sample_backward,
                                      (torch.randn(2, 4, 1, 3, device=device), value, sample_points)),
        "tda_attention": (ops.tda_attention, (q, k, v, points, scale)),
        "tda_attention_backward": (ops.tda_attention_backward, (grad_out, q, k, v, points, out, lse, scale)),
    }
    for name, (op, args) in calls.items():
        tensors = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
        # The first input, the last, both, every input.
        for mapped in (tensors[:1], tensors[-1:], [tensors[0], tensors[-1]], tensors):
            stacked = [torch.stack([a * (1 + 0.25 * j) for j in range(3)]) if i in mapped else a
                       for i, a in enumerate(args)]
            in_dims = tuple(0 if i in mapped else None for i in range(len(args)))
            batched = func.vmap(op, in_dims=in_dims)(*stacked)
            for j in range(3):
                looped = op(*(a[j] if i in mapped else a for i, a in enumerate(stacked)))
                for b, e in zip(torch.utils._pytree.tree_leaves(batched), torch.utils._pytree.tree_leaves(looped)):
                    assert_close(b[j], e, torch.float32, f"{backend} {name} mapped {mapped} item {j}")


@pytest.mark.parametrize("backend,device", CASES)
def test_vmapped_query_side_shares_the_volume(backend, device):
    """Only q (or the points) mapped, at an inner dimension: V query sets against one k/v map,
    folded into Nq (P) without copying the volume."""
    q, k, v, points = attention_inputs(B=2, Nq=5, Nk=4, heads=2, d=3, G=2, T=2, H=3, W=3, device=device,
                                       special_fraction=0)
    queries = torch.stack([q, -q, 0.5 * q], dim=2)  # (B, Nq, V, heads, d): mapped dim 2
    out = func.vmap(_attention(backend), in_dims=(2, None, None, None))(queries, k, v, points)
    value, sample_points = sample_inputs(B=2, P=4, G=2, C=3, device=device, special_fraction=0)
    point_sets = torch.stack([sample_points, sample_points.flip(1), sample_points + 0.5], dim=1)
    sampled = func.vmap(_sample(backend), in_dims=(None, 1))(value, point_sets)
    for i in range(3):
        assert_close(out[i], _attention("reference")(queries[:, :, i], k, v, points), torch.float32, "vmapped q")
        assert_close(sampled[i], _sample("reference")(value, point_sets[:, i]), torch.float32, "vmapped points")


def test_fold_rules_pass_the_volume_unrepeated():
    calls = []

    def record(*args):
        calls.append([a.shape for a in args if isinstance(a, torch.Tensor)])
        q = args[0]
        return torch.zeros_like(q), torch.zeros(q.shape[0], q.shape[2], q.shape[1])

    info = type("Info", (), {"batch_size": 3, "randomness": "error"})()
    q, k, v, points = torch.zeros(3, 2, 5, 4, 8), torch.zeros(2, 2, 3, 3, 4, 8), torch.zeros(2, 2, 3, 3, 4, 8), (
        torch.zeros(2, 6, 2, 3))
    (out, lse), out_dims = batching._attention_rule(record)(info, (0, None, None, None, None), q, k, v, points, 1.0)
    assert calls == [[(2, 15, 4, 8), k.shape, v.shape, points.shape]]
    assert out.movedim(out_dims[0], 0).shape == (3, 2, 5, 4, 8) and lse.movedim(out_dims[1], 0).shape == (3, 2, 4, 5)


@pytest.mark.parametrize("backend,device", CASES)
def test_first_derivative_under_create_graph_is_the_hand_written_backward(backend, device):
    """create_graph=True keeps the kernels' backward for the gradient itself; only its own
    derivative comes from the reference formula."""
    q, k, v, points = (t.requires_grad_(True) for t in attention_inputs(Nq=6, Nk=5, heads=2, d=3, G=1, T=2, H=3,
                                                                          W=3, device=device, special_fraction=0))
    dq, = torch.autograd.grad(_attention(backend)(q, k, v, points).square().sum(), q, create_graph=True)
    assert type(dq.grad_fn).__name__ == "_AttentionBackwardBackward"
    value, sample_points = (t.requires_grad_(True) for t in sample_inputs(device=device, special_fraction=0))
    dvalue, = torch.autograd.grad(_sample(backend)(value, sample_points).square().sum(), value, create_graph=True)
    assert type(dvalue.grad_fn).__name__ == "_SampleBackwardBackward"


@pytest.mark.parametrize("transform", ["grad", "vmap_grad", "jvp", "hessian_of_points"])
@pytest.mark.parametrize("backend,device", [c for c in CASES if c[0] in ("cpu", "cuda")])
def test_torch_compile_runs_transforms_over_the_ops_eagerly(backend, device, transform):
    """Dynamo ignores a custom jvp (forward mode would come out wrong) and cannot vmap the backward
    of a Function it traces: the ops break the graph so that the transform runs eagerly."""
    build, inputs = _inputs(device)["attention"]
    transformed = _transforms()[transform](build(backend), inputs)
    torch._dynamo.reset()
    compiled = torch.compile(transformed, backend="aot_eager")(*inputs)
    _assert_all_close(compiled, _apply(transform, build("reference"), inputs), f"{backend} compiled {transform}")
    torch._dynamo.reset()
    with pytest.raises(torch._dynamo.exc.Unsupported, match="graph_break"):
        torch.compile(transformed, backend="aot_eager", fullgraph=True)(*inputs)
