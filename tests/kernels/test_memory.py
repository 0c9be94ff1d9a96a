"""The fused backends never allocate Nq x Nk: memory of forward+backward at the SD1.5 512 px
level-2 size (Nq = 8192, Nk = 1024, 8 heads, d = 40).

Two measurements: every byte the torch allocator hands out during the call (an upper bound of
the peak, since frees are ignored), and peak RSS growth of a fresh process, which also sees
memory that does not come from torch (BLAS buffers, per-thread tiles). A fixed mmap threshold
makes glibc return freed large blocks at once, so that RSS follows live memory."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import lc4_kernels

NQ, NK, HEADS, D = 8192, 1024, 8, 40
SCORE_BYTES = NQ * NK * HEADS * 4  # one float32 Nq x Nk x heads tensor: 268 MB
RETURNED_BYTES = 4 * NQ * HEADS * D * 4  # output, dq, dk, dv: what any backend must return

_SETUP = textwrap.dedent(f"""
    import torch, lc4_kernels
    torch.manual_seed(0)
    q = torch.randn(1, {NQ}, {HEADS}, {D}, requires_grad=True)
    k = torch.randn(1, 8, 32, 32, {HEADS}, {D}, requires_grad=True)
    v = torch.randn(1, 8, 32, 32, {HEADS}, {D}, requires_grad=True)
    points = (torch.rand(1, {NK}, 1, 3) * torch.tensor([31.0, 31.0, 7.0])).requires_grad_()
    grad = torch.randn(1, {NQ}, {HEADS}, {D})
""")

_RSS_SCRIPT = _SETUP + textwrap.dedent("""
    import json, sys
    backend = sys.argv[1]
    small = q[:, :2].detach().contiguous().requires_grad_()
    lc4_kernels.tda_attention(small, k, v, points, backend=backend).sum().backward()  # load code, warm up
    def status_bytes(field):  # VmRSS now, VmHWM peak (ru_maxrss would carry the parent's peak over exec)
        with open("/proc/self/status") as f:
            line = next(l for l in f if l.startswith(field + ":"))
        return int(line.split()[1]) * 1024
    baseline = status_bytes("VmHWM")
    lc4_kernels.tda_attention(q, k, v, points, backend=backend).backward(grad)
    print(json.dumps({"growth": status_bytes("VmHWM") - baseline}))
""")

needs_cpu = pytest.mark.skipif("cpu" not in lc4_kernels.available_backends(), reason="compiled cpu backend not built")


def _torch_bytes_allocated(backend: str) -> int:
    namespace = {}
    exec(_SETUP, namespace)
    q, k, v, points, grad = (namespace[n] for n in ("q", "k", "v", "points", "grad"))
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        torch.autograd.grad(lc4_kernels.tda_attention(q, k, v, points, backend=backend), (q, k, v, points), grad)
    # An op's self memory is what it allocated minus what it freed; allocating ops free nothing.
    return sum(max(0, e.self_cpu_memory_usage) for e in prof.events())


def _peak_rss_growth(backend: str) -> int:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(128 * 1024))
    result = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, backend], capture_output=True, text=True,
                            check=True, env=env)
    return json.loads(result.stdout.strip().splitlines()[-1])["growth"]


@needs_cpu
def test_cpu_backend_torch_allocations_are_far_below_one_score_tensor():
    # The reference materialises several Nq x Nk x heads tensors: the measurement sees them.
    assert _torch_bytes_allocated("reference") > 2 * SCORE_BYTES
    working = _torch_bytes_allocated("cpu") - RETURNED_BYTES
    assert working < SCORE_BYTES / 10, f"cpu backend working memory {working / 2**20:.1f} MiB"


@needs_cpu
def test_cpu_backend_peak_rss_is_far_below_the_reference():
    reference = _peak_rss_growth("reference")
    fused = _peak_rss_growth("cpu")
    assert reference > SCORE_BYTES, reference
    working = fused - RETURNED_BYTES
    assert working < SCORE_BYTES / 4, f"cpu backend grew peak RSS by {fused / 2**20:.1f} MiB"
