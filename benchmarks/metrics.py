"""Work counts behind the TFLOP/s and GB/s columns.

Attention FLOPs per batch and head: ``4 * Nq * Nk * d`` forward (two matrix products of
``2 * Nq * Nk * d``); the backward counts 2.5x the forward (five such products), so a
forward+backward is 3.5x. Sampling and softmax are not counted.

Sampling bytes, counted as the ideal traffic of a gather kernel (each of the 8 corners read once
per point and channel, nothing cached): forward reads the coordinates and 8 corner vectors and
writes the output; backward reads the coordinates, the output gradient and the 8 corner vectors
again (for the coordinate gradient), writes 8 corner gradients into a zero-initialised value
gradient, and writes the coordinate gradient.
"""
from __future__ import annotations

from .shapes import Case

BACKWARD_FLOP_FACTOR = 2.5
COORDINATE_BYTES = 3 * 4  # (x, y, t) in float32


def attention_flops(case: Case) -> dict[str, float]:
    forward = 4.0 * case.batch * case.heads * case.nq * case.nk * case.head_dim
    return {"fwd": forward, "fwd_bwd": forward * (1 + BACKWARD_FLOP_FACTOR)}


def sample_bytes(case: Case, element_size: int) -> dict[str, float]:
    points = case.batch * case.nk * case.groups
    channels = case.channels // case.groups
    vector = channels * element_size
    forward = points * (COORDINATE_BYTES + 8 * vector + vector)
    value_grad_init = case.batch * case.frames * case.height * case.width * case.channels * element_size
    backward = points * (COORDINATE_BYTES + vector + 8 * vector + 8 * vector + COORDINATE_BYTES) + value_grad_init
    return {"fwd": float(forward), "fwd_bwd": float(forward + backward)}


def work_for(op: str, case: Case, element_size: int) -> dict:
    """{'unit': 'TFLOP/s' or 'GB/s', 'fwd': amount, 'fwd_bwd': amount} in FLOPs or bytes."""
    if op == "tda_attention":
        return {"unit": "TFLOP/s", "scale": 1e12, **attention_flops(case)}
    return {"unit": "GB/s", "scale": 1e9, **sample_bytes(case, element_size)}
