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


def test_fixed_dkv_configuration_uses_hopper_tensor_cores_up_to_d_pad_128():
    # With 32 keys a program the dk~/dv~ products compiled to sm_80's mma.sync on sm_90; the fixed
    # configuration of D_PAD <= 128 (the 64x64 and 32x32 SD1.5 layers) takes 64 and compiles to wgmma.
    stdout = _without_autotuning(
        "from lc4_kernels.triton import attention_kernels as a, compile_check as c\n"
        "kernel = a.attention_backward_kv_kernel\n"
        "for head_dim in (40, 80):\n"
        "    types, constants = next((t, k) for f, t, k in c._kernels('fp16', head_dim) if f is kernel)\n"
        "    (config,) = c._configs(kernel, constants, 'every')\n"
        "    ptx = c._compile(kernel.fn, types, constants, config, 90, head_dim).asm['ptx']\n"
        "    print(head_dim, config.kwargs['BLOCK_N'], ptx.count('wgmma.mma_async') > 0, ptx.count('mma.sync') > 0)\n"
        "from lc4_kernels.triton.tuning import autotune_bench\n"
        "print(autotune_bench(None, (0.5, 0.2, 0.8)))\n")  # the fixed configuration is never timed
    assert stdout.split("\n")[:3] == ["40 64 True False", "80 64 True False", "[0.0, 0.0, 0.0]"]


def test_fixed_configurations_pick_by_head_dim_and_give_way_where_they_do_not_fit():
    from lc4_kernels.triton.tuning import DKV_FIXED, DQ_FIXED, attention_tile_fits
    picked = [DKV_FIXED.pick(head).kwargs["BLOCK_N"] for head in (16, 64, 128, 256)]
    assert picked == [64, 64, 64, 32]
    # float32 at D_PAD 256 on sm_80 (163 KB of shared memory): the dq tiles need 205 KB
    # (Triton 3.6's compile), the small ones 131 KB.
    a100_shared = 163 * 1024

    def fits(config):
        return attention_tile_fits(config, 256, 4, "BLOCK_N", 2, a100_shared)
    assert DQ_FIXED.pick(256, fits) is DQ_FIXED.small and fits(DQ_FIXED.small)
    assert DQ_FIXED.pick(256, lambda config: attention_tile_fits(config, 256, 2, "BLOCK_N", 2, a100_shared)) \
        is DQ_FIXED.by_head_dim[256]  # float16 fits


def test_shared_memory_estimate_of_the_pruning_agrees_with_the_compiler():
    # Candidates either side of sm_90's limit at d = 160 (D_PAD 256), float16: the autotuner's
    # pruning keeps exactly those the compiler fits (the first one stopped a warm-up on an H200).
    from lc4_kernels.triton import attention_kernels
    from lc4_kernels.triton.tuning import attention_tile_fits
    kernels = {"attention_forward_kernel": (attention_kernels.attention_forward_kernel, "BLOCK_N", 1),
               "attention_backward_kv_kernel": (attention_kernels.attention_backward_kv_kernel, "BLOCK_M", 2)}
    candidates = [("attention_forward_kernel", 64, 64, 4), ("attention_forward_kernel", 64, 64, 3),
                  ("attention_backward_kv_kernel", 64, 64, 3), ("attention_backward_kv_kernel", 32, 128, 3)]
    limit = compile_check.SHARED_MEMORY_LIMIT[90]
    verdicts = []
    for name, block_m, block_n, stages in candidates:
        kernel, streamed, resident = kernels[name]
        config = triton.Config(dict(BLOCK_M=block_m, BLOCK_N=block_n), num_warps=8, num_stages=stages)
        shared = compile_check.compile_config(kernel, config, 90, "fp16", 160)
        fits = shared <= limit
        assert attention_tile_fits(config, 256, 2, streamed, resident, limit) == fits, (name, config, shared)
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
                                 "print(DKV_FIXED.pick(128).kwargs, DQ_FIXED.pick(128).kwargs)\n",
                                 LC4_TRITON_FIXED="dkv=64x32x8x2")
    assert stdout.strip() == "{'BLOCK_M': 64, 'BLOCK_N': 32} {'BLOCK_M': 64, 'BLOCK_N': 32}"
