"""The triton backend's kernels compile for sm_80 and sm_90 without a GPU: the GPU compiler
rejects what the interpreter accepts (tl.dot below 16, dtype mismatches in tl.dot), so the
interpreter tests alone would not catch it. One config per kernel here; every config with
``python -m lc4_kernels.triton.compile_check --configs every``."""
import pytest

triton = pytest.importorskip("triton")
compile_check = pytest.importorskip("lc4_kernels.triton.compile_check")

reason = compile_check.supported()
pytestmark = pytest.mark.skipif(reason is not None, reason=f"ahead-of-time compile not possible: {reason}")


@pytest.mark.parametrize("capability,dtype,head_dim", [(80, "fp32", 40), (90, "bf16", 8)])
def test_every_kernel_compiles_and_fits_in_shared_memory(capability, dtype, head_dim):
    compiled = list(compile_check.compile_kernels(capability, dtype, head_dim, which="smallest"))
    assert len(compiled) == 7
    for name, config, shared in compiled:
        assert shared <= compile_check.SHARED_MEMORY_LIMIT[capability], f"{name} {config}"


def _without_autotuning(code: str, **variables: str) -> str:
    """Runs ``code`` in a new process with LC4_TRITON_AUTOTUNE=0 and ``variables`` (read when the
    kernels are defined); its standard output."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(LC4_TRITON_AUTOTUNE="0", **variables)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_fixed_configurations_without_autotuning_compile_for_the_largest_head_dim():
    stdout = _without_autotuning(
        "from lc4_kernels.triton import compile_check as c\n"
        "rows = list(c.compile_kernels(90, 'fp16', 256, which='every'))\n"
        "assert len(rows) == 7, rows\n"
        "for name, config, shared in rows:\n"
        "    assert shared <= c.SHARED_MEMORY_LIMIT[90], (name, config, shared)\n"
        "print(sorted(str(config) for _, config, _ in rows))\n")
    assert "BLOCK_M: 64, BLOCK_N: 32" in stdout and "num_warps: 8" in stdout


@pytest.fixture(scope="module")
def fixed_rows():
    """The fixed attention configurations compiled for sm_80 and sm_90, float16 and float32, at the
    SD1.5 head dims (``compile_check --fixed``), with the second H200 run's forward tiles for
    contrast (64 x 32, 8 warps)."""
    import json
    if not compile_check.CUOBJDUMP.is_file():
        pytest.skip(f"this triton wheel ships no cuobjdump ({compile_check.CUOBJDUMP})")
    stdout = _without_autotuning(
        "import json, triton\n"
        "from lc4_kernels.triton import attention_kernels as a, compile_check as c\n"
        "rows = list(c.fixed_rows(dtypes=('fp16', 'fp32')))\n"
        "kernel = a.attention_forward_kernel\n"
        "types, constants = next((t, k) for f, t, k in c._kernels('fp16', 40) if f is kernel)\n"
        "old = triton.Config(dict(BLOCK_M=64, BLOCK_N=32), num_warps=8, num_stages=2)\n"
        "compiled = c._compile(kernel.fn, types, constants, old, 90, 40)\n"
        "rows.append(dict(kernel='second run forward', capability=90, dtype='fp16', head_dim=40, config=old,\n"
        "                 columns=(constants['D_HEAD'], constants['D_TAIL']),\n"
        "                 mma=c.mma_instructions(compiled), layouts=c.mma_layouts(compiled)))\n"
        "for row in rows:\n"
        "    config = row.pop('config')\n"
        "    row.update(config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages)\n"
        "print(json.dumps(rows))\n")
    return json.loads(stdout.strip().splitlines()[-1])


def _layout_splits_rows_only(row) -> bool:
    """Every tensor-core layout of the kernel gives its warps whole rows (warpsPerCTA [warps, 1])
    and products at least 32 columns wide, or as wide as the head dim's second column block."""
    tail = row["columns"][1]
    narrowest = min(32, tail) if tail else 32
    for layout in row["layouts"]:
        warps = [int(v) for v in layout.split("warpsPerCTA = [")[1].split("]")[0].split(",")]
        shape = [int(v) for v in layout.split("instrShape = [")[1].split("]")[0].split(",")]
        if warps != [row["num_warps"], 1] or shape[1] < narrowest:
            return False
    return bool(row["layouts"])


def test_fixed_configurations_do_not_spill(fixed_rows):
    compiled = [row for row in fixed_rows if "stack" in row]
    assert len(compiled) == 2 * 2 * 3 * 3  # targets x dtypes x head dims x kernels
    spilling = [row for row in compiled if row["stack"] > 0]
    assert not spilling, spilling
    for row in compiled:
        assert row["shared"] <= compile_check.SHARED_MEMORY_LIMIT[row["capability"]], row


def test_fixed_half_precision_tiles_use_whole_hopper_warpgroups(fixed_rows):
    # On sm_90 up to D_PAD 128 (the 64x64 and 32x32 SD1.5 layers) every product is a wgmma, each
    # warpgroup owning 64 rows of the resident block: 16 rows per warp, [warps, 1] layouts, products
    # 32 columns wide or more (16 for those with the 16-column block of d = 40 or 80). The second
    # H200 run's forward tiles (64 rows on 8 warps) fail it.
    hopper = [row for row in fixed_rows if row["capability"] == 90 and row["dtype"] == "fp16"
              and row["head_dim"] in (40, 80)]
    assert len(hopper) == 7
    for row in hopper:
        assert all(shape.startswith("wgmma") for shape in row["mma"]), row
        if row["kernel"] == "second run forward":
            assert not _layout_splits_rows_only(row), row
            continue
        resident = row["BLOCK_N"] if row["kernel"] == "attention_backward_kv_kernel" else row["BLOCK_M"]
        assert resident == 16 * row["num_warps"], row
        assert _layout_splits_rows_only(row), row


def test_fixed_configurations_are_never_timed():
    stdout = _without_autotuning("from lc4_kernels.triton.tuning import autotune_bench\n"
                                 "print(autotune_bench(None, (0.5, 0.2, 0.8)))\n")
    assert stdout.strip() == "[0.0, 0.0, 0.0]"


def test_fixed_configurations_pick_by_launch_class_and_give_way_where_they_do_not_fit():
    from lc4_kernels.triton.tuning import DKV_FIXED, DQ_FIXED, FLOAT32, HALF, attention_tile_fits
    assert [DKV_FIXED.pick(head).kwargs["BLOCK_N"] for head in (16, 64, 128, 160, 256)] == [128, 128, 128, 128, 32]
    assert [DKV_FIXED.pick(head, 2, 80).kwargs["BLOCK_N"] for head in (64, 256)] == [64, 32]
    assert DKV_FIXED.pick(128, 4, 90) is DKV_FIXED.pick(128, 4, 80)  # float32: one table

    def fits(element_bytes, shared_bytes):
        return lambda config: attention_tile_fits(config, 256, element_bytes, "BLOCK_N", 2, shared_bytes)
    a100, sm86 = 163 * 1024, 99 * 1024
    float32_dq = DQ_FIXED.tables[(FLOAT32, 80)][256]
    assert DQ_FIXED.pick(256, 4, 80, fits(4, a100)) is float32_dq and fits(4, a100)(float32_dq)
    # A GPU with 99 KB per block (sm_86) takes the small tiles where the sm_80 table's do not fit.
    assert DQ_FIXED.pick(256, 2, 86, fits(2, sm86)) is DQ_FIXED.small and fits(2, sm86)(DQ_FIXED.small)
    assert DQ_FIXED.pick(256, 2, 80, fits(2, a100)) is DQ_FIXED.tables[(HALF, 80)][256]


def test_shared_memory_estimate_of_the_pruning_agrees_with_the_compiler():
    # Candidates either side of sm_90's limit at d = 160, float16: the autotuner's pruning keeps
    # exactly those the compiler fits (a forward candidate over it stopped a warm-up on an H200).
    # Both hold 128 + 32 columns there (see tuning.head_split).
    from lc4_kernels.triton import attention_kernels
    from lc4_kernels.triton.tuning import attention_tile_fits
    kernels = {"attention_forward_kernel": (attention_kernels.attention_forward_kernel, "BLOCK_N", 1),
               "attention_backward_kv_kernel": (attention_kernels.attention_backward_kv_kernel, "BLOCK_M", 2)}
    candidates = [("attention_forward_kernel", 64, 128, 3), ("attention_forward_kernel", 64, 64, 5),
                  ("attention_backward_kv_kernel", 64, 128, 4), ("attention_backward_kv_kernel", 64, 128, 3)]
    limit = compile_check.SHARED_MEMORY_LIMIT[90]
    columns = {kernel.fn.__name__: constants["D_HEAD"] + constants["D_TAIL"]
               for kernel, _, constants in compile_check._kernels("fp16", 160, 90) if "D_HEAD" in constants}
    assert (columns["attention_forward_kernel"], columns["attention_backward_kv_kernel"]) == (160, 160)
    verdicts = []
    for name, block_m, block_n, stages in candidates:
        kernel, streamed, resident = kernels[name]
        config = triton.Config(dict(BLOCK_M=block_m, BLOCK_N=block_n), num_warps=8, num_stages=stages)
        shared = compile_check.compile_config(kernel, config, 90, "fp16", 160)
        fits = shared <= limit
        assert attention_tile_fits(config, columns[name], 2, streamed, resident, limit) == fits, (name, config, shared)
        verdicts.append(fits)
    assert verdicts == [False, True, False, True]


def test_a_fixed_configuration_can_be_forced_per_kernel_for_comparisons():
    from lc4_kernels.triton.tuning import fixed_overrides
    forced = fixed_overrides(" dkv=64x32x8x2; forward=128x64x4x3 ")
    assert forced["dkv"].kwargs == dict(BLOCK_M=64, BLOCK_N=32) and forced["dkv"].num_stages == 2
    assert (forced["forward"].num_warps, set(forced)) == (4, {"dkv", "forward"})
    for bad in ("dkv=64x32x8", "bwd=64x32x8x2", "dq=8x64x4x2"):
        with pytest.raises(ValueError, match="LC4_TRITON_FIXED"):
            fixed_overrides(bad)
    stdout = _without_autotuning("from lc4_kernels.triton.tuning import DKV_FIXED, DQ_FIXED\n"
                                 "print(DKV_FIXED.pick(128).kwargs, DKV_FIXED.pick(64, 4, 80).kwargs,\n"
                                 "      DQ_FIXED.pick(128).kwargs)\n",
                                 LC4_TRITON_FIXED="dkv=64x32x8x2")
    assert stdout.strip() == ("{'BLOCK_M': 64, 'BLOCK_N': 32} {'BLOCK_M': 64, 'BLOCK_N': 32} "
                              "{'BLOCK_M': 128, 'BLOCK_N': 64}")
