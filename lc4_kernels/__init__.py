"""lc4_kernels: fused kernels for L-C4's temporally deformable attention (TDA).

Public ops: :func:`trilinear_sample` (seed Eq. 2) and :func:`tda_attention` (Eq. 1-3).
Backends: ``reference`` (pure PyTorch, the oracle); from the compiled extension ``cpu``, ``cuda``
(when built with a CUDA toolkit) and the test-only ``cuda_emu``; ``triton`` on NVIDIA GPUs.
:func:`available_backends` lists those that can run here, :func:`backend_for` tells which one a
call would use, ``backend=`` or ``LC4_BACKEND`` forces one.
"""
from . import compiled as _compiled  # registers the compiled backends it finds
try:  # registers the triton backend; it reports itself unavailable without triton or a GPU
    from . import triton as _triton  # noqa: F401
except ImportError:  # pragma: no cover - a torch without torch.library.custom_op
    pass
from .backends import available_backends, get_backend
from .ops import backend_for, tda_attention, trilinear_sample

extension_error = _compiled.EXTENSION_ERROR

__all__ = ["trilinear_sample", "tda_attention", "available_backends", "backend_for", "get_backend",
           "extension_error"]
