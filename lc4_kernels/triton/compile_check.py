"""Compiles the backend's kernels for sm_80 and sm_90 without a GPU (Triton's own LLVM and the
ptxas shipped in the triton wheel), to catch what only the GPU compiler rejects (the interpreter
accepts more, e.g. tl.dot with an inner size below 16) and to see each config's shared memory.

    python -m lc4_kernels.triton.compile_check [--configs every] [--dtype fp16] [--head-dim 80]
    LC4_TRITON_AUTOTUNE=0 python -m lc4_kernels.triton.compile_check --fixed [--out DIR]

``--fixed`` writes a table of the attention kernels' fixed configurations (the ones used without
autotuning) at the SD1.5 head dims for each target and dtype: registers, spills (stack bytes),
shared memory and the MMA instructions they compile to.

Not usable under TRITON_INTERPRET=1 (kernels are then interpreted functions, not compilable).
"""
from __future__ import annotations

import argparse
import collections
import inspect
import re
import subprocess
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from . import attention_kernels, trilinear_kernels
from .attention import alignment
from .tuning import ATTENTION_TILING, AUTOTUNE, channel_block, head_split, launch_class, padded_head_dim

# Shared memory per block (bytes) that each target can give a kernel.
SHARED_MEMORY_LIMIT = {80: 163 * 1024, 90: 227 * 1024}


def supported() -> str | None:
    """None when this triton can compile ahead of time here, else why not."""
    if not hasattr(attention_kernels.attention_forward_kernel, "fn") or \
            not hasattr(attention_kernels.attention_forward_kernel.fn, "arg_names"):
        return "kernels are interpreted (TRITON_INTERPRET=1)"
    if "constexprs" not in inspect.signature(ASTSource.__init__).parameters:
        return f"triton {triton.__version__}'s ASTSource has another signature"
    return None


def _kernels(dtype: str, head_dim: int, capability: int = 90):
    """(autotuned kernel, pointer/float argument types, constexprs) of every kernel, the attention
    kernels' column blocks as a launch on ``sm_<capability>`` takes them."""
    attention_types = {name: f"*{dtype}" for name in ("q_ptr", "k_ptr", "v_ptr", "out_ptr", "grad_out_ptr", "dq_ptr")}
    attention_types.update({name: "*fp32" for name in ("lse_ptr", "delta_ptr", "dk_ptr", "dv_ptr")}, scale="fp32")
    launch = launch_class(ELEMENT_BYTES[dtype], capability)

    def attention_constants(kernel: str) -> dict:
        d_head, d_tail = head_split(head_dim, kernel, launch)
        return dict(HEAD_DIM=head_dim, D_PAD=padded_head_dim(head_dim), D_HEAD=d_head, D_TAIL=d_tail,
                    Q_ALIGN=alignment(head_dim), PRECISION="ieee" if dtype == "fp32" else "tf32")
    sample_types = {"points_ptr": "*fp32", "dpoints_ptr": "*fp32", "keys_ptr": "*i64", "weights_ptr": "*fp32",
                    "order_ptr": "*i64", "sorted_keys_ptr": "*i64", "segment_ends_ptr": "*i64"}
    sample_types.update({f"{name}{pair}_ptr": f"*{dtype}" for name in ("value", "out", "grad", "dvalue")
                         for pair in ("", "2")})
    sample_constants = dict(BLOCK_C=channel_block(head_dim))
    return [
        (attention_kernels.attention_forward_kernel, attention_types, attention_constants("forward")),
        (attention_kernels.attention_backward_kv_kernel, attention_types, attention_constants("dkv")),
        (attention_kernels.attention_backward_q_kernel, attention_types, attention_constants("dq")),
        (trilinear_kernels.sample_forward_kernel, sample_types, sample_constants),
        (trilinear_kernels.sample_backward_points_kernel, sample_types, dict(sample_constants, PAIR=True)),
        (trilinear_kernels.scatter_segments_kernel, sample_types, sample_constants),
        (trilinear_kernels.scatter_atomic_kernel, dict(sample_types, dvalue_ptr="*fp32", dvalue2_ptr="*fp32"),
         sample_constants),
    ]


CONFIG_CHOICES = ("smallest", "largest", "every")


ELEMENT_BYTES = {"fp16": 2, "bf16": 2, "fp32": 4}


def _configs(autotuned, constants, which: str, capability: int = 90, dtype: str = "fp16"):
    """The configurations a launch on ``sm_<capability>`` in ``dtype`` would choose from: an
    attention kernel's fixed pick without autotuning, else the candidates its pruning would time
    there, by registers only (so that ``--configs every`` shows those over the shared memory too)."""
    tiling = ATTENTION_TILING.get(autotuned.fn.__name__)
    configs = autotuned.configs
    columns = constants.get("D_HEAD", 0) + constants.get("D_TAIL", 0)
    if tiling is not None and not AUTOTUNE:
        configs = [tiling.fixed_pick(columns, ELEMENT_BYTES[dtype], capability, SHARED_MEMORY_LIMIT[capability])]
    elif tiling is not None:
        target = (columns, ELEMENT_BYTES[dtype], capability, 2**63)
        configs = [config for config in configs if tiling.worth_timing(config, *target)] or configs[:1]
    return {"smallest": configs[:1], "largest": configs[-1:], "every": configs}[which]


def _launch_specialization(arg_names, signature, head_dim: int) -> dict:
    """What a launch tells Triton at the SD1.5 shapes: torch's allocations are 16-byte aligned and
    the sizes divisible by 16, which lets Triton pipeline the loads through shared memory (without
    it a compiled kernel may use a fraction of the shared memory a launched one needs)."""
    divisible = {"Nq", "Nk", "rows", "rows_per_batch"}
    if head_dim % 16 == 0:
        divisible |= {"q_stride_b", "q_stride_n", "q_stride_h", "C"}
    return {(index,): [["tt.divisibility", 16]] for index, name in enumerate(arg_names)
            if signature[name].startswith("*") or name in divisible}


def _compile(jit_fn, types: dict, constants: dict, config: triton.Config, capability: int, head_dim: int):
    values = {name: value for name, value in dict(constants, **config.kwargs).items() if name in jit_fn.arg_names}
    signature = {name: "constexpr" if name in values else types.get(name, "i32") for name in jit_fn.arg_names}
    source = ASTSource(fn=jit_fn, signature=signature,
                       constexprs={(jit_fn.arg_names.index(name),): value for name, value in values.items()},
                       attrs=_launch_specialization(jit_fn.arg_names, signature, head_dim))
    return triton.compile(source, target=GPUTarget("cuda", capability, 32),
                          options=dict(num_warps=config.num_warps, num_stages=config.num_stages))


def compile_kernels(capability: int, dtype: str = "fp16", head_dim: int = 80, which: str = "largest"):
    """Compiles each kernel (its smallest, largest or every autotune config) for
    ``sm_<capability>``; yields (kernel name, config, shared memory bytes)."""
    for autotuned, types, constants in _kernels(dtype, head_dim, capability):
        for config in _configs(autotuned, constants, which, capability, dtype):
            compiled = _compile(autotuned.fn, types, constants, config, capability, head_dim)
            yield autotuned.fn.__name__, config, compiled.metadata.shared


def compile_config(autotuned, config: triton.Config, capability: int, dtype: str, head_dim: int) -> int:
    """Shared memory bytes of one kernel (an autotuned kernel of this backend) in one config."""
    types, constants = next((t, c) for kernel, t, c in _kernels(dtype, head_dim, capability) if kernel is autotuned)
    return _compile(autotuned.fn, types, constants, config, capability, head_dim).metadata.shared


CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"  # shipped in the wheel


def resource_usage(compiled) -> tuple[int, int]:
    """(registers per thread, stack bytes per thread) of a compiled kernel, from the cubin by the
    wheel's cuobjdump. Stack beyond zero is spilled registers (these kernels call nothing)."""
    with tempfile.TemporaryDirectory() as directory:
        cubin = Path(directory) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        dump = subprocess.run([str(CUOBJDUMP), "--dump-resource-usage", str(cubin)], capture_output=True, text=True,
                              check=True).stdout
    usage = re.search(r"REG:(\d+) STACK:(\d+)", dump)
    if usage is None:
        raise RuntimeError(f"no resource usage in cuobjdump's output: {dump[-500:]}")
    return int(usage.group(1)), int(usage.group(2))


def mma_instructions(compiled) -> dict:
    """{instruction shape: count} of the tensor-core instructions in the PTX: ``wgmma m64nNk16``
    (Hopper) or ``mma.sync mMnNkK`` (sm_80's, also run by Hopper)."""
    ptx = compiled.asm["ptx"]
    counts = collections.Counter(f"wgmma {shape}" for shape in
                                 re.findall(r"wgmma\.mma_async\.sync\.aligned\.(m\d+n\d+k\d+)", ptx))
    counts.update(f"mma.sync {shape}" for shape in re.findall(r"\bmma\.sync\.aligned\.(m\d+n\d+k\d+)", ptx))
    return dict(sorted(counts.items()))


def mma_layouts(compiled) -> list[str]:
    """The distinct tensor-core layouts of the TTGIR (warps per CTA and instruction shape)."""
    return sorted(set(re.findall(r"#ttg\.nvidia_mma<\{([^}]*)\}>", compiled.asm["ttgir"])))


FIXED_HEAD_DIMS = (40, 80, 160)  # the SD1.5 layers: D_PAD 64, 128, 256
FIXED_DTYPES = ("fp16", "bf16", "fp32")


def fixed_rows(capabilities=(80, 90), dtypes=FIXED_DTYPES, head_dims=FIXED_HEAD_DIMS):
    """One dict per (attention kernel, target, dtype, head dim): its fixed configuration compiled.
    Needs LC4_TRITON_AUTOTUNE=0 (read when the kernels are defined)."""
    if AUTOTUNE:
        raise RuntimeError("the fixed configurations are picked without autotuning: set LC4_TRITON_AUTOTUNE=0")
    for capability in capabilities:
        for dtype in dtypes:
            for head_dim in head_dims:
                for autotuned, types, constants in _kernels(dtype, head_dim, capability):
                    if autotuned.fn.__name__ not in ATTENTION_TILING:
                        continue
                    (config,) = _configs(autotuned, constants, "every", capability, dtype)
                    compiled = _compile(autotuned.fn, types, constants, config, capability, head_dim)
                    registers, stack = resource_usage(compiled)
                    yield dict(kernel=autotuned.fn.__name__, capability=capability, dtype=dtype, head_dim=head_dim,
                               columns=(constants["D_HEAD"], constants["D_TAIL"]), config=config, registers=registers, stack=stack, shared=compiled.metadata.shared,
                               mma=mma_instructions(compiled), layouts=mma_layouts(compiled))


def fixed_markdown(rows) -> str:
    lines = [f"# Triton {triton.__version__}: the fixed attention configurations compiled",
             "",
             "`LC4_TRITON_AUTOTUNE=0 python -m lc4_kernels.triton.compile_check --fixed`: each attention kernel's",
             "configuration without autotuning at the SD1.5 head dims, compiled for each target without a GPU",
             "(launch specialization as at those shapes). Columns: the head dim's column blocks, D_HEAD + D_TAIL",
             "(`tuning.head_split`). Tiles: BLOCK_M x BLOCK_N x warps x stages. Stack bytes are spilled registers.",
             "MMA: the tensor-core instructions of the PTX and how often each occurs.",
             "",
             "| kernel | target | dtype | d | columns | tiles | registers | stack bytes | shared bytes | MMA |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c = r["config"]
        tiles = f"{c.kwargs['BLOCK_M']}x{c.kwargs['BLOCK_N']}x{c.num_warps}x{c.num_stages}"
        mma = ", ".join(f"{shape} x{count}" for shape, count in r["mma"].items()) or "none (FMA)"
        head, tail = r["columns"]
        columns = f"{head} + {tail}" if tail else f"{head}"
        lines.append(f"| `{r['kernel']}` | sm_{r['capability']} | {r['dtype']} | {r['head_dim']} | {columns} | {tiles} | "
                     f"{r['registers']} | {r['stack']} | {r['shared']} | {mma} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="largest", choices=CONFIG_CHOICES)
    parser.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    parser.add_argument("--head-dim", type=int, default=80)
    parser.add_argument("--fixed", action="store_true", help="the table of the fixed attention configurations")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/triton_compile"),
                        help="where --fixed writes triton-<version>.md")
    args = parser.parse_args()
    reason = supported()
    if reason:
        raise SystemExit(f"cannot compile ahead of time: {reason}")
    if args.fixed:
        text = fixed_markdown(fixed_rows())
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"triton-{triton.__version__}.md").write_text(text)
        print(text)
        return
    for capability in sorted(SHARED_MEMORY_LIMIT):
        for name, config, shared in compile_kernels(capability, args.dtype, args.head_dim, args.configs):
            fits = "ok" if shared <= SHARED_MEMORY_LIMIT[capability] else "EXCEEDS the shared memory limit"
            print(f"sm_{capability} {name} {config.kwargs} warps={config.num_warps} stages={config.num_stages}: "
                  f"shared {shared} B {fits}", flush=True)


if __name__ == "__main__":
    main()
