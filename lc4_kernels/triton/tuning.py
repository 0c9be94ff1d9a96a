"""Launch configurations: autotuned candidates on a GPU (sm_80 / sm_90), one fixed
configuration under the interpreter (which runs programs one after another in numpy, so
fewer, larger programs are faster there, and it autotunes nothing).

``LC4_TRITON_AUTOTUNE=0`` keeps fixed GPU configurations, valid for every head dim up to 256
(per launch class and head-dim class, picked by the pruning, never timed): each new key
(Nq, Nk, head dim) otherwise compiles and times every candidate, which dominates a test suite of
many small shapes. ``LC4_TRITON_FIXED`` replaces an attention kernel's fixed configuration
(see ``fixed_overrides``). ``LC4_TRITON_CONFIG_SHARD=i/n`` keeps every
n-th candidate from the i-th on: the parallel warm-up (``benchmarks/triton_warmup.py``) compiles
the candidates in n processes into Triton's on-disk cache, where the real autotuning finds them.
Candidates are timed with short runs (``autotune_bench``: 5 ms of warm-up and 20 ms of repeats
instead of Triton's 25 and 100), so that autotuning the report's shapes fits in a short lease."""
from __future__ import annotations

import functools
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


HALF, FLOAT32 = "half", "float32"  # float16/bfloat16 dots on tensor cores; float32 ("ieee") dots on FMA units


def launch_class(element_bytes: int, capability: int) -> tuple[str, int]:
    """The fixed-configuration table of a launch: (HALF or FLOAT32, 90 for Hopper and later
    (wgmma) or 80)."""
    return (FLOAT32 if element_bytes >= 4 else HALF), (90 if capability >= 90 else 80)


HEAD_SPLIT_ENV = "LC4_TRITON_HEAD_SPLIT"
HEAD_SPLIT_MODES = ("auto", "on", "off")


def head_split_mode() -> str:
    """``LC4_TRITON_HEAD_SPLIT``: ``auto`` (default, see ``head_split``), ``on`` (two column blocks
    wherever they pad less) or ``off`` (one block of ``padded_head_dim``), for comparing paths."""
    mode = os.environ.get(HEAD_SPLIT_ENV, "").strip().lower() or "auto"
    if mode not in HEAD_SPLIT_MODES:
        raise ValueError(f"{HEAD_SPLIT_ENV}: expected one of {HEAD_SPLIT_MODES}, got {mode!r}")
    return mode


def two_column_blocks(head_dim: int) -> tuple[int, int] | None:
    """(D_HEAD, D_TAIL), both powers of two >= 16 (for ``tl.arange`` and ``tl.dot``), where two
    such blocks pad the head dim less than one: 40 -> 32 + 16, 80 -> 64 + 16, 160 -> 128 + 32, so
    the products at SD1.5's head dims multiply 48, 80 and 160 columns instead of 64, 128 and 256."""
    padded = padded_head_dim(head_dim)
    head = padded // 2
    tail = max(MIN_DOT_SIZE, next_power_of_2(head_dim - head))
    return (head, tail) if head_dim > MIN_DOT_SIZE and head + tail < padded else None


def head_split(head_dim: int, kernel: str, launch: tuple[str, int]) -> tuple[int, int]:
    """(D_HEAD, D_TAIL) of an attention kernel (``forward``, ``dq`` or ``dkv``) in a launch class;
    D_TAIL 0 for one block. ``auto`` splits in half precision where Triton 3.6's and 3.9's compiles
    of the fixed tiles (``compile_check --fixed``) take less shared memory and no spills: every
    kernel up to D_PAD 64; on sm_90 (wgmma) the forward and dq at every head dim and dk~/dv~ up to
    160 columns (d = 160 then takes 128-key wgmma tiles, where 256 columns spill them). Not sm_80
    above D_PAD 64 (up to 255 registers, spills in dk~/dv~), nor float32 (FMA tiles that spill)."""
    padded = padded_head_dim(head_dim)
    blocks = two_column_blocks(head_dim)
    mode = head_split_mode()
    if blocks is None or mode == "off":
        return padded, 0
    precision, capability = launch
    wanted = mode == "on" or (precision == HALF and (
        padded <= 64 or (capability >= 90 and not (kernel == "dkv" and sum(blocks) > 160))))
    return blocks if wanted else (padded, 0)


@dataclass(frozen=True)
class FixedConfigs:
    """The configurations of an attention kernel without autotuning. ``tables`` maps a launch
    class (``launch_class``) to {largest D_PAD of a head-dim class: configuration};
    ``small`` is for a launch whose pick would not fit the GPU's shared memory."""
    tables: dict
    small: triton.Config

    @property
    def configs(self) -> list:
        return [*dict.fromkeys(c for table in self.tables.values() for c in table.values()), self.small]

    def pick(self, head: int, element_bytes: int = 2, capability: int = 90,
             fits=lambda config: True) -> triton.Config:
        table = self.tables[launch_class(element_bytes, capability)]
        config = table[min((bound for bound in table if head <= bound), default=max(table))]
        return config if fits(config) else self.small


FIXED_ENV = "LC4_TRITON_FIXED"


def _tiles(spec: str) -> triton.Config:
    """'BLOCK_MxBLOCK_Nxwarpsxstages'."""
    block_m, block_n, warps, stages = (int(v) for v in spec.split("x"))
    return triton.Config(dict(BLOCK_M=block_m, BLOCK_N=block_n), num_warps=warps, num_stages=stages)


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
        overrides[kernel.strip()] = _tiles(tiles.lower())
    return overrides


def _fixed(kernel: str, tables: dict, small: triton.Config) -> FixedConfigs:
    override = fixed_overrides(os.environ.get(FIXED_ENV, "")).get(kernel)
    return FixedConfigs({key: {256: override} for key in tables} if override else tables, small)


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


def _pruning(tiling: AttentionTiling | None = None):
    """``prune_configs_by`` for an autotuner: the candidates that fit (``tiling``'s estimate; all
    if none fit), then the warm-up's shard of them. Triton prunes only lists of more than one
    candidate, so the shard is taken here, after the filter, not from the list. Without
    autotuning, ``tiling`` picks the launch's fixed configuration."""
    def launch(named_args, kwargs):
        def constant(name, default):
            return kwargs.get(name, named_args.get(name, default))
        # The columns the tiles hold: both column blocks (see head_split), else D_PAD.
        head = constant("D_HEAD", constant("D_PAD", MIN_DOT_SIZE)) + constant("D_TAIL", 0)
        q = named_args.get("q_ptr")
        if q is None:  # ahead-of-time compile check: no tensors, no device; registers only
            return head, 2, 90, 2**63
        return head, q.element_size(), _capability(q.device), _shared_memory_limit()

    def prune(configs, named_args, **kwargs):
        keep = None
        if tiling is not None:
            target = launch(named_args, kwargs)
            keep = lambda config: tiling.worth_timing(config, *target)  # noqa: E731
        return select_candidates(configs, keep, os.environ.get(CONFIG_SHARD_ENV, "").strip())

    def fixed_for_launch(configs, named_args, **kwargs):
        return [tiling.fixed_pick(*launch(named_args, kwargs))]

    if INTERPRET:
        return None
    if not AUTOTUNE:
        return None if tiling is None else {"early_config_prune": fixed_for_launch}
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


@functools.lru_cache(maxsize=None)
def _capability(device: torch.device) -> int:
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


def launch_capability(device: torch.device) -> int:
    """The compute capability a launch on ``device`` compiles for (10 * major + minor); the
    interpreter on the CPU takes sm_90's choices."""
    return _capability(device) if device.type == "cuda" else 90


def _shared_memory_limit() -> int:
    from triton.runtime import driver
    return driver.active.utils.get_device_properties(torch.cuda.current_device())["max_shared_mem"]


@dataclass(frozen=True)
class AttentionTiling:
    """What the pruning (and the compile check) knows of an attention kernel: the block it
    streams through shared memory, how many tiles of the other block stay resident, its fixed
    configurations and its autotuning grid (block sizes to their candidate values)."""
    streamed: str
    resident_tiles: int
    fixed: FixedConfigs
    grid: dict

    def launch_configs(self, launch: tuple | None = None, autotuned: bool = True) -> list[triton.Config]:
        """One configuration per block shape a GPU launch can take: the fixed table of ``launch``
        (a ``launch_class``; every table if None) in its order, the small one, then, if
        ``autotuned``, the grid's shapes (8 warps, 2 stages)."""
        tables = self.fixed.tables.values() if launch is None else [self.fixed.tables[launch]]
        grid = itertools.product(self.grid["BLOCK_M"], self.grid["BLOCK_N"]) if autotuned else ()
        configs = [*(c for table in tables for c in table.values()), self.fixed.small,
                   *(triton.Config(dict(BLOCK_M=m, BLOCK_N=n), num_warps=8, num_stages=2) for m, n in grid)]
        by_shape = {}
        for config in configs:
            by_shape.setdefault((config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"]), config)
        return list(by_shape.values())

    def fits(self, config: triton.Config, head: int, element_bytes: int, shared_bytes: int) -> bool:
        return attention_tile_fits(config, head, element_bytes, self.streamed, self.resident_tiles, shared_bytes)

    def whole_warpgroups(self, config: triton.Config) -> bool:
        """Whether each wgmma warpgroup (4 warps) gets 64 rows of its own of the resident block."""
        resident = "BLOCK_M" if self.streamed == "BLOCK_N" else "BLOCK_N"
        return config.kwargs[resident] >= 16 * config.num_warps

    def worth_timing(self, config: triton.Config, head: int, element_bytes: int, capability: int,
                     shared_bytes: int) -> bool:
        """An autotune candidate: it fits, and on sm_90 in half precision its warpgroups do not
        compute the same rows (see the fixed tiles below)."""
        hopper_half = launch_class(element_bytes, capability) == (HALF, 90)
        return self.fits(config, head, element_bytes, shared_bytes) and \
            (not hopper_half or self.whole_warpgroups(config))

    def fixed_pick(self, head: int, element_bytes: int, capability: int, shared_bytes: int) -> triton.Config:
        return self.fixed.pick(head, element_bytes, capability,
                               lambda config: self.fits(config, head, element_bytes, shared_bytes))


SAMPLE_CONFIGS = _configs(dict(BLOCK_P=128), dict(BLOCK_P=[16, 32, 64]),
                          triton.Config(dict(BLOCK_P=32), num_warps=4, num_stages=1), warps=(2, 4, 8))
SEGMENT_CONFIGS = _configs(dict(BLOCK_S=64), dict(BLOCK_S=[16, 32, 64]),
                           triton.Config(dict(BLOCK_S=32), num_warps=4, num_stages=1), warps=(2, 4, 8))


# Fixed tiles by launch class and D_PAD, chosen without a GPU from Triton 3.6's and 3.9's compiles
# (registers, spills, MMA instructions and layouts: ``compile_check --fixed``, tables in
# benchmarks/results/triton_compile), not from timings. On sm_90 a wgmma warpgroup (4 warps) owns
# 64 rows of the program's resident block (queries in the forward and dq kernels, keys in the
# dk~/dv~ kernel), so 8 warps take 128 rows: with 64, both warpgroups computed the same rows, the
# scores came out in 64 x 16 products and went through shared memory to the other product's
# layout. float32 dots run on FMA units and spill from 64 x 64 tiles on. The small tiles keep a
# 32 x 256 float32 accumulator at 32 registers per thread (8 warps).
_SMALL_FIXED = _tiles("32x32x8x1")
_FLOAT32 = ((FLOAT32, 90), (FLOAT32, 80))  # both FMA: one table
FORWARD_FIXED = _fixed("forward", {
    (HALF, 90): {128: _tiles("128x64x8x3"), 256: _tiles("128x32x8x2")},
    (HALF, 80): {256: _tiles("64x32x8x2")},
    **dict.fromkeys(_FLOAT32, {128: _tiles("64x32x8x2"), 256: _tiles("32x32x8x2")}),
}, _SMALL_FIXED)
FORWARD_GRID = dict(BLOCK_M=[64, 128], BLOCK_N=[32, 64])
ATTENTION_CONFIGS = _configs(dict(BLOCK_M=64, BLOCK_N=64), FORWARD_GRID, FORWARD_FIXED, warps=(4, 8), stages=(2, 3, 4))
DQ_FIXED = _fixed("dq", {
    (HALF, 90): {64: _tiles("128x64x8x3"), 128: _tiles("128x64x8x2"), 256: _tiles("128x32x8x2")},
    (HALF, 80): {256: _tiles("64x32x8x2")},
    **dict.fromkeys(_FLOAT32, {64: _tiles("64x32x8x2"), 128: _tiles("16x64x8x2"), 256: _tiles("16x32x8x2")}),
}, _SMALL_FIXED)
DQ_GRID = dict(BLOCK_M=[64, 128], BLOCK_N=[32, 64, 128])
DQ_CONFIGS = _configs(dict(BLOCK_M=64, BLOCK_N=64), DQ_GRID, DQ_FIXED, warps=(4, 8), stages=(2, 3))
# At D_PAD 256 every half-precision dk~/dv~ tile of 128 keys spills on sm_90: 64 x 32 stays, on
# sm_80's mma.sync (32 keys: the key block is the M side of the dk~ and dv~ products). Held as
# 128 + 32 columns (head_split), d = 160 fits 32 x 128 on wgmma without spills (246 registers in
# Triton 3.6, 255 in 3.9).
DKV_FIXED = _fixed("dkv", {
    (HALF, 90): {64: _tiles("64x128x8x3"), 128: _tiles("32x128x8x3"), 160: _tiles("32x128x8x2"),
                 256: _tiles("64x32x8x2")},
    (HALF, 80): {128: _tiles("64x64x8x2"), 256: _tiles("64x32x8x2")},
    **dict.fromkeys(_FLOAT32, {64: _tiles("32x32x8x2"), 128: _tiles("16x32x8x2"), 256: _tiles("16x32x8x1")}),
}, _SMALL_FIXED)
DKV_GRID = dict(BLOCK_M=[32, 64], BLOCK_N=[32, 64, 128])
DKV_CONFIGS = _configs(dict(BLOCK_M=64, BLOCK_N=64), DKV_GRID, DKV_FIXED, warps=(4, 8), stages=(2, 3))
# Resident tiles: q (forward); q and grad_out (dq); k~ and v~ (dk~/dv~).
ATTENTION_TILING = {"attention_forward_kernel": AttentionTiling("BLOCK_N", 1, FORWARD_FIXED, FORWARD_GRID),
                    "attention_backward_q_kernel": AttentionTiling("BLOCK_N", 2, DQ_FIXED, DQ_GRID),
                    "attention_backward_kv_kernel": AttentionTiling("BLOCK_M", 2, DKV_FIXED, DKV_GRID)}
TRILINEAR_PRUNING = _pruning()
FORWARD_PRUNING = _pruning(ATTENTION_TILING["attention_forward_kernel"])
DQ_PRUNING = _pruning(ATTENTION_TILING["attention_backward_q_kernel"])
DKV_PRUNING = _pruning(ATTENTION_TILING["attention_backward_kv_kernel"])


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
