"""The ``triton`` backend: fused TDA sampling and attention kernels written in Triton, with
hand-written backward passes, for NVIDIA GPUs of compute capability 8.0 and up.

Importing this package needs torch only: the ops are registered here and the kernels are
imported on the first call. With ``TRITON_INTERPRET=1`` (set before the first call) the same
kernels run on CPU tensors in Triton's interpreter, for tests; ``auto`` never picks it there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .. import backends
from . import ops
from .environment import INTERPRET, unavailable_reason

MAX_HEAD_DIM = 256


@dataclass
class TritonBackend(backends.Backend):
    def unsupported_reason(self, device: torch.device, dtype: torch.dtype, head_dim: Optional[int]) -> Optional[str]:
        reason = super().unsupported_reason(device, dtype, head_dim)
        if reason is None and head_dim is not None and device.type == "cpu" and dtype == torch.bfloat16:
            # The interpreter computes tl.dot in numpy, which sees bfloat16 as its uint16 bits.
            return "the Triton interpreter cannot run bfloat16 tl.dot (attention in bfloat16 needs a GPU)"
        return reason


backends.register_backend(TritonBackend(
    name="triton",
    priority=20,
    device_types=frozenset({"cuda", "cpu"} if INTERPRET else {"cuda"}),
    dtypes=frozenset({torch.float32, torch.float16, torch.bfloat16}),
    trilinear_sample=ops.KERNELS.trilinear_sample,
    tda_attention=ops.KERNELS.tda_attention,
    max_head_dim=MAX_HEAD_DIM,
    deterministic=True,  # under deterministic algorithms the dvalue scatter runs without atomics
    auto_selectable=not INTERPRET,
    is_available=unavailable_reason,
))
