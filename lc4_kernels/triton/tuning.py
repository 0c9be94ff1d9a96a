"""Launch configurations: autotuned candidates on a GPU (sm_80 / sm_90), one fixed
configuration under the interpreter (which runs programs one after another in numpy, so
fewer, larger programs are faster there, and it autotunes nothing).

``LC4_TRITON_AUTOTUNE=0`` keeps one fixed GPU configuration per kernel, valid for every head
dim up to 256: each new key (Nq, Nk, head dim) otherwise compiles and times every candidate,
which dominates a test suite of many small shapes. ``LC4_TRITON_CONFIG_SHARD=i/n`` keeps every
n-th candidate from the i-th on: the parallel warm-up (``benchmarks/triton_warmup.py``) compiles
the candidates in n processes into Triton's on-disk cache, where the real autotuning finds them.
Candidates are timed with short runs (``autotune_bench``: 5 ms of warm-up and 20 ms of repeats
instead of Triton's 25 and 100), so that autotuning the report's shapes fits in a short lease."""
from __future__ import annotations

import itertools
import os

import torch
import triton
import triton.testing

from .environment import INTERPRET

AUTOTUNE_ENV = "LC4_TRITON_AUTOTUNE"
AUTOTUNE = os.environ.get(AUTOTUNE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")

# tl.dot needs every inner size >= 16 on the GPU compiler (the interpreter would accept less).
MIN_DOT_SIZE = 16
MAX_CHANNEL_BLOCK = 128


def padded_head_dim(head_dim: int) -> int:
    return max(MIN_DOT_SIZE, triton.next_power_of_2(head_dim))


def channel_block(channels: int) -> int:
    return min(MAX_CHANNEL_BLOCK, max(MIN_DOT_SIZE, triton.next_power_of_2(channels)))


CONFIG_SHARD_ENV = "LC4_TRITON_CONFIG_SHARD"


def config_shard(configs: list, spec: str) -> list:
    """The candidates of shard ``i/n`` (every n-th from the i-th on; never none); all for ''."""
    if not spec:
        return configs
    try:
        index, count = (int(part) for part in spec.split("/"))
    except ValueError:
        index, count = -1, 0
    if not 0 <= index < count:
        raise ValueError(f"{CONFIG_SHARD_ENV}: expected 'i/n' with 0 <= i < n, got {spec!r}")
    return configs[index::count] or configs[:1]


def autotune_bench(kernel_call, quantiles):
    return triton.testing.do_bench(kernel_call, warmup=5, rep=20, quantiles=quantiles)


def _configs(interpreter: dict, gpu_grid: dict, fixed: triton.Config, warps=(4, 8), stages=(1,)):
    if INTERPRET:
        return [triton.Config(interpreter, num_warps=1, num_stages=1)]
    if not AUTOTUNE:
        return [fixed]
    names = list(gpu_grid)
    candidates = [triton.Config(dict(zip(names, values)), num_warps=w, num_stages=s)
                  for values in itertools.product(*gpu_grid.values()) for w in warps for s in stages]
    return config_shard(candidates, os.environ.get(CONFIG_SHARD_ENV, "").strip())


def _drop_oversized_attention_tiles(configs, named_args, **kwargs):
    # Keep every float32 tile of BLOCK x D_PAD within about 128 registers per thread: larger
    # tiles (e.g. 128 x 256 on 4 warps) spill, compile for minutes and never win.
    head = kwargs.get("D_PAD", named_args.get("D_PAD", MIN_DOT_SIZE))
    kept = [c for c in configs
            if max(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) * head <= 128 * 32 * c.num_warps]
    return kept or configs[:1]


SAMPLE_CONFIGS = _configs(dict(BLOCK_P=128), dict(BLOCK_P=[16, 32, 64]),
                          triton.Config(dict(BLOCK_P=32), num_warps=4, num_stages=1), warps=(2, 4, 8))
SEGMENT_CONFIGS = _configs(dict(BLOCK_S=64), dict(BLOCK_S=[16, 32, 64]),
                           triton.Config(dict(BLOCK_S=32), num_warps=4, num_stages=1), warps=(2, 4, 8))
# The fixed attention tiles keep a 64 x 256 float32 accumulator at 64 registers per thread (8 warps).
ATTENTION_CONFIGS = _configs(dict(BLOCK_M=64, BLOCK_N=64), dict(BLOCK_M=[64, 128], BLOCK_N=[32, 64]),
                             triton.Config(dict(BLOCK_M=64, BLOCK_N=32), num_warps=8, num_stages=2),
                             warps=(4, 8), stages=(2, 3, 4))
ATTENTION_BACKWARD_CONFIGS = _configs(dict(BLOCK_M=64, BLOCK_N=64), dict(BLOCK_M=[32, 64], BLOCK_N=[32, 64, 128]),
                                      triton.Config(dict(BLOCK_M=64, BLOCK_N=32), num_warps=8, num_stages=2),
                                      warps=(4, 8), stages=(2, 3))
ATTENTION_PRUNING = None if INTERPRET else {"early_config_prune": _drop_oversized_attention_tiles}


# The dk~/dv~ kernel has one program per key block and (batch, head): at the 512 px SD1.5 layers
# (Nk about 1024, Nq up to 32768) that is ~256 programs, two per SM, each looping over hundreds
# of query blocks. Splitting the queries between programs fills the GPU; the splits add their
# shares atomically, so there is one split under deterministic algorithms.
PROGRAMS_PER_PROCESSOR = 8
MIN_QUERY_BLOCKS_PER_SPLIT = 4


def split_queries(key_programs: int, query_blocks: int, processors: int) -> int:
    """How many programs share the query blocks of one key block (none of them left empty)."""
    if torch.are_deterministic_algorithms_enabled() or query_blocks <= 0:
        return 1
    wanted = triton.cdiv(processors * PROGRAMS_PER_PROCESSOR, max(1, key_programs))
    splits = max(1, min(wanted, query_blocks // MIN_QUERY_BLOCKS_PER_SPLIT))
    return triton.cdiv(query_blocks, triton.cdiv(query_blocks, splits))
