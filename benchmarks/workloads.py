"""What gets measured: for one case, each op through a backend or through its lower bound, as
zero-argument callables for the forward pass and for forward+backward.

Lower bounds (measured side by side with the backends):
- ``tda_attention``: PyTorch SDPA (whichever SDPA backend torch picks for the device) on k~/v~
  that were sampled once beforehand, so only the attention itself is timed;
- ``trilinear_sample``: ``F.grid_sample`` (5-D, bilinear = trilinear, zeros padding,
  ``align_corners=True``) on the volume and coordinates converted to its layout beforehand.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

import lc4_kernels as K
from lc4_kernels import reference

from .inputs import AttentionInputs, SampleInputs

ATTENTION = "tda_attention"
SAMPLE = "trilinear_sample"
OPS = (ATTENTION, SAMPLE)
LOWER_BOUND = {ATTENTION: "sdpa", SAMPLE: "grid_sample"}


@dataclass
class Workload:
    label: str  # backend name, or the lower bound's name
    is_lower_bound: bool
    leaves: list[torch.Tensor]  # tensors that receive gradients in forward+backward
    _forward: Callable[[], torch.Tensor]  # output in the op's layout
    grad_out: torch.Tensor

    def forward(self) -> torch.Tensor:
        with torch.no_grad():
            return self._forward()

    def forward_backward(self) -> None:
        self.clear_grads()
        self._forward().backward(self.grad_out)

    def clear_grads(self) -> None:
        for leaf in self.leaves:
            leaf.grad = None

    def output_and_grads(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        self.clear_grads()
        out = self._forward()
        out.backward(self.grad_out)
        return out.detach(), [leaf.grad for leaf in self.leaves]


def _leaves(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.detach().requires_grad_() for t in tensors]


def attention_workload(inputs: AttentionInputs, backend: str) -> Workload:
    q, k, v, points = leaves = _leaves(inputs.q, inputs.k, inputs.v, inputs.points)
    scale = inputs.scale
    return Workload(backend, False, leaves, lambda: K.tda_attention(q, k, v, points, scale, backend=backend),
                    inputs.grad_out)


def sdpa_workload(inputs: AttentionInputs) -> Workload:
    heads, groups = inputs.q.shape[2], inputs.points.shape[2]
    per_head_points = inputs.points.repeat_interleave(heads // groups, dim=2)
    with torch.no_grad():  # k~, v~ (B, Nk, heads, d), sampled outside the timed region
        k_sampled = reference.trilinear_sample(inputs.k, per_head_points)
        v_sampled = reference.trilinear_sample(inputs.v, per_head_points)

    def heads_first(t: torch.Tensor) -> torch.Tensor:  # (B, N, heads, d) -> (B, heads, N, d)
        return t.transpose(1, 2).contiguous()

    q, k_tilde, v_tilde = leaves = _leaves(heads_first(inputs.q), heads_first(k_sampled), heads_first(v_sampled))
    scale = inputs.scale

    def forward() -> torch.Tensor:
        out = F.scaled_dot_product_attention(q, k_tilde, v_tilde, scale=scale)
        return out.transpose(1, 2)  # back to (B, Nq, heads, d), a view

    return Workload(LOWER_BOUND[ATTENTION], True, leaves, forward, inputs.grad_out)


def sample_workload(inputs: SampleInputs, backend: str) -> Workload:
    value, points = leaves = _leaves(inputs.value, inputs.points)
    return Workload(backend, False, leaves, lambda: K.trilinear_sample(value, points, backend=backend),
                    inputs.grad_out)


def grid_sample_layout(value: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """value (B, T, H, W, G, C) -> (B*G, C, T, H, W); points (B, P, G, 3) in pixel units ->
    grid (B*G, 1, 1, P, 3) in [-1, 1] for ``align_corners=True``."""
    B, T, H, W, G, C = value.shape
    volume = value.permute(0, 4, 5, 1, 2, 3).reshape(B * G, C, T, H, W)
    points = points.to(torch.promote_types(points.dtype, value.dtype))
    sizes = torch.tensor([W, H, T], dtype=points.dtype, device=points.device)
    normalised = points * 2 / (sizes - 1).clamp(min=1) - 1
    grid = normalised.permute(0, 2, 1, 3).reshape(B * G, 1, 1, -1, 3)
    return volume.contiguous(), grid.to(value.dtype).contiguous()


def grid_sample_workload(inputs: SampleInputs) -> Workload:
    B, _, _, _, G, C = inputs.value.shape
    volume, grid = leaves = _leaves(*grid_sample_layout(inputs.value, inputs.points))

    def forward() -> torch.Tensor:
        out = F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        return out.reshape(B, G, C, -1).permute(0, 3, 1, 2)  # (B*G, C, 1, 1, P) -> (B, P, G, C)

    return Workload(LOWER_BOUND[SAMPLE], True, leaves, forward, inputs.grad_out)


def workloads_for(op: str, inputs, backends: list[str]) -> list[Workload]:
    """The lower bound first, then one workload per backend."""
    if op == ATTENTION:
        return [sdpa_workload(inputs), *(attention_workload(inputs, b) for b in backends)]
    return [grid_sample_workload(inputs), *(sample_workload(inputs, b) for b in backends)]


def op_arguments(op: str, inputs) -> tuple[torch.Tensor, ...]:
    """The tensors a call of ``op`` takes, for ``lc4_kernels.backend_for``."""
    if op == ATTENTION:
        return inputs.q, inputs.k, inputs.v, inputs.points
    return inputs.value, inputs.points


def head_dim(op: str, inputs) -> int | None:
    """What backends' head-dim limits apply to: the attention head dim; none for sampling."""
    return inputs.q.shape[-1] if op == ATTENTION else None
