"""The two entry points of each kernel backend's autograd (lc4_kernels/autograd.py): the eager
autograd.Function and the registered op that torch.compile and fake tensors take."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import lc4_kernels

from .cases import attention_inputs, compiled_backend_cases, deterministic_algorithms, sample_inputs


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
        registered = _grads(lambda *t: kernels.attention_op(*t, 0.3)[0],
                            [t.clone().requires_grad_(True) for t in (q, k, v, points)])
        eager_sample = _grads(kernels.trilinear_sample, [t.clone().requires_grad_(True) for t in (value, sample_points)])
        registered_sample = _grads(kernels.sample_op, [t.clone().requires_grad_(True) for t in (value, sample_points)])
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
    assert getattr(kernels.attention_op, "_opoverload", kernels.attention_op) in targets


@pytest.mark.parametrize("backend,device", compiled_backend_cases(torch.float32))
def test_fake_tensors_get_shapes_from_the_fake_kernels(backend, device):
    q, k, v, points = attention_inputs(Nq=16, Nk=10, heads=2, d=8, G=2, device=device, special_fraction=0)
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(t) for t in (q, k, v, points)]
        out = lc4_kernels.tda_attention(*fake, backend=backend)
        sampled = lc4_kernels.trilinear_sample(fake[1], fake[3], backend=backend)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert sampled.shape == (1, 10, 2, 8)  # k read as (B, T, H, W, G = heads, C = d)


@pytest.mark.parametrize("backend,device", compiled_backend_cases(torch.float32))
def test_double_backward_is_refused(backend, device):
    q, k, v, points = attention_inputs(Nq=9, Nk=7, heads=2, d=4, G=1, device=device, special_fraction=0)
    q.requires_grad_(True)
    out = lc4_kernels.tda_attention(q, k, v, points, backend=backend)
    (grad_q,) = torch.autograd.grad(out.square().sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad_q.sum().backward()
