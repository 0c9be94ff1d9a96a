"""Backend choice: auto, forced by argument or environment, visible through backend_for."""
import pytest
import torch

import lc4_kernels
from lc4_kernels import backends

from .cases import assert_close, attention_inputs, sample_inputs, selected_for_testing

needs_cpu = pytest.mark.skipif("cpu" not in lc4_kernels.available_backends(), reason="compiled cpu backend not built")


def test_reference_is_always_available_and_last():
    names = lc4_kernels.available_backends()
    assert names[-1] == "reference"


@needs_cpu
def test_auto_prefers_the_fused_cpu_backend_and_falls_back_to_reference():
    q, k, v, points = attention_inputs()
    assert lc4_kernels.backend_for("tda_attention", q, k, v, points) == "cpu"
    half = [t.bfloat16() for t in (q, k, v)]
    assert lc4_kernels.backend_for("tda_attention", *half, points) == "cpu"
    meta = [t.to("meta") for t in (q, k, v, points)]
    assert lc4_kernels.backend_for("tda_attention", *meta) == "reference"
    out = lc4_kernels.tda_attention(*meta)  # auto never fails where the reference works
    assert out.shape == q.shape and out.device.type == "meta"


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


def _spy_backend(name, **overrides):
    fields = dict(name=name, priority=1000, device_types=frozenset({"cpu"}), dtypes=frozenset({torch.float32}),
                  trilinear_sample=lambda value, points: lc4_kernels.trilinear_sample(value, points, backend="reference"),
                  tda_attention=lambda q, k, v, points, scale: lc4_kernels.tda_attention(q, k, v, points, scale,
                                                                                          backend="reference"))
    fields.update(overrides)
    return backends.Backend(**fields)


def test_backend_for_sampling_under_autocast_names_the_backend_that_runs():
    # Under autocast the value runs in the autocast dtype, so backend_for must choose for that
    # dtype too: a float32-only backend is not the one a bfloat16 call runs.
    backends.register_backend(_spy_backend("spy32"))
    try:
        value, points = sample_inputs(G=1)
        assert lc4_kernels.backend_for("trilinear_sample", value, points) == "spy32"
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert lc4_kernels.backend_for("trilinear_sample", value, points) != "spy32"
            assert lc4_kernels.backend_for("tda_attention", *attention_inputs()) != "spy32"
    finally:
        backends.unregister_backend("spy32")


def test_a_device_check_that_refuses_skips_the_backend_and_says_why():
    def device_check(device, dtype):
        return "float64 needs a newer device" if dtype == torch.float64 else None

    backends.register_backend(_spy_backend("picky", dtypes=frozenset({torch.float32, torch.float64}),
                                           device_check=device_check))
    try:
        assert lc4_kernels.backend_for("tda_attention", *attention_inputs()) == "picky"
        double = attention_inputs(dtype=torch.float64)
        assert lc4_kernels.backend_for("tda_attention", *double) != "picky"
        with pytest.raises(ValueError, match="backend 'picky' cannot run these inputs: float64 needs a newer device"):
            lc4_kernels.tda_attention(*double, backend="picky")
    finally:
        backends.unregister_backend("picky")


def test_a_backend_that_is_not_available_is_neither_listed_nor_chosen():
    backends.register_backend(_spy_backend("absent", is_available=lambda: "its library is not installed"))
    try:
        assert "absent" not in lc4_kernels.available_backends()
        assert lc4_kernels.backend_for("tda_attention", *attention_inputs()) != "absent"
        with pytest.raises(ValueError, match="backend 'absent' cannot run these inputs: its library is not installed"):
            lc4_kernels.tda_attention(*attention_inputs(), backend="absent")
    finally:
        backends.unregister_backend("absent")


def test_backend_names_ignore_case_and_surrounding_spaces(monkeypatch):
    q, k, v, points = attention_inputs()
    assert lc4_kernels.backend_for("tda_attention", q, k, v, points, backend=" Reference ") == "reference"
    monkeypatch.setenv("LC4_BACKEND", "REFERENCE")
    assert lc4_kernels.backend_for("tda_attention", q, k, v, points) == "reference"


def _declared_cases():
    cases = []
    for name in filter(selected_for_testing, lc4_kernels.available_backends()):
        backend = lc4_kernels.get_backend(name)
        for dtype in sorted(backend.dtypes, key=str):
            if backend.unsupported_reason(torch.device("cpu"), dtype, None) is None:
                cases.append((name, dtype))
    return cases


@pytest.mark.parametrize("backend,dtype", _declared_cases(), ids=str)
def test_every_dtype_a_backend_declares_runs(backend, dtype):
    # A backend that declared a dtype its kernels refuse would be chosen by auto and then fail.
    value, sample_points = sample_inputs(B=1, P=7, G=2, C=4, dtype=dtype, special_fraction=0)
    sampled = lc4_kernels.trilinear_sample(value, sample_points, backend=backend)
    expected = lc4_kernels.trilinear_sample(value.double(), sample_points.double(), backend="reference")
    assert sampled.dtype == dtype
    assert_close(sampled, expected.to(dtype), dtype, f"{backend} sample")
    if lc4_kernels.get_backend(backend).unsupported_reason(torch.device("cpu"), dtype, 8) is None:
        inputs = attention_inputs(Nq=5, Nk=6, heads=2, d=8, G=1, dtype=dtype, special_fraction=0)
        out = lc4_kernels.tda_attention(*inputs, backend=backend)
        expected = lc4_kernels.tda_attention(*[t.double() for t in inputs], backend="reference")
        assert out.dtype == dtype
        assert_close(out, expected.to(dtype), dtype, f"{backend} attention")


@pytest.mark.skipif(lc4_kernels.extension_error is not None, reason="compiled extension missing")
def test_cuda_bfloat16_needs_compute_capability_8(monkeypatch):
    # Asked of the device that runs the call: faked here, so that it runs without a GPU.
    from lc4_kernels import compiled
    device = torch.device("cuda", 0)
    monkeypatch.delenv(compiled.FORCE_SM70_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert "bfloat16 needs compute capability 8.0" in compiled._cuda_device_check(device, torch.bfloat16)
    assert compiled._cuda_device_check(device, torch.float16) is None
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert compiled._cuda_device_check(device, torch.bfloat16) is None
    monkeypatch.setenv(compiled.FORCE_SM70_ENV, "1")
    assert "sm_70 paths" in compiled._cuda_device_check(device, torch.bfloat16)
    assert compiled._cuda_device_check(device, torch.float32) is None


def test_under_autocast_half_precision_coordinates_reach_the_backend_as_float32():
    seen = []

    def sample(value, points):
        seen.append(("sample", value.dtype, points.dtype))
        return lc4_kernels.trilinear_sample(value, points, backend="reference")

    def attention(q, k, v, points, scale):
        seen.append(("attention", q.dtype, points.dtype))
        return lc4_kernels.tda_attention(q, k, v, points, scale, backend="reference")

    backends.register_backend(_spy_backend("spy16", dtypes=frozenset({torch.bfloat16}), trilinear_sample=sample,
                                           tda_attention=attention))
    try:
        value, sample_points = sample_inputs(special_fraction=0)
        q, k, v, points = attention_inputs(special_fraction=0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            lc4_kernels.trilinear_sample(value, sample_points.bfloat16())
            lc4_kernels.tda_attention(q, k, v, points.bfloat16())
        assert seen == [("sample", torch.bfloat16, torch.float32), ("attention", torch.bfloat16, torch.float32)]
    finally:
        backends.unregister_backend("spy16")


def test_max_head_dim_is_inclusive():
    backends.register_backend(_spy_backend("upto16", max_head_dim=16))
    try:
        assert lc4_kernels.backend_for("tda_attention", *attention_inputs(d=16)) == "upto16"
        assert lc4_kernels.backend_for("tda_attention", *attention_inputs(d=17)) != "upto16"
    finally:
        backends.unregister_backend("upto16")
