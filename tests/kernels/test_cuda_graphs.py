"""CUDA graph capture of the GPU backends: a forward+backward captured once and replayed on new
inputs gives what an eager call gives, and ``torch.compile(mode="reduce-overhead")`` (inductor's
CUDA graphs) runs the ops without skipping its graphs. Launch overhead matters here: at the
512 px SD1.5 32x32 layer the triton call is bound by its host time. GPU only."""
import pytest
import torch

import lc4_kernels

from .cases import (assert_close, attention_inputs, compiled_backend_cases, deterministic_algorithms,
                    sample_inputs)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")

GPU_BACKENDS = [name for name, device in compiled_backend_cases(torch.float32) if device == "cuda"]
SHAPE = dict(B=2, Nq=130, Nk=300, heads=4, d=40, G=2, T=3, H=9, W=10)


def _leaves(tensors):
    return [t.detach().clone().requires_grad_(True) for t in tensors]


def _attention_step(backend, weight):
    """One training step's worth of the op: forward, then every input's gradient."""
    def step(q, k, v, points):
        out = lc4_kernels.tda_attention(q, k, v, points, backend=backend)
        return (out, *torch.autograd.grad((out * weight).sum(), (q, k, v, points)))
    return step


def _captured(step, static_inputs):
    """``step`` warmed up on a side stream (autotuning and lazy initialisation happen outside the
    capture, as CUDA graphs require), then captured on static inputs."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step(*static_inputs)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_outputs = step(*static_inputs)
    return graph, static_outputs


@pytest.mark.parametrize("deterministic", [False, True], ids=["atomics", "deterministic"])
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_attention_forward_backward_replays_on_new_inputs(backend, deterministic):
    with deterministic_algorithms(deterministic):
        first = _leaves(attention_inputs(**SHAPE, device="cuda", seed=0))
        weight = torch.randn(first[0].shape, device="cuda", generator=torch.Generator("cuda").manual_seed(3))
        step = _attention_step(backend, weight)
        graph, captured = _captured(step, first)
        for seed in (1, 2):  # replays read whatever the static inputs hold now
            fresh = attention_inputs(**SHAPE, device="cuda", seed=seed)
            with torch.no_grad():
                for static, new in zip(first, fresh):
                    static.copy_(new)
            graph.replay()
            expected = step(*_leaves(fresh))
            for name, got, want in zip(("out", "dq", "dk", "dv", "dpoints"), captured, expected):
                assert_close(got, want, torch.float32, f"{backend} replay {seed}: {name}")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_sample_forward_backward_replays_on_new_inputs(backend):
    first = _leaves(sample_inputs(B=2, P=300, G=2, C=40, T=3, H=9, W=10, device="cuda", seed=0))

    def step(value, points):
        out = lc4_kernels.trilinear_sample(value, points, backend=backend)
        return (out, *torch.autograd.grad(out.square().sum(), (value, points)))

    graph, captured = _captured(step, first)
    fresh = sample_inputs(B=2, P=300, G=2, C=40, T=3, H=9, W=10, device="cuda", seed=1)
    with torch.no_grad():
        for static, new in zip(first, fresh):
            static.copy_(new)
    graph.replay()
    for name, got, want in zip(("out", "dvalue", "dpoints"), captured, step(*_leaves(fresh))):
        assert_close(got, want, torch.float32, f"{backend} replay: {name}")


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_reduce_overhead_compile_keeps_its_cuda_graphs(backend):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    inputs = attention_inputs(**SHAPE, device="cuda", seed=0)

    def forward(q, k, v, points):
        return lc4_kernels.tda_attention(q, k, v, points, backend=backend).square().sum(dim=-1)

    compiled = torch.compile(forward, mode="reduce-overhead", fullgraph=True)
    for _ in range(3):  # inductor records the graph on a later call, then replays it
        got = compiled(*inputs).clone()
    assert_close(got, forward(*inputs), torch.float32, f"{backend} reduce-overhead")
    skips = dict(counters["inductor"]).get("cudagraph_skips", 0)
    assert skips == 0, f"inductor skipped CUDA graphs {skips} time(s) around the {backend} op"
