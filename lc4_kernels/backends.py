"""Backend registry and dispatch, in the manner of xformers' fmha ops.

Each backend declares what it supports (devices, dtypes, head dims, determinism) and a
priority; ``auto`` takes the highest-priority backend that fits the inputs and ends at the
reference path, which fits everything. ``backend=`` or the ``LC4_BACKEND`` environment variable
forces one; ``backend_for`` tells which backend a call would use.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from . import reference

ENV_VAR = "LC4_BACKEND"
AUTO = "auto"


@dataclass
class Backend:
    name: str
    priority: int  # higher is preferred by ``auto``
    device_types: frozenset
    dtypes: frozenset
    trilinear_sample: Callable  # (value6, points4) -> (B, P, G, C)
    tda_attention: Callable  # (q, k, v, points, scale) -> (B, Nq, heads, d)
    max_head_dim: Optional[int] = None
    deterministic: bool = True
    auto_selectable: bool = True  # test-only backends (e.g. emulators) say False
    is_available: Callable[[], Optional[str]] = field(default=lambda: None)  # None or why not
    # Per-device limits found only on the device itself (e.g. bfloat16 needs sm_80): asked lazily,
    # so that importing the package never initialises an accelerator.
    device_check: Optional[Callable[[torch.device, torch.dtype], Optional[str]]] = None

    def unsupported_reason(self, device: torch.device, dtype: torch.dtype, head_dim: Optional[int]) -> Optional[str]:
        """None when this backend can run inputs of this device/dtype/head dim, else why not."""
        missing = self.is_available()
        if missing:
            return missing
        if device.type not in self.device_types:
            return f"device {device.type} not in {sorted(self.device_types)}"
        if dtype not in self.dtypes:
            return f"dtype {dtype} not supported"
        if head_dim is not None and self.max_head_dim is not None and head_dim > self.max_head_dim:
            return f"head dim {head_dim} > {self.max_head_dim}"
        if torch.are_deterministic_algorithms_enabled() and not self.deterministic:
            return "not deterministic"
        if self.device_check is not None:
            return self.device_check(device, dtype)
        return None


_REGISTRY: dict[str, Backend] = {}


def register_backend(backend: Backend) -> None:
    _REGISTRY[backend.name] = backend


def unregister_backend(name: str) -> None:
    _REGISTRY.pop(name, None)


def get_backend(name: str) -> Backend:
    if name not in _REGISTRY:
        raise ValueError(f"unknown backend {name!r}; known: {', '.join([AUTO, *sorted(_REGISTRY)])}")
    return _REGISTRY[name]


def available_backends() -> list[str]:
    """Names of the backends this install can run, most preferred first."""
    usable = [b for b in _REGISTRY.values() if b.is_available() is None]
    return [b.name for b in sorted(usable, key=lambda b: -b.priority)]


def requested_backend(backend: Optional[str]) -> str:
    # An empty LC4_BACKEND counts as unset, as shells clear variables by emptying them.
    name = backend if backend is not None else os.environ.get(ENV_VAR, "").strip() or AUTO
    name = name.strip().lower()
    if name != AUTO:
        get_backend(name)  # raises ValueError for an unknown name
    return name


def select(backend: Optional[str], device: torch.device, dtype: torch.dtype, head_dim: Optional[int]) -> Backend:
    name = requested_backend(backend)
    if name != AUTO:
        chosen = get_backend(name)
        reason = chosen.unsupported_reason(device, dtype, head_dim)
        if reason:
            raise ValueError(f"backend {name!r} cannot run these inputs: {reason}")
        return chosen
    for candidate in sorted(_REGISTRY.values(), key=lambda b: -b.priority):
        if candidate.auto_selectable and candidate.unsupported_reason(device, dtype, head_dim) is None:
            return candidate
    return _REGISTRY["reference"]


register_backend(Backend(
    name="reference",
    priority=0,
    device_types=frozenset({"cpu", "cuda", "meta", "mps", "xpu"}),
    dtypes=frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64}),
    trilinear_sample=reference.trilinear_sample,
    tda_attention=reference.tda_attention,
))
