"""Whether the Triton backend can run here, decided without importing Triton's kernels.

``TRITON_INTERPRET=1`` must be set before any kernel is defined (Triton reads it when a
``@triton.jit`` function is created), so this module only reads the variable; the kernel
modules are imported lazily, on the first call that needs them.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Optional

import torch

MIN_COMPUTE_CAPABILITY = (8, 0)

INTERPRET = os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")

_unavailable_reason: Optional[str] = None
_checked = False


def _find_unavailable_reason() -> Optional[str]:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    if INTERPRET:
        return None
    if not torch.cuda.is_available():
        return "triton needs a CUDA GPU (or TRITON_INTERPRET=1 for the CPU interpreter)"
    capability = torch.cuda.get_device_capability()
    if capability < MIN_COMPUTE_CAPABILITY:
        return (f"triton backend needs compute capability {MIN_COMPUTE_CAPABILITY[0]}.{MIN_COMPUTE_CAPABILITY[1]}+, "
                f"found {capability[0]}.{capability[1]}")
    return None


def unavailable_reason() -> Optional[str]:
    """None when the backend can run here, else why not (checked once per process)."""
    global _unavailable_reason, _checked
    if not _checked:
        _unavailable_reason = _find_unavailable_reason()
        _checked = True
    return _unavailable_reason
