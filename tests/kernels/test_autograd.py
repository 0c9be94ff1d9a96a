"""The two entry points of each kernel backend's autograd (lc4_kernels/autograd.py): the eager
autograd.Function and the registered op that torch.compile and fake tensors take."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import lc4_kernels

from .cases import assert_close, attention_inputs, compiled_backend_cases, deterministic_algorithms, sample_inputs


def _kernels(backend: str):
    return lc4_kernels.get_backend(backend).tda_attention.__self__


def _grads(fn, leaves, seed=1):
    out = fn(*leaves)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype).to(out.device)
    return out, torch.autograd.grad(out, leaves, grad_out)


@pytest.mark.parametrize("backend,device", compiled_backend_cases(torch.float32))
def test_eager_path_and_registered_op_give_the_same_bits(backend, device):
    kernels = _kernels(backend)
    q, k, v, points = attention_inputs(Nq=21, Nk=11, heads=4, d=8, G=2, device=device)
    value, sample_points = sample_inputs(device=device)
    with deterministic_algorithms():  # cuda_emu's atomic scatter adds in a different order each run
        eager = _grads(lambda *t: kernels.tda_attention(*t, 0.3),
                       [t.clone().requires_grad_(True) for t in (q, k, v, points)])
        registered = _grads(lambda *t: kernels.ops.attention(*t, 0.3)[0],
                            [t.clone().requires_grad_(True) for t in (q, k, v, points)])
        eager_sample = _grads(kernels.trilinear_sample, [t.clone().requires_grad_(True) for t in (value, sample_points)])
        registered_sample = _grads(kernels.ops.sample, [t.clone().requires_grad_(True) for t in (value, sample_points)])
    # The eager path is the Function, not the registered op's autograd.
    assert type(eager[0].grad_fn).__name__ == "AttentionBackward"
    assert type(eager_sample[0].grad_fn).__name__ == "SampleBackward"
    for actual, expected in ((eager, registered), (eager_sample, registered_sample)):
        assert torch.equal(actual[0], expected[0])
        for a, e in zip(actual[1], expected[1]):
            assert torch.equal(a, e)


@pytest.mark.parametrize("backend,device", compiled_backend_cases(torch.float32))
def test_torch_compile_traces_the_registered_ops(backend, device):
    kernels = _kernels(backend)
    q, k, v, points = attention_inputs(Nq=16, Nk=10, heads=2, d=8, G=2, device=device, special_fraction=0)
    targets = []

    def recording_backend(graph_module, example_inputs):
        targets.extend(node.target for node in graph_module.graph.nodes if node.op == "call_function")
        return graph_module.forward

    torch._dynamo.reset()
    compiled = torch.compile(lambda *t: lc4_kernels.tda_attention(*t, backend=backend).sum(), fullgraph=True,
                             backend=recording_backend)
    compiled(q, k, v, points)
    # A torch.library.custom_op (triton) is traced as its OpOverload.
    assert getattr(kernels.ops.attention, "_opoverload", kernels.ops.attention) in targets


@pytest.mark.parametrize("backend,device", compiled_backend_cases(torch.float32))
def test_torch_compile_backward_runs_the_hand_written_backward(backend, device):
    from torch._functorch.aot_autograd import aot_module_simplified
    from functorch.compile import make_boxed_func

    q, k, v, points = attention_inputs(Nq=16, Nk=10, heads=2, d=8, G=2, device=device, special_fraction=0)
    backward_targets = []

    def record_backward(graph_module, example_inputs):
        backward_targets.extend(str(n.target) for n in graph_module.graph.nodes if n.op == "call_function")
        return make_boxed_func(graph_module.forward)

    def aot_backend(graph_module, example_inputs):
        return aot_module_simplified(graph_module, example_inputs, fw_compiler=lambda g, _: make_boxed_func(g.forward),
                                     bw_compiler=record_backward)

    torch._dynamo.reset()
    compiled = torch.compile(lambda *t: lc4_kernels.tda_attention(*t, backend=backend).square().sum(),
                             fullgraph=True, backend=aot_backend)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v, points)]
    compiled(*leaves).backward()
    assert any(t.endswith("tda_attention_backward.default") for t in backward_targets), backward_targets
    # Not the create_graph path through the reference formula.
    assert not any("softmax" in t for t in backward_targets), backward_targets
    eager = [t.clone().requires_grad_(True) for t in (q, k, v, points)]
    lc4_kernels.tda_attention(*eager, backend=backend).square().sum().backward()
    for compiled_leaf, eager_leaf in zip(leaves, eager):
        assert_close(compiled_leaf.grad, eager_leaf.grad, torch.float32, "compiled backward")


@pytest.mark.parametrize("backend,device", compiled_backend_cases(torch.float32))
def test_fake_tensors_get_shapes_from_the_fake_kernels(backend, device):
    q, k, v, points = attention_inputs(Nq=16, Nk=10, heads=2, d=8, G=2, device=device, special_fraction=0)
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(t) for t in (q, k, v, points)]
        out = lc4_kernels.tda_attention(*fake, backend=backend)
        sampled = lc4_kernels.trilinear_sample(fake[1], fake[3], backend=backend)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert sampled.shape == (1, 10, 2, 8)  # k read as (B, T, H, W, G = heads, C = d)


def _second_order(fn, inputs, penalty):
    """d penalty(first-order grads, with create_graph=True) / d inputs: a gradient penalty."""
    leaves = [t.clone().requires_grad_(True) for t in inputs]
    out = fn(*leaves)
    firsts = torch.autograd.grad(penalty(out), leaves, create_graph=True)
    return firsts, torch.autograd.grad(sum(g.square().sum() for g in firsts), leaves)


# The grad_out a first backward gets either depends on the output (a second backward flows
# through it too) or is a constant (then the gradients' own graph is all there is).
_PENALTIES = {"grad_out_from_output": lambda out: out.square().sum() / 2, "constant_grad_out": lambda out: out.sum()}


@pytest.mark.parametrize("penalty", sorted(_PENALTIES))
@pytest.mark.parametrize("entry", ["eager", "registered"])
@pytest.mark.parametrize("backend,device", compiled_backend_cases(torch.float32))
def test_double_backward_equals_the_reference(backend, device, entry, penalty):
    kernels = _kernels(backend)
    attention = (lambda *t: kernels.tda_attention(*t, 0.4)) if entry == "eager" else (
        lambda *t: kernels.ops.attention(*t, 0.4)[0])
    sample = kernels.trilinear_sample if entry == "eager" else kernels.ops.sample
    reference = lc4_kernels.get_backend("reference")
    q, k, v, points = attention_inputs(Nq=9, Nk=7, heads=4, d=4, G=2, device=device, special_fraction=0.1)
    value, sample_points = sample_inputs(P=11, device=device)
    cases = (
        (attention, lambda *t: reference.tda_attention(*t, 0.4), (q, k, v, points)),
        (sample, reference.trilinear_sample, (value, sample_points)),
    )
    for fn, ref_fn, inputs in cases:
        firsts, seconds = _second_order(fn, inputs, _PENALTIES[penalty])
        ref_firsts, ref_seconds = _second_order(ref_fn, inputs, _PENALTIES[penalty])
        for actual, expected in zip((*firsts, *seconds), (*ref_firsts, *ref_seconds)):
            assert_close(actual, expected, torch.float32, f"{backend} {entry} second-order gradient")


def _off_the_voxel_faces(points):
    """gradgradcheck differentiates the backward numerically: no coordinate may lie within its
    step of an integer, where the trilinear weights bend (``random_points`` puts some on one)."""
    return torch.where((points - points.round()).abs() < 1e-3, points + 0.25, points)


@pytest.mark.parametrize("backend,device", compiled_backend_cases(torch.float64))
def test_double_backward_against_finite_differences(backend, device):
    q, k, v, points = attention_inputs(Nq=5, Nk=6, heads=2, d=3, G=1, T=2, H=3, W=4, dtype=torch.float64, device=device,
                                       special_fraction=0)
    value, sample_points = sample_inputs(B=1, P=5, G=1, C=3, T=2, H=3, W=4, dtype=torch.float64, device=device)
    points, sample_points = _off_the_voxel_faces(points), _off_the_voxel_faces(sample_points)
    assert torch.autograd.gradgradcheck(
        lambda *t: lc4_kernels.tda_attention(*t, backend=backend),
        [t.requires_grad_(True) for t in (q, k, v, points)], atol=1e-6)
    assert torch.autograd.gradgradcheck(
        lambda *t: lc4_kernels.trilinear_sample(*t, backend=backend),
        [t.requires_grad_(True) for t in (value, sample_points)], atol=1e-6)


def test_reference_double_backward_against_finite_differences():
    q, k, v, points = attention_inputs(Nq=5, Nk=6, heads=4, d=3, G=2, T=2, H=3, W=4, dtype=torch.float64,
                                       special_fraction=0)
    points = _off_the_voxel_faces(points)
    assert torch.autograd.gradgradcheck(
        lambda *t: lc4_kernels.tda_attention(*t, backend="reference"),
        [t.requires_grad_(True) for t in (q, k, v, points)], atol=1e-6)
