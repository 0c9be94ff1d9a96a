"""The parallel warm-up of the triton backend's autotune candidates: how the candidates are
shared between workers, and what the workers are given to run (the compiling itself needs a GPU)."""
import pytest
import torch

from benchmarks import shapes, triton_warmup


def test_config_shards_cover_every_candidate_once():
    pytest.importorskip("triton")
    from lc4_kernels.triton.tuning import config_shard
    candidates = list(range(10))
    shards = [config_shard(candidates, f"{i}/3") for i in range(3)]
    assert sorted(c for shard in shards for c in shard) == candidates
    assert config_shard(candidates, "") == candidates
    assert config_shard(candidates[:2], "3/4") == [0]  # more workers than candidates: never none
    for bad in ("3/3", "-1/2", "1", "a/b", "1/0"):
        with pytest.raises(ValueError, match="LC4_TRITON_CONFIG_SHARD: expected 'i/n'"):
            config_shard(candidates, bad)


def test_workers_run_the_report_cases_in_every_dtype_and_the_scaling_sweep_once():
    args = triton_warmup.parse_args(["--shapes", "sd15-512", "--dtype", "float16,bfloat16"])
    work = triton_warmup.cases_and_dtypes(args)
    report_cases = shapes.resolve("sd15-512")
    scaling = shapes.memory_scaling_cases("gpu")
    assert work == [(c, d) for c in report_cases for d in (torch.float16, torch.bfloat16)] + \
        [(c, torch.float16) for c in scaling]
    args = triton_warmup.parse_args(["--shapes", "sd15-512", "--no-memory-scaling", "--dtype", "float16"])
    assert len(triton_warmup.cases_and_dtypes(args)) == len(report_cases)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_refuses_to_run_without_a_gpu(capsys):
    assert triton_warmup.main(["--jobs", "2"]) == 1
    assert "no CUDA GPU" in capsys.readouterr().err


def test_shards_are_taken_after_the_pruning():
    pytest.importorskip("triton")
    from lc4_kernels.triton.tuning import select_candidates
    candidates = list(range(10))
    odd = [select_candidates(candidates, lambda c: c % 2, f"{i}/2") for i in range(2)]
    assert odd == [[1, 5, 9], [3, 7]]  # each worker's share of what survives, none lost
    assert select_candidates(candidates, lambda c: False, "1/2") == [0]  # nothing fits: the first, never none
    assert select_candidates(candidates, None, "") == candidates


def test_attention_pruning_drops_tiles_over_the_shared_memory_limit():
    triton = pytest.importorskip("triton")
    from lc4_kernels.triton.tuning import ATTENTION_CONFIGS, DKV_CONFIGS, DQ_CONFIGS, attention_tile_fits
    h200_shared = 232448
    forward, dq, dkv = ("BLOCK_N", 1), ("BLOCK_N", 2), ("BLOCK_M", 2)  # streamed block, resident tiles

    def config(block_m, block_n, warps, stages):
        return triton.Config(dict(BLOCK_M=block_m, BLOCK_N=block_n), num_warps=warps, num_stages=stages)

    # Shared memory of Triton 3.6's sm_90 compiles at D_PAD 256, float16 (the first forward
    # candidate is the one the H200 warm-up launched: it asked for 294912 bytes and failed).
    assert not attention_tile_fits(config(64, 64, 8, 4), 256, 2, *forward, h200_shared)  # 294912
    assert attention_tile_fits(config(64, 64, 8, 3), 256, 2, *forward, h200_shared)  # 229376
    assert attention_tile_fits(config(64, 32, 8, 2), 256, 2, *forward, h200_shared)  # the second run's fixed one
    assert attention_tile_fits(config(128, 32, 8, 2), 256, 2, *forward, h200_shared)  # 131072, fixed now
    assert attention_tile_fits(config(128, 32, 8, 2), 256, 2, *dq, h200_shared)  # 196608, fixed now
    assert not attention_tile_fits(config(64, 64, 8, 3), 256, 2, *dq, h200_shared)  # 262144
    assert attention_tile_fits(config(64, 32, 8, 3), 256, 2, *dq, h200_shared)  # 163840
    assert not attention_tile_fits(config(64, 64, 4, 3), 256, 2, *dkv, h200_shared)  # 263168
    assert attention_tile_fits(config(32, 128, 8, 3), 256, 2, *dkv, h200_shared)  # 229888
    # Registers: a 128 x 256 float32 tile needs 8 warps.
    assert not attention_tile_fits(config(128, 32, 4, 1), 256, 2, *forward, 10**9)
    assert attention_tile_fits(config(128, 32, 8, 1), 256, 2, *forward, 10**9)
    # Every kernel keeps candidates at every head dim on an sm_90 GPU.
    for head in (16, 32, 64, 128, 256):
        for candidates, kind in ((ATTENTION_CONFIGS, forward), (DQ_CONFIGS, dq), (DKV_CONFIGS, dkv)):
            assert any(attention_tile_fits(c, head, 2, *kind, h200_shared) for c in candidates)


def test_hopper_half_precision_pruning_keeps_whole_warpgroups_only():
    # A wgmma warpgroup (4 warps) owns 64 rows of the resident block; candidates whose warpgroups
    # would compute the same rows are not timed on sm_90 in float16/bfloat16 (elsewhere they are).
    pytest.importorskip("triton")
    from lc4_kernels.triton.tuning import ATTENTION_CONFIGS, ATTENTION_TILING, DKV_CONFIGS, DQ_CONFIGS
    h200_shared = 232448
    kernels = (("attention_forward_kernel", ATTENTION_CONFIGS, "BLOCK_M"),
               ("attention_backward_q_kernel", DQ_CONFIGS, "BLOCK_M"),
               ("attention_backward_kv_kernel", DKV_CONFIGS, "BLOCK_N"))
    for name, candidates, resident in kernels:
        tiling = ATTENTION_TILING[name]
        hopper = [c for c in candidates if tiling.worth_timing(c, 64, 2, 90, h200_shared)]
        assert hopper and all(c.kwargs[resident] >= 16 * c.num_warps for c in hopper), name
        assert len(hopper) < len([c for c in candidates if tiling.fits(c, 64, 2, h200_shared)]), name
        for element_bytes, capability in ((2, 80), (4, 90)):
            assert [c for c in candidates if tiling.worth_timing(c, 64, element_bytes, capability, h200_shared)] == \
                [c for c in candidates if tiling.fits(c, 64, element_bytes, h200_shared)], name
        # Every kernel keeps a candidate at every head dim on an sm_90 GPU in half precision.
        for head in (16, 32, 64, 128, 256):
            assert any(tiling.worth_timing(c, head, 2, 90, h200_shared) for c in candidates), (name, head)
