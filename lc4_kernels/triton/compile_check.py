"""Compiles the backend's kernels for sm_80 and sm_90 without a GPU (Triton's own LLVM and the
ptxas shipped in the triton wheel), to catch what only the GPU compiler rejects (the interpreter
accepts more, e.g. tl.dot with an inner size below 16) and to see each config's shared memory.

    python -m lc4_kernels.triton.compile_check [--configs every] [--dtype fp16] [--head-dim 80]

Not usable under TRITON_INTERPRET=1 (kernels are then interpreted functions, not compilable).
"""
from __future__ import annotations

import argparse
import inspect

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from . import attention_kernels, trilinear_kernels
from .attention import alignment
from .tuning import channel_block, padded_head_dim

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


def _kernels(dtype: str, head_dim: int):
    """(autotuned kernel, pointer/float argument types, constexprs) of every kernel."""
    attention_types = {name: f"*{dtype}" for name in ("q_ptr", "k_ptr", "v_ptr", "out_ptr", "grad_out_ptr", "dq_ptr")}
    attention_types.update({name: "*fp32" for name in ("lse_ptr", "delta_ptr", "dk_ptr", "dv_ptr")}, scale="fp32")
    attention_constants = dict(HEAD_DIM=head_dim, D_PAD=padded_head_dim(head_dim), Q_ALIGN=alignment(head_dim),
                               PRECISION="ieee" if dtype == "fp32" else "tf32")
    sample_types = {"points_ptr": "*fp32", "dpoints_ptr": "*fp32", "keys_ptr": "*i64", "weights_ptr": "*fp32",
                    "order_ptr": "*i64", "sorted_keys_ptr": "*i64", "segment_ends_ptr": "*i64"}
    sample_types.update({f"{name}{pair}_ptr": f"*{dtype}" for name in ("value", "out", "grad", "dvalue")
                         for pair in ("", "2")})
    sample_constants = dict(BLOCK_C=channel_block(head_dim))
    return [
        (attention_kernels.attention_forward_kernel, attention_types, attention_constants),
        (attention_kernels.attention_backward_kv_kernel, attention_types, attention_constants),
        (attention_kernels.attention_backward_q_kernel, attention_types, attention_constants),
        (trilinear_kernels.sample_forward_kernel, sample_types, sample_constants),
        (trilinear_kernels.sample_backward_points_kernel, sample_types, dict(sample_constants, PAIR=True)),
        (trilinear_kernels.scatter_segments_kernel, sample_types, sample_constants),
        (trilinear_kernels.scatter_atomic_kernel, dict(sample_types, dvalue_ptr="*fp32", dvalue2_ptr="*fp32"),
         sample_constants),
    ]


CONFIG_CHOICES = ("smallest", "largest", "every")


def _configs(autotuned, constants, which: str):
    configs = autotuned.configs
    if autotuned.early_config_prune is not None:
        configs = autotuned.early_config_prune(configs, {}, **constants)
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
    for autotuned, types, constants in _kernels(dtype, head_dim):
        for config in _configs(autotuned, constants, which):
            compiled = _compile(autotuned.fn, types, constants, config, capability, head_dim)
            yield autotuned.fn.__name__, config, compiled.metadata.shared


def compile_config(autotuned, config: triton.Config, capability: int, dtype: str, head_dim: int) -> int:
    """Shared memory bytes of one kernel (an autotuned kernel of this backend) in one config."""
    types, constants = next((t, c) for kernel, t, c in _kernels(dtype, head_dim) if kernel is autotuned)
    return _compile(autotuned.fn, types, constants, config, capability, head_dim).metadata.shared


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="largest", choices=CONFIG_CHOICES)
    parser.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    parser.add_argument("--head-dim", type=int, default=80)
    args = parser.parse_args()
    reason = supported()
    if reason:
        raise SystemExit(f"cannot compile ahead of time: {reason}")
    for capability in sorted(SHARED_MEMORY_LIMIT):
        for name, config, shared in compile_kernels(capability, args.dtype, args.head_dim, args.configs):
            fits = "ok" if shared <= SHARED_MEMORY_LIMIT[capability] else "EXCEEDS the shared memory limit"
            print(f"sm_{capability} {name} {config.kwargs} warps={config.num_warps} stages={config.num_stages}: "
                  f"shared {shared} B {fits}", flush=True)


if __name__ == "__main__":
    main()
