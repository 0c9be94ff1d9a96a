"""The triton backend in half precision and in its own corner cases, against the reference.

Runs on a GPU as is, and on the CPU in the Triton interpreter (``TRITON_INTERPRET=1``, the second
process of ``make test``); where neither is possible every case is skipped (empty parameter set).
The float32 and float64 equivalence of every backend is in test_backends.py and test_sweep.py.
"""

import pytest
import torch

import lc4_kernels

from .cases import (assert_close, attention_inputs, compiled_backend_cases, deterministic_algorithms, run_with_grads,
                    sample_inputs)


def triton_cases(dtype, head_dim=None):
    return [case for case in compiled_backend_cases(dtype, head_dim) if case[0] == "triton"]


HALF_DTYPES = [torch.float16, torch.bfloat16]
ANY_DEVICE = triton_cases(torch.float32)
# Nq and Nk off the block sizes (16 to 128), several blocks each, G in {1, 2, heads}, d padded.
HALF_ATTENTION_SHAPES = [
    dict(d=8),
    dict(Nq=150, Nk=131, heads=4, d=40, G=2),
    dict(Nq=70, Nk=90, heads=2, d=64, G=2, T=2, H=6, W=7),
    dict(Nq=100, Nk=140, heads=2, d=80, G=1, T=2),  # SD1.5's 32x32 layers: the D_PAD 128 tiles
    dict(Nq=33, Nk=17, heads=2, d=160, G=1, T=1),
]


def _ids(shapes):
    return [",".join(f"{k}={v}" for k, v in s.items()) for s in shapes]


def scatter_mode():
    # Imported on use: the kernels must not be defined before TRITON_INTERPRET is read.
    from lc4_kernels.triton.sampling import scatter_mode as mode
    return mode()


def _attention(q, k, v, points):
    return lc4_kernels.tda_attention(q, k, v, points, backend="triton")


def _sample(value, points):
    return lc4_kernels.trilinear_sample(value, points, backend="triton")


def _half_cases(head_dim=None):
    return [(dtype, device) for dtype in HALF_DTYPES for _, device in triton_cases(dtype, head_dim)]


@pytest.mark.parametrize("shape", HALF_ATTENTION_SHAPES, ids=_ids(HALF_ATTENTION_SHAPES))
@pytest.mark.parametrize("dtype,device", _half_cases(head_dim=64), ids=str)
def test_half_precision_attention_matches_reference(shape, dtype, device):
    if ("triton", device) not in triton_cases(dtype, shape["d"]):
        pytest.skip(f"triton does not run {dtype} attention on {device}")
    inputs = attention_inputs(**shape, dtype=dtype, device=device)
    out, grads = run_with_grads(_attention, inputs)
    ref_out, ref_grads = run_with_grads(lambda *a: lc4_kernels.tda_attention(*a, backend="reference"),
                                        [t.double() for t in inputs])
    assert out.dtype == dtype and all(g.dtype == t.dtype for g, t in zip(grads, inputs))
    assert_close(out, ref_out.to(dtype), dtype, "out")
    for name, g, ref_g in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert_close(g, ref_g.to(dtype), dtype, name)
    # Coordinates are float32: their gradient sums half-precision products, so it is held to the
    # tolerance of the values' dtype, not to float32's.
    assert_close(grads[3].to(dtype), ref_grads[3].to(dtype), dtype, "dpoints")


def _tile_sets(head_dim: int, element_bytes: int, on_gpu: bool) -> list[dict]:
    """Block shapes of each attention kernel, grouped into sets: the i-th shape of each kernel,
    cycling through the kernels with fewer. In the interpreter every shape a GPU could launch (the
    fixed tables of every launch class, the small configuration, the autotuning grid); on a GPU
    those this run can launch (its launch class's table, the small configuration, the grid when
    autotuning) and that fit the device."""
    from lc4_kernels.triton import tuning
    head = tuning.padded_head_dim(head_dim)
    launch = shared = None
    if on_gpu:
        major, minor = torch.cuda.get_device_capability()
        launch, shared = tuning.launch_class(element_bytes, 10 * major + minor), tuning._shared_memory_limit()
    configs = {name: [c for c in tiling.launch_configs(launch, autotuned=tuning.AUTOTUNE or not on_gpu)
                      if not on_gpu or tiling.fits(c, head, element_bytes, shared)]
               for name, tiling in tuning.ATTENTION_TILING.items()}
    return [{name: found[i % len(found)] for name, found in configs.items()}
            for i in range(max(map(len, configs.values())))]


TILED_ATTENTION_SHAPES = [dict(Nq=150, Nk=131, heads=2, d=40, G=2), dict(Nq=150, Nk=131, heads=1, d=160, G=1, T=2)]


@pytest.mark.parametrize("shape", TILED_ATTENTION_SHAPES, ids=_ids(TILED_ATTENTION_SHAPES))
@pytest.mark.parametrize("dtype,device", [(torch.float32, device) for _, device in ANY_DEVICE]
                         + _half_cases(head_dim=64), ids=str)
def test_every_block_shape_of_the_gpu_launches_matches_reference(shape, dtype, device, monkeypatch):
    # The interpreter runs one configuration and a GPU run one per launch, so block shapes of the
    # fixed tables and the autotuning grid would otherwise first run on whichever GPU picks them.
    # Nq and Nk are off every block size and the queries are split, so each shape meets partial
    # blocks at both ends and empty splits.
    from lc4_kernels.triton import attention_kernels
    inputs = attention_inputs(**shape, dtype=dtype, device=device)
    ref_out, ref_grads = run_with_grads(lambda *a: lc4_kernels.tda_attention(*a, backend="reference"),
                                        [t.double() for t in inputs])
    monkeypatch.setenv("LC4_TRITON_QUERY_SPLITS", "3")
    tile_sets = _tile_sets(shape["d"], inputs[0].element_size(), device == "cuda")
    for tile_set in tile_sets:
        tiles = ", ".join(f"{name} {c.kwargs['BLOCK_M']}x{c.kwargs['BLOCK_N']}" for name, c in tile_set.items())
        with monkeypatch.context() as patch:
            for name, config in tile_set.items():
                patch.setattr(getattr(attention_kernels, name), "configs", [config])
            out, grads = run_with_grads(_attention, inputs)
        for what, got, want in zip(("out", "dq", "dk", "dv"), (out, *grads), (ref_out, *ref_grads)):
            assert_close(got, want.to(dtype), dtype, f"{what} with {tiles}")
        assert_close(grads[3].to(dtype), ref_grads[3].to(dtype), dtype, f"dpoints with {tiles}")
    assert len(tile_sets) >= (5 if device == "cpu" else 2)  # the tables' shapes, not the interpreter's one


@pytest.mark.parametrize("dtype,device", _half_cases(), ids=str)
def test_half_precision_sample_matches_reference(dtype, device):
    inputs = sample_inputs(B=2, P=150, G=2, C=40, T=3, H=4, W=5, dtype=dtype, device=device)
    out, (dvalue, dpoints) = run_with_grads(_sample, inputs)
    ref_out, (ref_dvalue, ref_dpoints) = run_with_grads(
        lambda *a: lc4_kernels.trilinear_sample(*a, backend="reference"), [t.double() for t in inputs])
    assert_close(out, ref_out.to(dtype), dtype, "out")
    assert_close(dvalue, ref_dvalue.to(dtype), dtype, "dvalue")
    assert_close(dpoints.to(dtype), ref_dpoints.to(dtype), dtype, "dpoints")


@pytest.mark.parametrize("mode", ["atomic", "sorted"])
@pytest.mark.parametrize("backend,device", ANY_DEVICE)
def test_many_points_on_one_voxel(backend, device, mode, monkeypatch):
    # Every point lands on the same 8 voxels: each voxel's gradient is one long run of entries
    # (500 atomic additions to one address, or one 500-entry segment of the sorted scatter).
    monkeypatch.setenv("LC4_TRITON_SCATTER", mode)
    value, points = sample_inputs(B=1, P=500, G=1, C=24, T=2, H=3, W=3, device=device, special_fraction=0)
    points = torch.tensor([0.25, 1.5, 0.75], device=device).expand_as(points).contiguous()
    out, (dvalue, dpoints) = run_with_grads(_sample, (value, points))
    ref_out, ref_grads = run_with_grads(lambda *a: lc4_kernels.trilinear_sample(*a, backend="reference"),
                                        [value.double(), points.double()])
    assert_close(out, ref_out.float(), torch.float32, "out")
    assert_close(dvalue, ref_grads[0].float(), torch.float32, "dvalue")
    assert_close(dpoints, ref_grads[1].float(), torch.float32, "dpoints")


@pytest.mark.parametrize("backend,device", ANY_DEVICE)
def test_deterministic_mode_gives_the_same_bits_and_agrees_with_the_atomic_path(backend, device):
    assert lc4_kernels.get_backend("triton").deterministic
    attention_args = attention_inputs(Nq=40, Nk=50, heads=2, d=16, G=2, device=device)
    sample_args = sample_inputs(P=120, C=40, T=2, H=3, W=4, device=device)

    def both():
        return run_with_grads(_attention, attention_args), run_with_grads(_sample, sample_args)

    atomic = both()
    with deterministic_algorithms():
        assert lc4_kernels.get_backend("triton").unsupported_reason(torch.device(device), torch.float32, 16) is None
        assert scatter_mode() == "sorted"
        first, second = both(), both()
    for run_a, run_b, run_atomic in zip(first, second, atomic):
        for a, b, c in zip([run_a[0], *run_a[1]], [run_b[0], *run_b[1]], [run_atomic[0], *run_atomic[1]]):
            assert torch.equal(a, b)
            assert_close(a, c, torch.float32, "deterministic vs atomic")


@pytest.mark.parametrize("backend,device", ANY_DEVICE)
def test_scatter_mode_choice_and_override(backend, device, monkeypatch):
    monkeypatch.delenv("LC4_TRITON_SCATTER", raising=False)
    assert scatter_mode() == "atomic"
    monkeypatch.setenv("LC4_TRITON_SCATTER", "sorted")
    assert scatter_mode() == "sorted"
    monkeypatch.setenv("LC4_TRITON_SCATTER", "atomic")
    with deterministic_algorithms(), pytest.raises(RuntimeError, match="LC4_TRITON_SCATTER=atomic: .* not deterministic"):
        run_with_grads(_sample, sample_inputs(device=device))
    monkeypatch.setenv("LC4_TRITON_SCATTER", "fast")
    with pytest.raises(ValueError, match="LC4_TRITON_SCATTER: expected one of"):
        scatter_mode()


@pytest.mark.parametrize("backend,device", ANY_DEVICE)
def test_attention_scatters_sorted_and_sampling_atomic_by_default(backend, device, monkeypatch):
    from lc4_kernels.triton import sampling
    modes = []

    class RecordingTable(sampling.CornerTable):
        def __init__(self, keys, weights, mode):
            modes.append(mode)
            super().__init__(keys, weights, mode)

    monkeypatch.setattr(sampling, "CornerTable", RecordingTable)
    monkeypatch.delenv("LC4_TRITON_SCATTER", raising=False)
    run_with_grads(_attention, attention_inputs(Nq=20, Nk=10, heads=2, d=16, G=1, device=device))
    run_with_grads(_sample, sample_inputs(device=device))
    monkeypatch.setenv("LC4_TRITON_SCATTER", "atomic")
    run_with_grads(_attention, attention_inputs(Nq=20, Nk=10, heads=2, d=16, G=1, device=device))
    assert modes == ["sorted", "atomic", "atomic"]


@pytest.mark.parametrize("backend,device", ANY_DEVICE)
def test_head_dim_limit(backend, device):
    q, k, v, points = attention_inputs(Nq=3, Nk=4, heads=1, d=256, G=1, T=1, H=2, W=2, device=device)
    out = _attention(q, k, v, points)
    assert_close(out, lc4_kernels.tda_attention(q, k, v, points, backend="reference"), torch.float32, "out")
    wide = attention_inputs(Nq=3, Nk=4, heads=1, d=257, G=1, T=1, H=2, W=2, device=device)
    with pytest.raises(ValueError, match="backend 'triton' cannot run these inputs: head dim 257 > 256"):
        _attention(*wide)


@pytest.mark.parametrize("backend,device", [c for c in ANY_DEVICE if c[1] == "cpu"])
def test_interpreter_refuses_bfloat16_attention_by_name_and_auto_never_picks_it(backend, device):
    q, k, v, points = attention_inputs(dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="Triton interpreter cannot run bfloat16 tl.dot"):
        _attention(q, k, v, points)
    assert lc4_kernels.backend_for("tda_attention", *attention_inputs()) != "triton"
    assert lc4_kernels.backend_for("trilinear_sample", *sample_inputs()) != "triton"


@pytest.mark.parametrize("backend,device", [c for c in ANY_DEVICE if c[1] == "cuda"])
def test_auto_picks_triton_on_the_gpu_for_half_precision(backend, device):
    inputs = attention_inputs(dtype=torch.float16, device=device)
    assert lc4_kernels.backend_for("tda_attention", *inputs) in ("triton", "cuda")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("backend,device", ANY_DEVICE)
def test_opcheck_triton_ops(backend, device, dtype):
    # float16 too: the fake kernel's log-sum-exp is float32 whatever the inputs' dtype, as the kernel's.
    q, k, v, points = attention_inputs(Nq=9, Nk=7, heads=2, d=4, G=1, device=device, special_fraction=0, dtype=dtype)
    args = [t.requires_grad_(True) for t in (q, k, v, points)]
    torch.library.opcheck(torch.ops.lc4_triton.tda_attention.default, (*args, 0.5))
    value, sample_points = sample_inputs(B=1, P=5, G=1, C=3, device=device, special_fraction=0, dtype=dtype)
    torch.library.opcheck(torch.ops.lc4_triton.trilinear_sample.default,
                          (value.requires_grad_(True), sample_points.requires_grad_(True)))


@pytest.mark.parametrize("splits", [2, 3, 5])
@pytest.mark.parametrize("backend,device", ANY_DEVICE)
def test_queries_split_between_dkv_programs_add_up(backend, device, splits):
    # Nq = 300 is several query blocks for any BLOCK_M (64 in the interpreter); 3 splits of 5
    # blocks leave one split empty, 5 splits of 300 rows give each a share of whole blocks.
    from lc4_kernels.triton.attention import attention_backward, attention_forward
    q, k, v, points = attention_inputs(Nq=300, Nk=40, heads=2, d=16, G=2, device=device)
    scale = 0.25
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(3)).to(device)
    out, lse = attention_forward(q, k, v, points, scale)
    leaves = [t.double().requires_grad_(True) for t in (q, k, v, points)]
    ref_out = lc4_kernels.tda_attention(*leaves, scale=scale, backend="reference")
    ref_grads = torch.autograd.grad(ref_out, leaves, grad_out.double())
    grads = attention_backward(grad_out, q, k, v, points, out, lse, scale, query_splits=splits)
    for name, g, ref_g in zip(("dq", "dk", "dv", "dpoints"), grads, ref_grads):
        assert_close(g, ref_g.float(), torch.float32, name)


@pytest.mark.parametrize("backend,device", ANY_DEVICE)
def test_query_splits_from_the_environment(backend, device, monkeypatch):
    from lc4_kernels.triton import attention
    q, k, v, points = attention_inputs(Nq=300, Nk=40, heads=2, d=16, G=2, device=device)
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(3)).to(device)
    out, lse = attention.attention_forward(q, k, v, points, 0.25)
    expected = attention.attention_backward(grad_out, q, k, v, points, out, lse, 0.25, query_splits=3)

    def not_asked(*args):
        raise AssertionError("split_queries called although LC4_TRITON_QUERY_SPLITS is set")
    monkeypatch.setattr(attention, "split_queries", not_asked)
    monkeypatch.setenv("LC4_TRITON_QUERY_SPLITS", "3")
    grads = attention.attention_backward(grad_out, q, k, v, points, out, lse, 0.25)
    for name, g, e in zip(("dq", "dk", "dv", "dpoints"), grads, expected):
        assert_close(g, e, torch.float32, name)
    monkeypatch.setenv("LC4_TRITON_QUERY_SPLITS", "0")
    with pytest.raises(ValueError, match="LC4_TRITON_QUERY_SPLITS must be a positive integer, got '0'"):
        attention.attention_backward(grad_out, q, k, v, points, out, lse, 0.25)


def test_head_split_pads_less_than_one_power_of_two_block(monkeypatch):
    pytest.importorskip("triton")
    from lc4_kernels.triton.tuning import (FLOAT32, HALF, HEAD_SPLIT_ENV, head_split, padded_head_dim,
                                           two_column_blocks)
    assert [two_column_blocks(d) for d in (40, 80, 160)] == [(32, 16), (64, 16), (128, 32)]  # SD1.5's head dims
    for d in range(1, 257):
        padded, blocks = padded_head_dim(d), two_column_blocks(d)
        if blocks is None:
            continue
        head, tail = blocks
        assert head >= 16 and tail >= 16 and head & (head - 1) == 0 and tail & (tail - 1) == 0
        assert d <= head + tail < padded and head < d  # less padding, and the first block all columns
    assert [d for d in (8, 16, 20, 32, 64, 100, 128, 200, 256) if two_column_blocks(d)] == []
    # auto: half precision up to D_PAD 64 everywhere; on sm_90 also above, dk~/dv~ up to 160 columns.
    hopper, ampere = (HALF, 90), (HALF, 80)
    assert [head_split(d, k, hopper) for d in (40, 160) for k in ("forward", "dq", "dkv")] == \
        [(32, 16)] * 3 + [(128, 32)] * 3
    assert [head_split(192, k, hopper) for k in ("forward", "dkv")] == [(128, 64), (256, 0)]
    assert [head_split(d, "dq", ampere) for d in (40, 80, 160)] == [(32, 16), (128, 0), (256, 0)]
    assert head_split(40, "forward", (FLOAT32, 90)) == (64, 0)
    monkeypatch.setenv(HEAD_SPLIT_ENV, "on")
    assert head_split(160, "dkv", ampere) == (128, 32) and head_split(64, "dq", hopper) == (64, 0)
    monkeypatch.setenv(HEAD_SPLIT_ENV, "off")
    assert head_split(40, "forward", hopper) == (64, 0)
    monkeypatch.setenv(HEAD_SPLIT_ENV, "sometimes")
    with pytest.raises(ValueError, match="LC4_TRITON_HEAD_SPLIT: expected one of .*, got 'sometimes'"):
        head_split(40, "forward", hopper)


@pytest.mark.parametrize("split", ["on", "off"])
@pytest.mark.parametrize("d", [40, 80, 130, 192])  # tails of 16, 16, 16 and 64 columns
@pytest.mark.parametrize("backend,device", ANY_DEVICE)
def test_head_dim_in_one_or_two_column_blocks_matches_reference(backend, device, d, split, monkeypatch):
    from lc4_kernels.triton import attention
    from lc4_kernels.triton.tuning import padded_head_dim, two_column_blocks
    monkeypatch.setenv("LC4_TRITON_HEAD_SPLIT", split)
    launched = []
    launch_arguments = attention._launch_arguments
    monkeypatch.setattr(attention, "_launch_arguments", lambda *a: launched.append(launch_arguments(*a)) or launched[-1])
    inputs = attention_inputs(Nq=70, Nk=50, heads=2, d=d, G=2, T=2, device=device)
    out, grads = run_with_grads(_attention, inputs)
    ref_out, ref_grads = run_with_grads(lambda *a: lc4_kernels.tda_attention(*a, backend="reference"),
                                        [t.double() for t in inputs])
    blocks = two_column_blocks(d) if split == "on" else (padded_head_dim(d), 0)
    assert len(launched) == 3 and all((a["D_HEAD"], a["D_TAIL"]) == blocks for a in launched)
    for name, got, want in zip(("out", "dq", "dk", "dv", "dpoints"), (out, *grads), (ref_out, *ref_grads)):
        assert_close(got, want.float(), torch.float32, f"{name}, head split {split}")


def test_split_queries_fills_the_gpu_without_empty_splits():
    pytest.importorskip("triton")
    from lc4_kernels.triton.tuning import PROGRAMS_PER_PROCESSOR, split_queries
    # 512 px, 64x64 latents: 256 key programs, 512 query blocks of 64 rows, 132 SMs.
    assert 256 * split_queries(256, 512, 132) >= PROGRAMS_PER_PROCESSOR * 132
    assert split_queries(10_000, 512, 132) == 1  # enough key programs already
    assert split_queries(8, 3, 132) == 1  # too few query blocks to share
    for key_programs, query_blocks in [(1, 10), (3, 7), (2, 1000)]:
        splits = split_queries(key_programs, query_blocks, 16)
        per_split = -(-query_blocks // splits)
        assert (splits - 1) * per_split < query_blocks  # the last split is not empty
    with deterministic_algorithms():
        assert split_queries(256, 512, 132) == 1


@pytest.mark.parametrize("backend,device", ANY_DEVICE)
def test_chosen_configs_list_every_kernel_that_ran(backend, device):
    from lc4_kernels.triton import attention_kernels, tuning
    inputs = attention_inputs(Nq=40, Nk=20, heads=2, d=16, G=1, device=device)
    run_with_grads(_attention, inputs)
    rows = {row["kernel"]: row for row in tuning.chosen_configs()}
    assert {"attention_forward_kernel", "attention_backward_q_kernel", "attention_backward_kv_kernel",
            "sample_forward_kernel"} <= set(rows)
    forward = attention_kernels.attention_forward_kernel

    def described(config):
        return {**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages}
    if len(forward.configs) == 1:  # the interpreter
        assert rows["attention_forward_kernel"] == {"kernel": "attention_forward_kernel", "key": None,
                                                    "autotuned": False, "config": described(forward.configs[0])}
    else:  # on a GPU: one row per key launched (this test's among them), autotuned or the fixed pick
        tuned = [row for row in tuning.chosen_configs() if row["kernel"] == "attention_forward_kernel"]
        # Nq, Nk, D_PAD, D_TAIL, then q's dtype
        this_test = [row for row in tuned if row["key"][:5] == ["40", "20", "16", "0", "torch.float32"]]
        assert this_test and all(row["autotuned"] == tuning.AUTOTUNE for row in tuned)
        if not tuning.AUTOTUNE:  # the fixed pick of the launch's class (float32 inputs); all fit at D_PAD 16
            major, minor = torch.cuda.get_device_capability()
            assert all(row["config"] == described(tuning.FORWARD_FIXED.pick(16, 4, 10 * major + minor))
                       for row in this_test)
