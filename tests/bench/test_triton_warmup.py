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
