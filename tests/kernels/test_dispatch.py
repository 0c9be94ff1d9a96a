"""Backend choice: auto, forced by argument or environment, visible through backend_for."""
import pytest
import torch

import lc4_kernels
from lc4_kernels import backends

from .cases import attention_inputs

needs_cpu = pytest.mark.skipif("cpu" not in lc4_kernels.available_backends(), reason="compiled cpu backend not built")


def test_reference_is_always_available_and_last():
    names = lc4_kernels.available_backends()
    assert names[-1] == "reference"


@needs_cpu
def test_auto_prefers_the_fused_cpu_backend_and_falls_back_to_reference():
    q, k, v, points = attention_inputs()
    assert lc4_kernels.backend_for("tda_attention", q, k, v, points) == "cpu"
    half = [t.bfloat16() for t in (q, k, v)]
    assert lc4_kernels.backend_for("tda_attention", *half, points) == "reference"
    out = lc4_kernels.tda_attention(*half, points)  # auto never fails where the reference works
    assert out.dtype == torch.bfloat16


@needs_cpu
def test_environment_variable_and_argument_force_a_backend(monkeypatch):
    q, k, v, points = attention_inputs()
    monkeypatch.setenv("LC4_BACKEND", "reference")
    assert lc4_kernels.backend_for("tda_attention", q, k, v, points) == "reference"
    assert lc4_kernels.backend_for("tda_attention", q, k, v, points, backend="cpu") == "cpu"
    monkeypatch.setenv("LC4_BACKEND", "auto")
    assert lc4_kernels.backend_for("tda_attention", q, k, v, points) == "cpu"
    monkeypatch.setenv("LC4_BACKEND", " ")  # emptied, as unset
    assert lc4_kernels.backend_for("tda_attention", q, k, v, points) == "cpu"


def test_the_chosen_backend_is_the_one_that_runs(monkeypatch):
    calls = []

    def spy_attention(q, k, v, points, scale):
        calls.append(scale)
        return lc4_kernels.tda_attention(q, k, v, points, scale, backend="reference")

    backends.register_backend(backends.Backend(
        name="spy", priority=1000, device_types=frozenset({"cpu"}), dtypes=frozenset({torch.float64}),
        trilinear_sample=lambda value, points: None, tda_attention=spy_attention, max_head_dim=16))
    try:
        q, k, v, points = attention_inputs(dtype=torch.float64)
        assert lc4_kernels.backend_for("tda_attention", q, k, v, points) == "spy"
        lc4_kernels.tda_attention(q, k, v, points)
        assert calls == [8 ** -0.5]
        wide = attention_inputs(d=32, dtype=torch.float64)
        assert lc4_kernels.backend_for("tda_attention", *wide) != "spy"  # head dim above its limit
        assert lc4_kernels.backend_for("tda_attention", *attention_inputs()) != "spy"  # float32 not declared
    finally:
        backends.unregister_backend("spy")


def test_non_deterministic_backends_are_skipped_in_deterministic_mode():
    backends.register_backend(backends.Backend(
        name="racy", priority=1000, device_types=frozenset({"cpu"}), dtypes=frozenset({torch.float32}),
        trilinear_sample=None, tda_attention=None, deterministic=False))
    try:
        q, k, v, points = attention_inputs()
        assert lc4_kernels.backend_for("tda_attention", q, k, v, points) == "racy"
        torch.use_deterministic_algorithms(True)
        assert lc4_kernels.backend_for("tda_attention", q, k, v, points) != "racy"
    finally:
        torch.use_deterministic_algorithms(False)
        backends.unregister_backend("racy")
