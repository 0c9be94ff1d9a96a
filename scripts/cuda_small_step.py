"""A small tda_attention + trilinear_sample forward and backward on the cuda backend, in the
atomic and the deterministic mode (what scripts/gpu_check.sh runs under compute-sanitizer)."""
import torch

import lc4_kernels


def step(dtype):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 70, 4, 40, generator=g).to("cuda", dtype).requires_grad_()
    k = torch.randn(1, 2, 6, 7, 4, 40, generator=g).to("cuda", dtype).requires_grad_()
    v = torch.randn(1, 2, 6, 7, 4, 40, generator=g).to("cuda", dtype).requires_grad_()
    points = (torch.rand(1, 90, 2, 3, generator=g) * torch.tensor([9.0, 8.0, 4.0]) - 1.5).cuda().requires_grad_()
    points.data[0, 0, 0] = float("nan")
    out = lc4_kernels.tda_attention(q, k, v, points, backend="cuda")
    sampled = lc4_kernels.trilinear_sample(k, points.repeat_interleave(2, dim=2), backend="cuda")
    (out.float().sum() + sampled.float().sum()).backward()
    torch.cuda.synchronize()


for deterministic in (False, True):
    torch.use_deterministic_algorithms(deterministic)
    for dtype in lc4_kernels.get_backend("cuda").dtypes:
        step(dtype)
print("cuda small step: ok")
