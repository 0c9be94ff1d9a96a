"""Launch configurations: autotuned candidates on a GPU (sm_80 / sm_90), one fixed
configuration under the interpreter (which runs programs one after another in numpy, so
fewer, larger programs are faster there, and it autotunes nothing).

``LC4_TRITON_AUTOTUNE=0`` keeps fixed GPU configurations, valid for every head dim up to 256
(one per kernel, or one per head-dim class, picked by the pruning, never timed): each new key
(Nq, Nk, head dim) otherwise compiles and times every candidate, which dominates a test suite of
many small shapes. ``LC4_TRITON_FIXED`` replaces an attention kernel's fixed configuration
(see ``fixed_overrides``). ``LC4_TRITON_CONFIG_SHARD=i/n`` keeps every
n-th candidate from the i-th on: the parallel warm-up (``benchmarks/triton_warmup.py``) compiles
the candidates in n processes into Triton's on-disk cache, where the real autotuning finds them.
Candidates are timed with short runs (``autotune_bench``: 5 ms of warm-up and 20 ms of repeats
instead of Triton's 25 and 100), so that autotuning the report's shapes fits in a short lease."""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass

import torch
import triton
import triton.testing

from .environment import INTERPRET

AUTOTUNE_ENV = "LC4_TRITON_AUTOTUNE"
AUTOTUNE = os.environ.get(AUTOTUNE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")

# tl.dot needs every inner size >= 16 on the GPU compiler (the interpreter would accept less).
MIN_DOT_SIZE = 16
MAX_CHANNEL_BLOCK = 128


# Host-side integer helpers: triton.cdiv and triton.next_power_of_2 are constexpr functions
# since Triton 3.4, and a host call of one costs microseconds (a dozen per forward+backward).
def cdiv(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def padded_head_dim(head_dim: int) -> int:
    return max(MIN_DOT_SIZE, next_power_of_2(head_dim))


def channel_block(channels: int) -> int:
    return min(MAX_CHANNEL_BLOCK, max(MIN_DOT_SIZE, next_power_of_2(channels)))


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
    if not AUTOTUNE:
        # The fixed configuration the pruning left: Triton 3.6 would still time it.
        return [0.0] * len(quantiles)
    return triton.testing.do_bench(kernel_call, warmup=5, rep=20, quantiles=quantiles)


@dataclass(frozen=True)
class FixedConfigs:
    """The configurations of an attention kernel without autotuning: one per head-dim class
    ({largest D_PAD: configuration}), and ``small`` for a launch whose pick would not fit the
    GPU's shared memory (float32 beyond D_PAD 128 on sm_80: 205 KB of 163)."""
    by_head_dim: dict
    small: triton.Config

    @property
    def configs(self) -> list:
        return [*dict.fromkeys(self.by_head_dim.values()), self.small]

    def pick(self, head: int, fits=lambda config: True) -> triton.Config:
        config = self.by_head_dim[min((bound for bound in self.by_head_dim if head <= bound),
                                      default=max(self.by_head_dim))]
        return config if fits(config) else self.small


FIXED_ENV = "LC4_TRITON_FIXED"


def fixed_overrides(spec: str) -> dict:
    """``LC4_TRITON_FIXED``: ``kernel=MxNxWxS`` items separated by ``;`` (kernel ``forward``, ``dq``
    or ``dkv``; BLOCK_M x BLOCK_N x warps x stages), a fixed configuration for every head dim
    instead of the kernel's own when not autotuning: a short GPU lease compares a few tiles
    side by side in one run without the autotuner's compile of every candidate."""
    overrides = {}
    for item in filter(None, (part.strip() for part in spec.split(";"))):
        kernel, _, tiles = item.partition("=")
        try:
            block_m, block_n, warps, stages = (int(v) for v in tiles.lower().split("x"))
        except ValueError:
            block_m = block_n = warps = stages = 0
        if kernel.strip() not in ("forward", "dq", "dkv") or min(block_m, block_n, warps, stages) < 1 \
                or min(block_m, block_n) < MIN_DOT_SIZE:
            raise ValueError(f"{FIXED_ENV}: expected items like 'dkv=64x64x8x2' (forward, dq or dkv; BLOCK_M x "
                             f"BLOCK_N >= {MIN_DOT_SIZE} x warps x stages), got {item!r}")
        overrides[kernel.strip()] = triton.Config(dict(BLOCK_M=block_m, BLOCK_N=block_n), num_warps=warps,
                                                  num_stages=stages)
    return overrides


def _fixed(kernel: str, by_head_dim: dict, small: triton.Config) -> FixedConfigs:
    override = fixed_overrides(os.environ.get(FIXED_ENV, "")).get(kernel)
    return FixedConfigs({256: override} if override else by_head_dim, small)


def _configs(interpreter: dict, gpu_grid: dict, fixed, warps=(4, 8), stages=(1,)):
    """The candidates; without autotuning ``fixed``: one configuration, or ``FixedConfigs``
    (the pruning picks one per launch)."""
    if INTERPRET:
        return [triton.Config(interpreter, num_warps=1, num_stages=1)]
    if not AUTOTUNE:
        return fixed.configs if isinstance(fixed, FixedConfigs) else [fixed]
    names = list(gpu_grid)
    return [triton.Config(dict(zip(names, values)), num_warps=w, num_stages=s)
            for values in itertools.product(*gpu_grid.values()) for w in warps for s in stages]


def select_candidates(configs: list, keep, shard: str) -> list:
    """Shard ``shard`` of the candidates ``keep`` accepts (of all of them if it accepts none)."""
    kept = [c for c in configs if keep is None or keep(c)] or configs[:1]
    return config_shard(kept, shard)


def _pruning(fits=None, fixed: FixedConfigs | None = None):
    """``prune_configs_by`` for an autotuner: the candidates ``fits(config, named_args, kwargs)``
    keeps (all if none fit), then the warm-up's shard of them. Triton prunes only lists of more
    than one candidate, so the shard is taken here, after the filter, not from the list.
    Without autotuning, ``fixed`` picks the launch's configuration by its D_PAD and what fits."""
    def prune(configs, named_args, **kwargs):
        keep = None if fits is None else (lambda config: fits(config, named_args, kwargs))
        return select_candidates(configs, keep, os.environ.get(CONFIG_SHARD_ENV, "").strip())

    def fixed_for_launch(configs, named_args, **kwargs):
        head = kwargs.get("D_PAD", named_args.get("D_PAD", MIN_DOT_SIZE))
        return [fixed.pick(head, lambda config: fits(config, named_args, kwargs))]

    if INTERPRET:
        return None
    if not AUTOTUNE:
        return None if fixed is None else {"early_config_prune": fixed_for_launch}
    return {"early_config_prune": prune}


def attention_tile_fits(config: triton.Config, head: int, element_bytes: int, streamed: str, resident_tiles: int,
                        shared_bytes: int) -> bool:
    """Whether an attention launch configuration is worth compiling. Every float32 tile of
    BLOCK x D_PAD stays within about 128 registers per thread: larger tiles (e.g. 128 x 256 on
    4 warps) spill, compile for minutes and never win. And the shared memory fits: ``num_stages``
    buffers of the two tiles loaded per iteration (the ``streamed`` block: keys and values in the
    forward and dq kernels, queries and grad_out in the dk~/dv~ kernel) plus the resident tiles.
    Against Triton 3.6's sm_90 compiles of every attention candidate (float16 at d = 40, 80 and
    160, float32 at 80 and 160; launch specialization included, as in ``compile_check``) it
    keeps none over 227 KiB; it drops one fitting float16 candidate of 202, and 29 float32 ones of 130
    (float32 needs less than twice the float16 figure)."""
    block_m, block_n = config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"]
    if max(block_m, block_n) * head > 128 * 32 * config.num_warps:
        return False
    resident = block_n if streamed == "BLOCK_M" else block_m
    stages = max(1, config.num_stages)
    shared = element_bytes * head * (stages * 2 * config.kwargs[streamed] + resident_tiles * resident)
    return shared <= shared_bytes


def _shared_memory_limit() -> int:
    from triton.runtime import driver
    return driver.active.utils.get_device_properties(torch.cuda.current_device())["max_shared_mem"]


def _attention_fits(streamed: str, resident_tiles: int):
    def fits(config, named_args, kwargs):
        head = kwargs.get("D_PAD", named_args.get("D_PAD", MIN_DOT_SIZE))
        q = named_args.get("q_ptr")
        if q is None:  # ahead-of-time compile check: no tensors, no device; registers only
            return attention_tile_fits(config, head, 1, streamed, resident_tiles, shared_bytes=2**63)
        return attention_tile_fits(config, head, q.element_size(), streamed, resident_tiles, _shared_memory_limit())
    return fits


SAMPLE_CONFIGS = _configs(dict(BLOCK_P=128), dict(BLOCK_P=[16, 32, 64]),
                          triton.Config(dict(BLOCK_P=32), num_warps=4, num_stages=1), warps=(2, 4, 8))
SEGMENT_CONFIGS = _configs(dict(BLOCK_S=64), dict(BLOCK_S=[16, 32, 64]),
                           triton.Config(dict(BLOCK_S=32), num_warps=4, num_stages=1), warps=(2, 4, 8))
# The fixed attention tiles keep a 64 x 256 float32 accumulator at 64 registers per thread (8 warps).
_SMALL_FIXED = triton.Config(dict(BLOCK_M=32, BLOCK_N=32), num_warps=8, num_stages=1)
_FORWARD_FIXED = triton.Config(dict(BLOCK_M=64, BLOCK_N=32), num_warps=8, num_stages=2)
FORWARD_FIXED = _fixed("forward", {256: _FORWARD_FIXED}, _SMALL_FIXED)
ATTENTION_CONFIGS = _configs(dict(BLOCK_M=64, BLOCK_N=64), dict(BLOCK_M=[64, 128], BLOCK_N=[32, 64]),
                             FORWARD_FIXED, warps=(4, 8), stages=(2, 3, 4))
_BACKWARD_GRID = dict(BLOCK_M=[32, 64], BLOCK_N=[32, 64, 128])
_BACKWARD_FIXED = triton.Config(dict(BLOCK_M=64, BLOCK_N=32), num_warps=8, num_stages=2)
DQ_FIXED = _fixed("dq", {256: _BACKWARD_FIXED}, _SMALL_FIXED)
DQ_CONFIGS = _configs(dict(BLOCK_M=64, BLOCK_N=64), _BACKWARD_GRID, DQ_FIXED, warps=(4, 8), stages=(2, 3))
# The dk~/dv~ kernel's key block is the M side of its dk~ and dv~ products: with 32 keys Triton
# (3.6 and 3.9) compiles them to sm_80's mma.sync on sm_90, with 64 to wgmma. 64 x 64 tiles
# compile without spills up to D_PAD 128 in float16/bfloat16 for sm_80 and sm_90; at D_PAD 256
# they spill, and the 64 x 32 tiles stay.
DKV_FIXED = _fixed("dkv", {128: triton.Config(dict(BLOCK_M=64, BLOCK_N=64), num_warps=8, num_stages=2),
                           256: _BACKWARD_FIXED}, _SMALL_FIXED)
DKV_CONFIGS = _configs(dict(BLOCK_M=64, BLOCK_N=64), _BACKWARD_GRID, DKV_FIXED, warps=(4, 8), stages=(2, 3))
TRILINEAR_PRUNING = _pruning()
# Resident tiles: q (forward); q and grad_out (dq); k~ and v~ (dk~/dv~).
FORWARD_PRUNING = _pruning(_attention_fits(streamed="BLOCK_N", resident_tiles=1), FORWARD_FIXED)
DQ_PRUNING = _pruning(_attention_fits(streamed="BLOCK_N", resident_tiles=2), DQ_FIXED)
DKV_PRUNING = _pruning(_attention_fits(streamed="BLOCK_M", resident_tiles=2), DKV_FIXED)


# The dk~/dv~ kernel has one program per key block and (batch, head): at the 512 px SD1.5 layers
# (Nk about 1024, Nq up to 32768) that is ~256 programs, two per SM, each looping over hundreds
# of query blocks. Splitting the queries between programs fills the GPU; the splits add their
# shares atomically, so there is one split under deterministic algorithms.
PROGRAMS_PER_PROCESSOR = 8
MIN_QUERY_BLOCKS_PER_SPLIT = 4


QUERY_SPLITS_ENV = "LC4_TRITON_QUERY_SPLITS"


def forced_query_splits() -> int | None:
    """``LC4_TRITON_QUERY_SPLITS=n`` (n >= 1) fixes the split count, for comparing paths; else None."""
    value = os.environ.get(QUERY_SPLITS_ENV, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{QUERY_SPLITS_ENV} must be a positive integer, got {value!r}")
    return int(value)


def split_queries(key_programs: int, query_blocks: int, processors: int) -> int:
    """How many programs share the query blocks of one key block (none of them left empty)."""
    if torch.are_deterministic_algorithms_enabled() or query_blocks <= 0:
        return 1
    wanted = cdiv(processors * PROGRAMS_PER_PROCESSOR, max(1, key_programs))
    splits = max(1, min(wanted, query_blocks // MIN_QUERY_BLOCKS_PER_SPLIT))
    return cdiv(query_blocks, cdiv(query_blocks, splits))


KERNEL_MODULES = ("lc4_kernels.triton.attention_kernels", "lc4_kernels.triton.trilinear_kernels")


def chosen_configs() -> list[dict]:
    """The launch configurations the Triton kernels imported so far run with: per autotuning key
    (the key arguments' values, then the tensors' dtypes) the candidate the autotuner chose (or,
    with ``LC4_TRITON_AUTOTUNE=0``, the fixed one for the key's head dim), or the one fixed
    configuration (``LC4_TRITON_AUTOTUNE=0``, the interpreter)."""
    import sys

    from triton.runtime.autotuner import Autotuner

    def describe(config: triton.Config) -> dict:
        return {**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages}

    rows = []
    for module in filter(None, (sys.modules.get(name) for name in KERNEL_MODULES)):
        for name, kernel in sorted(vars(module).items()):
            if not isinstance(kernel, Autotuner):
                continue
            if len(kernel.configs) == 1:
                rows.append({"kernel": name, "key": None, "autotuned": False, "config": describe(kernel.configs[0])})
            rows += [{"kernel": name, "key": [str(part) for part in key], "autotuned": AUTOTUNE,
                      "config": describe(config)} for key, config in kernel.cache.items()]
    return rows
