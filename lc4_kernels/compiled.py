"""Loads the compiled extension (``lc4_kernels._C``), which registers the ``lc4::`` ops through
TORCH_LIBRARY, and gives those ops what torch needs around them: autograd through the
hand-written backward ops, fake kernels so that ``torch.compile`` traces them, and vmap rules.

Backends: ``cpu`` (csrc/cpu), ``cuda`` (csrc/cuda, CUDA tensors, when the extension was built
with CUDA) and the test-only ``cuda_emu``: the same CUDA kernel sources built by the host compiler
and run on CPU tensors through ``lc4_emu::`` ops of the same schemas (never chosen by ``auto``).

Without the extension (no compiler, build skipped) only the reference backend is available,
and ``EXTENSION_ERROR`` says why.
"""
from __future__ import annotations

import os
import warnings

import torch

from . import autograd, backends, batching

EXTENSION_ERROR = None
try:
    from . import _C  # noqa: F401  (importing registers the ops)
except ImportError as exc:  # pragma: no cover - exercised on installs without a build
    EXTENSION_ERROR = (f"lc4_kernels._C is not built ({exc}); only the 'reference' backend is available. "
                       "Build it with `pip install -e . --no-build-isolation` (needs a C++ compiler and ninja).")
    warnings.warn(EXTENSION_ERROR, stacklevel=2)


# The ops each namespace registers; their order is that of ``autograd.Launchers``.
_OP_NAMES = ("trilinear_sample", "trilinear_sample_backward", "tda_attention", "tda_attention_backward")


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _register_op_support(namespace: str) -> None:
    ops = getattr(torch.ops, namespace)

    @torch.library.register_fake(f"{namespace}::trilinear_sample")
    def _(value, points):
        B, _, _, _, G, C = value.shape
        return value.new_empty((B, points.shape[1], G, C))

    @torch.library.register_fake(f"{namespace}::trilinear_sample_backward")
    def _(grad_out, value, points):
        return _contiguous_like(value), _contiguous_like(points)

    @torch.library.register_fake(f"{namespace}::tda_attention")
    def _(q, k, v, points, scale):
        B, Nq, heads, _ = q.shape
        return _contiguous_like(q), q.new_empty((B, heads, Nq), dtype=_accumulation_dtype(q.dtype))

    @torch.library.register_fake(f"{namespace}::tda_attention_backward")
    def _(grad_out, q, k, v, points, out, lse, scale):
        return _contiguous_like(q), _contiguous_like(k), _contiguous_like(v), _contiguous_like(points)

    autograd.register(f"{namespace}::trilinear_sample", ops.trilinear_sample_backward,
                      f"{namespace}::tda_attention", ops.tda_attention_backward)
    for name in _OP_NAMES:
        batching.register(f"{namespace}::{name}", name, getattr(ops, name).default)


def _contiguous_like(t: torch.Tensor) -> torch.Tensor:
    # The kernels return contiguous tensors whatever the inputs' strides.
    return torch.empty_like(t, memory_format=torch.contiguous_format)


def _below_autograd(op):
    """``op`` past its autograd kernel (the eager Function does autograd): a small forward call
    took 17 us instead of 30 on a 2-core x86 VM."""
    def call(*args):
        with torch._C._AutoDispatchBelowAutograd():
            return op(*args)
    return call


def _kernels(namespace: str) -> autograd.Kernels:
    ops = getattr(torch.ops, namespace)
    registered = autograd.Launchers(*(getattr(ops, name).default for name in _OP_NAMES))
    launchers = autograd.Launchers(*(_below_autograd(op) for op in (registered.sample, registered.sample_backward,
                                                                    registered.attention,
                                                                    registered.attention_backward)))
    return autograd.Kernels(launchers, registered)


CUDA_MAX_HEAD_DIM = 256  # kCudaMaxHeadDim in csrc/cuda/launchers.h
FORCE_SM70_ENV = "LC4_CUDA_FORCE_SM70"  # "1": a newer GPU takes the sm_70 (V100) paths, bfloat16 off


def _cuda_unavailable_reason():
    if not getattr(_C, "with_cuda", False):
        return "lc4_kernels._C was built without CUDA (torch without CUDA or no CUDA toolkit at build time)"
    if not torch.cuda.is_available():
        return "no CUDA device"
    return None


def _forced_sm70_check(device: torch.device, dtype: torch.dtype):
    """bfloat16 is off on the sm_70 paths, which a newer GPU or the emulation takes when forced."""
    if dtype == torch.bfloat16 and os.environ.get(FORCE_SM70_ENV) == "1":
        return f"bfloat16 is off on the sm_70 paths ({FORCE_SM70_ENV}=1)"
    return None


def _cuda_device_check(device: torch.device, dtype: torch.dtype):
    """bfloat16 needs sm_80 on the device that runs the call (and is off on the sm_70 paths)."""
    if dtype != torch.bfloat16:
        return None
    if forced := _forced_sm70_check(device, dtype):
        return forced
    if torch.cuda.get_device_capability(device) < (8, 0):
        return f"bfloat16 needs compute capability 8.0, {device} has {torch.cuda.get_device_capability(device)}"
    return None


def _register_backends() -> None:
    kernels = _kernels("lc4")
    backends.register_backend(backends.Backend(
        name="cpu",
        priority=10,
        device_types=frozenset({"cpu"}),
        dtypes=frozenset({torch.float32, torch.float64, torch.float16, torch.bfloat16}),
        trilinear_sample=kernels.trilinear_sample,
        tda_attention=kernels.tda_attention,
    ))
    backends.register_backend(backends.Backend(
        name="cuda",
        # Below triton, which auto takes on sm_80+ (where Triton has tensor cores); cuda is the
        # path for sm_70 (V100). Revisit when GPU benchmarks compare the two.
        priority=15,
        device_types=frozenset({"cuda"}),
        dtypes=frozenset({torch.float32, torch.float16, torch.bfloat16}),
        device_check=_cuda_device_check,
        trilinear_sample=kernels.trilinear_sample,
        tda_attention=kernels.tda_attention,
        max_head_dim=CUDA_MAX_HEAD_DIM,
        is_available=_cuda_unavailable_reason,
    ))
    emu_kernels = _kernels("lc4_emu")
    backends.register_backend(backends.Backend(
        name="cuda_emu",
        priority=1,
        device_types=frozenset({"cpu"}),
        dtypes=frozenset({torch.float32, torch.float16, torch.bfloat16}),
        device_check=_forced_sm70_check,
        trilinear_sample=emu_kernels.trilinear_sample,
        tda_attention=emu_kernels.tda_attention,
        max_head_dim=CUDA_MAX_HEAD_DIM,
        auto_selectable=False,
    ))


if EXTENSION_ERROR is None:
    _register_op_support("lc4")
    _register_op_support("lc4_emu")
    _register_backends()
