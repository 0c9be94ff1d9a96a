"""The fused backends never allocate Nq x Nk: peak memory of forward+backward at the SD1.5
512 px level-2 size (Nq = 8192, Nk = 1024, 8 heads, d = 40), measured the way the benchmark
report measures it (the torch allocator's peak and the growth of the resident high-water mark,
which also sees memory that does not come from torch); and forward mode holds chunks of the
scores, never all of them."""
import pytest
import torch

import lc4_kernels
from lc4_kernels import query_chunks
from benchmarks.measure import peak_memory

NQ, NK, HEADS, D = 8192, 1024, 8, 40
SCORE_BYTES = NQ * NK * HEADS * 4  # one float32 Nq x Nk x heads tensor: 268 MB
RETURNED_BYTES = 4 * NQ * HEADS * D * 4  # output, dq, dk, dv: what any backend must return


def _peak_bytes(backend: str) -> int:
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, NQ, HEADS, D, generator=gen, requires_grad=True)
    k = torch.randn(1, 8, 32, 32, HEADS, D, generator=gen, requires_grad=True)
    v = torch.randn(1, 8, 32, 32, HEADS, D, generator=gen, requires_grad=True)
    points = (torch.rand(1, NK, 1, 3, generator=gen) * torch.tensor([31.0, 31.0, 7.0])).requires_grad_()
    grad = torch.randn(1, NQ, HEADS, D, generator=gen)

    def forward_backward():
        out = lc4_kernels.tda_attention(q, k, v, points, backend=backend)
        torch.autograd.grad(out, (q, k, v, points), grad)

    forward_backward()  # load code and warm the allocators first
    return peak_memory(forward_backward, torch.device("cpu")).bytes


@pytest.mark.skipif("cpu" not in lc4_kernels.available_backends(), reason="compiled cpu backend not built")
def test_cpu_backend_peak_memory_is_far_below_one_score_tensor():
    # The reference materialises scores and probabilities: the measurement must see them.
    assert _peak_bytes("reference") > 2 * SCORE_BYTES
    working = _peak_bytes("cpu") - RETURNED_BYTES
    assert working < SCORE_BYTES / 10, f"cpu backend working memory {working / 2**20:.1f} MiB"


JVP_CHUNK_ELEMENTS = 1 << 20  # 128 queries a chunk here: 4 MiB a score-sized float32 tensor


def _jvp_peak_bytes(backend: str, num_queries: int = NQ) -> int:
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, num_queries, HEADS, D, generator=gen)
    k = torch.randn(1, 8, 32, 32, HEADS, D, generator=gen)
    v = torch.randn(1, 8, 32, 32, HEADS, D, generator=gen)
    points = torch.rand(1, NK, 1, 3, generator=gen) * torch.tensor([31.0, 31.0, 7.0])
    inputs = (q, k, v, points)
    tangents = tuple(torch.randn(t.shape, generator=gen) for t in inputs)

    def jvp():
        torch.func.jvp(lambda *t: lc4_kernels.tda_attention(*t, backend=backend), inputs, tangents)

    jvp()
    return peak_memory(jvp, torch.device("cpu")).bytes


@pytest.mark.skipif("cpu" not in lc4_kernels.available_backends(), reason="compiled cpu backend not built")
def test_forward_mode_holds_chunks_of_scores_not_all_of_them(monkeypatch):
    monkeypatch.setenv(query_chunks.CHUNK_ENV, str(JVP_CHUNK_ELEMENTS))
    assert _jvp_peak_bytes("reference") > 2 * SCORE_BYTES
    # The output and its tangent, per query: what forward mode must return.
    returned = 2 * HEADS * D * 4
    working = _jvp_peak_bytes("cpu") - NQ * returned
    doubled = _jvp_peak_bytes("cpu", 2 * NQ) - 2 * NQ * returned
    # The allocator holds about 36 MiB at the peak (k~, v~, their tangents, a few chunk-sized
    # temporaries); the resident high-water mark, which the measure takes when larger, also
    # counts freed chunks glibc keeps in its heap (about 85 MiB in all, at any Nq).
    assert working < SCORE_BYTES / 2, f"cpu backend forward-mode working memory {working / 2**20:.1f} MiB"
    # Twice the queries: the same working memory, where whole scores would take 2 x SCORE_BYTES more.
    assert doubled - working < SCORE_BYTES / 8, (
        f"forward-mode working memory grew from {working / 2**20:.1f} to {doubled / 2**20:.1f} MiB with Nq")


def _gradient_penalty_peak_bytes(backend: str, num_queries: int = NQ) -> int:
    gen = torch.Generator().manual_seed(0)
    leaves = [torch.randn(1, num_queries, HEADS, D, generator=gen).requires_grad_(),
              torch.randn(1, 8, 32, 32, HEADS, D, generator=gen).requires_grad_(),
              torch.randn(1, 8, 32, 32, HEADS, D, generator=gen).requires_grad_(),
              (torch.rand(1, NK, 1, 3, generator=gen) * torch.tensor([31.0, 31.0, 7.0])).requires_grad_()]
    weight = torch.randn(1, num_queries, HEADS, D, generator=gen)

    def penalty():  # the gradients' squared norm, differentiated again (create_graph=True)
        out = lc4_kernels.tda_attention(*leaves, backend=backend)
        grads = torch.autograd.grad((out * weight).sum(), leaves, create_graph=True)
        torch.autograd.grad(sum(g.square().sum() for g in grads), leaves)

    penalty()
    return peak_memory(penalty, torch.device("cpu")).bytes


@pytest.mark.skipif("cpu" not in lc4_kernels.available_backends(), reason="compiled cpu backend not built")
def test_double_backward_holds_chunks_of_scores_not_all_of_them(monkeypatch):
    monkeypatch.setenv(query_chunks.CHUNK_ENV, str(JVP_CHUNK_ELEMENTS))
    whole = _gradient_penalty_peak_bytes("reference")
    working = _gradient_penalty_peak_bytes("cpu")
    doubled = _gradient_penalty_peak_bytes("cpu", 2 * NQ)
    # About 3 GiB for the reference, 0.27 for the cpu backend (0.4 before the closed forms of
    # second_order and sample_derivatives): a few map-sized tensors of the sampling stage and a
    # dozen Nq-sized ones (inputs, first and second gradients) besides a chunk's scores.
    assert whole > 4 * working, f"double backward: reference {whole / 2**20:.0f} MiB, cpu {working / 2**20:.0f} MiB"
    # Twice the queries add their Nq-sized tensors (inputs, weights, first and second gradients:
    # a dozen of 10.5 MiB; 90 to 140 MiB measured with the resident mark's noise), less than one
    # score tensor; whole scores would add at least two (scores and probabilities).
    assert doubled - working < SCORE_BYTES, (
        f"double-backward memory grew from {working / 2**20:.1f} to {doubled / 2**20:.1f} MiB with Nq")
