"""The cuda backend's selectable paths (LC4_CUDA_PRESAMPLE, LC4_CUDA_FORWARD,
LC4_CUDA_QUERY_SPLITS, LC4_CUDA_DQ, LC4_CUDA_DKV,
LC4_CUDA_SCATTER, LC4_CUDA_PREFETCH) against the reference: through the host emulation (cuda_emu) everywhere,
and through the real kernels where a GPU is visible (make gpu-check runs this file)."""
import pytest
import torch

import lc4_kernels

from .cases import assert_close, attention_inputs, deterministic_algorithms, run_with_grads

pytestmark = pytest.mark.skipif("cuda_emu" not in lc4_kernels.available_backends(),
                                reason=f"compiled extension missing: {lc4_kernels.extension_error}")


def attention(backend):
    return lambda q, k, v, p: lc4_kernels.tda_attention(q, k, v, p, backend=backend)


KERNEL_BUILDS = [("cuda_emu", "cpu")] + ([("cuda", "cuda")] if "cuda" in lc4_kernels.available_backends() else [])


@pytest.mark.parametrize("backend,device", KERNEL_BUILDS, ids=[b for b, _ in KERNEL_BUILDS])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_every_forward_path_matches_reference(backend, device, dtype, monkeypatch):
    # The forward reads k~/v~ sampled beforehand unless LC4_CUDA_PRESAMPLE=0, and in half
    # precision (d <= 128) keeps O in registers over one pass of the keys, unless LC4_CUDA_FORWARD
    # asks for two passes or for O in shared memory (read on every call). Nq = 37: the 64-row
    # register block has a partial warp and a warp without rows; Nk = 45: two key tiles, so the
    # one-pass kernel rescales O.
    inputs = attention_inputs(Nq=37, Nk=45, heads=4, d=40, G=2, T=2, H=5, W=6, dtype=dtype, device=device)
    with torch.no_grad():
        inputs[3][0, 0, 0] = float("nan")
        inputs[3][0, 1, 1] = 1e30
    ref_out, ref_grads = run_with_grads(attention("reference"), [t.double().cpu() for t in inputs])
    for presample in ("1", "0"):
        for forward in ("", "registers", "two_pass", "shared"):
            monkeypatch.setenv("LC4_CUDA_PRESAMPLE", presample)
            monkeypatch.setenv("LC4_CUDA_FORWARD", forward)
            flags = f"LC4_CUDA_PRESAMPLE={presample}, LC4_CUDA_FORWARD={forward}"
            out, grads = run_with_grads(attention(backend), inputs)
            assert torch.isfinite(out).all()
            assert_close(out.cpu(), ref_out.to(dtype), dtype, f"out, {flags}")
            for name, g, ref_g in zip(("dq", "dk", "dv", "dpoints"), grads, ref_grads):
                assert_close(g.cpu(), ref_g.to(g.dtype), dtype, f"{name}, {flags}")
    monkeypatch.setenv("LC4_CUDA_FORWARD", "fast")
    with pytest.raises(ValueError, match="LC4_CUDA_FORWARD must be registers, two_pass or shared, got 'fast'"):
        run_with_grads(attention(backend), inputs)


@pytest.mark.parametrize("backend,device", KERNEL_BUILDS, ids=[b for b, _ in KERNEL_BUILDS])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_dkv_blocks_sharing_the_queries_add_up(backend, device, dtype, monkeypatch):
    # 300 queries are 10 blocks of 32 (float32 and the d = 40 WMMA tiles): the dk~/dv~ kernel
    # splits them between blocks (LC4_CUDA_QUERY_SPLITS, else chosen to fill the device); 3 and
    # 4 splits leave a shorter last split, 10 one block each.
    inputs = attention_inputs(Nq=300, Nk=45, heads=2, d=40, G=1, T=2, H=3, W=4, dtype=dtype, device=device)
    ref_out, ref_grads = run_with_grads(attention("reference"), [t.double().cpu() for t in inputs])
    for splits in ("1", "3", "4", "10", "0"):
        monkeypatch.setenv("LC4_CUDA_QUERY_SPLITS", splits)
        _, grads = run_with_grads(attention(backend), inputs)
        for name, g, ref_g in zip(("dq", "dk", "dv", "dpoints"), grads, ref_grads):
            assert_close(g.cpu(), ref_g.to(g.dtype), dtype, f"{name}, LC4_CUDA_QUERY_SPLITS={splits}")
    monkeypatch.setenv("LC4_CUDA_QUERY_SPLITS", "many")
    with pytest.raises(ValueError, match="LC4_CUDA_QUERY_SPLITS must be a non-negative integer, got 'many'"):
        run_with_grads(attention(backend), inputs)


@pytest.mark.parametrize("backend,device", KERNEL_BUILDS, ids=[b for b, _ in KERNEL_BUILDS])
@pytest.mark.parametrize("d", [40, 80, 128, 160])
def test_every_backward_path_matches_reference(backend, device, d, monkeypatch):
    # float16 up to d = 128 takes dq in a tensor-core kernel of its own (which also writes delta),
    # unless LC4_CUDA_DQ=fused puts it back into the dk~/dv~ kernel as atomics (or the float dq
    # kernel when deterministic); d = 160 always takes the fused path. With dq separate, up to
    # d = 80 dk~/dv~ come from the register kernel (16 keys a warp) unless LC4_CUDA_DKV=shared.
    # Nq = 70: a partial last query tile (of 32 and of 64 rows) and warps without rows; Nk = 45:
    # a partial last key tile, and in the register kernel a warp without keys.
    inputs = attention_inputs(Nq=70, Nk=45, heads=2, d=d, G=1, T=2, H=3, W=4, dtype=torch.float16, device=device)
    ref_out, ref_grads = run_with_grads(attention("reference"), [t.double().cpu() for t in inputs])
    paths = [("", ""), ("separate", "registers"), ("separate", "shared"), ("fused", "")]
    for deterministic in (False, True):
        for dq_path, dkv_path in paths:
            monkeypatch.setenv("LC4_CUDA_DQ", dq_path)
            monkeypatch.setenv("LC4_CUDA_DKV", dkv_path)
            flags = f"LC4_CUDA_DQ={dq_path}, LC4_CUDA_DKV={dkv_path}, deterministic={deterministic}"
            with deterministic_algorithms(deterministic):
                out, grads = run_with_grads(attention(backend), inputs)
            assert_close(out.cpu(), ref_out.half(), torch.float16, f"out, {flags}")
            for name, g, ref_g in zip(("dq", "dk", "dv", "dpoints"), grads, ref_grads):
                assert_close(g.cpu(), ref_g.to(g.dtype), torch.float16, f"{name}, {flags}")
    for variable, value, expected in (("LC4_CUDA_DQ", "atomic", "separate or fused"),
                                      ("LC4_CUDA_DKV", "fast", "registers or shared")):
        monkeypatch.setenv("LC4_CUDA_DQ", "")
        monkeypatch.setenv("LC4_CUDA_DKV", "")
        monkeypatch.setenv(variable, value)
        with pytest.raises(ValueError, match=f"{variable} must be {expected}, got '{value}'"):
            run_with_grads(attention(backend), inputs)


@pytest.mark.parametrize("backend,device", KERNEL_BUILDS, ids=[b for b, _ in KERNEL_BUILDS])
@pytest.mark.parametrize("d", [20, 40, 80, 128])
def test_tiles_loaded_ahead_or_not_match_reference(backend, device, d, monkeypatch):
    # The half-precision kernels that read whole tiles (the register forwards over pre-sampled
    # keys, the separate dq, the register dk~/dv~) load the next tile into registers during the
    # current one's products unless LC4_CUDA_PREFETCH=off. Nk = 45: two key tiles of 32 (three of
    # 16 in dq at d = 128), the last partial; Nq = 300: ten query tiles of 32 in one dk~/dv~ block
    # (one split) or 4/4/2 (three), the last partial. d = 20 rows are not 16-byte multiples: the
    # tiles are copied element by element when stored. d = 40 and 80 (SD1.5's 64x64 and 32x32
    # layers) split a tile's 16-byte chunks unevenly over the threads. d = 128 is past
    # kPrefetchMaxWidth: its tiles are loaded in turn either way.
    inputs = attention_inputs(Nq=300, Nk=45, heads=2, d=d, G=1, T=2, H=3, W=4, dtype=torch.float16, device=device)
    ref_out, ref_grads = run_with_grads(attention("reference"), [t.double().cpu() for t in inputs])
    for prefetch in ("", "on", "off"):
        for forward, splits in (("registers", "1"), ("two_pass", "3")):
            monkeypatch.setenv("LC4_CUDA_PREFETCH", prefetch)
            monkeypatch.setenv("LC4_CUDA_FORWARD", forward)
            monkeypatch.setenv("LC4_CUDA_QUERY_SPLITS", splits)
            flags = f"LC4_CUDA_PREFETCH={prefetch}, LC4_CUDA_FORWARD={forward}, LC4_CUDA_QUERY_SPLITS={splits}"
            out, grads = run_with_grads(attention(backend), inputs)
            assert_close(out.cpu(), ref_out.half(), torch.float16, f"out, {flags}")
            for name, g, ref_g in zip(("dq", "dk", "dv", "dpoints"), grads, ref_grads):
                assert_close(g.cpu(), ref_g.to(g.dtype), torch.float16, f"{name}, {flags}")
    monkeypatch.setenv("LC4_CUDA_PREFETCH", "1")
    with pytest.raises(ValueError, match="LC4_CUDA_PREFETCH must be on or off, got '1'"):
        run_with_grads(attention(backend), inputs)


@pytest.mark.parametrize("backend,device", KERNEL_BUILDS, ids=[b for b, _ in KERNEL_BUILDS])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_both_scatters_match_reference(backend, device, dtype, monkeypatch):
    # dk~, dv~ go back to the maps by segments of the sorted corner table (the default, and always
    # when deterministic: dk, dv written once in the inputs' dtype) or by float32 atomics
    # (LC4_CUDA_SCATTER=atomic). G = 2 groups of 2 heads; a NaN and a far point weigh nothing (the
    # table's sentinel key); half the points share one spot, so their 8 voxels get runs of ~30 entries.
    inputs = attention_inputs(Nq=37, Nk=60, heads=4, d=40, G=2, T=2, H=3, W=4, dtype=dtype, device=device)
    with torch.no_grad():
        inputs[3][0, :30, 0] = torch.tensor([1.25, 0.5, 0.75])
        inputs[3][0, 30, 1] = float("nan")
        inputs[3][0, 31, 0] = 1e30
    ref_out, ref_grads = run_with_grads(attention("reference"), [t.double().cpu() for t in inputs])
    for deterministic, scatter in ((False, ""), (False, "segments"), (False, "atomic"), (True, "")):
        monkeypatch.setenv("LC4_CUDA_SCATTER", scatter)
        flags = f"LC4_CUDA_SCATTER={scatter}, deterministic={deterministic}"
        with deterministic_algorithms(deterministic):
            _, grads = run_with_grads(attention(backend), inputs)
        for name, g, ref_g in zip(("dq", "dk", "dv", "dpoints"), grads, ref_grads):
            assert_close(g.cpu(), ref_g.to(g.dtype), dtype, f"{name}, {flags}")
    monkeypatch.setenv("LC4_CUDA_SCATTER", "atomic")
    with deterministic_algorithms(), pytest.raises(RuntimeError, match="LC4_CUDA_SCATTER=atomic: .* not deterministic"):
        run_with_grads(attention(backend), inputs)
    monkeypatch.setenv("LC4_CUDA_SCATTER", "sorted")
    with pytest.raises(ValueError, match="LC4_CUDA_SCATTER must be segments or atomic, got 'sorted'"):
        run_with_grads(attention(backend), inputs)
