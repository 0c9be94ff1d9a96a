"""FlashAttention-2 style kernels over pre-sampled keys and values.

q ``(B, Nq, heads, d)`` (any strides in the forward, contiguous in the backward), k~ / v~
``(B, Nk, heads, d)`` contiguous (sampled by the trilinear kernel; Nk is small), out and dq
``(B, Nq, heads, d)`` contiguous, lse and delta ``(B, heads, Nq)`` float32 (lse in natural log).
The head dim is padded to D_PAD (a power of two >= 16) by masks only. One program owns a block of
queries (forward, dq) or of keys (dk~, dv~) of one (batch, head) and loops over the other axis
in order: nothing of size Nq x Nk is stored. Only dk~ and dv~ may be written by several programs:
when the queries are split between programs (Nq >> Nk leaves too few key blocks to fill the
GPU), each adds its share atomically; with one split each element is one addition to zero, the
same bits on every run.

HEAD_DIM is a compile-time constant so that Triton knows every row offset is a multiple of its
largest power-of-two factor (8 for d = 40) and loads 16 bytes at a time: as a runtime argument
that is not a multiple of 16, every load compiled to a 2-byte one and nothing was pipelined
(d = 40 is the 64x64 layer, the largest). Q_ALIGN tells the forward the same of q's strides.

Loads are written out in each loop rather than through a helper: under the interpreter every
call of a jit helper costs about a millisecond.
"""
import triton
import triton.language as tl

from .tuning import (ATTENTION_CONFIGS, DKV_CONFIGS, DKV_PRUNING, DQ_CONFIGS, DQ_PRUNING,
                     FORWARD_PRUNING, autotune_bench)

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


@triton.autotune(configs=ATTENTION_CONFIGS, key=["Nq", "Nk", "D_PAD"], prune_configs_by=FORWARD_PRUNING,
                 do_bench=autotune_bench)
@triton.jit
def attention_forward_kernel(q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr, q_stride_b, q_stride_n, q_stride_h,
                             Nq, Nk, heads, HEAD_DIM: tl.constexpr, scale,
                             D_PAD: tl.constexpr, PRECISION: tl.constexpr, Q_ALIGN: tl.constexpr,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    b = (tl.program_id(1) // heads).to(tl.int64)
    h = tl.program_id(1) % heads
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rows_ok = rows < Nq
    dims = tl.arange(0, D_PAD)
    dims_ok = dims < HEAD_DIM
    row_stride = heads * HEAD_DIM  # of k~, v~ and out
    q_mask = rows_ok[:, None] & dims_ok[None, :]
    q_rows = tl.multiple_of(b * q_stride_b + h * q_stride_h + rows.to(tl.int64) * q_stride_n, Q_ALIGN)
    q = tl.load(q_ptr + q_rows[:, None] + dims[None, :], mask=q_mask, other=0.0)
    kv_ptrs = (b * Nk * heads + h) * HEAD_DIM + dims[None, :]
    scale_log2 = scale * LOG2E
    row_max = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    row_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)
    for start in range(0, Nk, BLOCK_N):
        keys = start + tl.arange(0, BLOCK_N)
        keys_ok = keys < Nk
        kv_offsets = kv_ptrs + keys[:, None] * row_stride
        kv_mask = keys_ok[:, None] & dims_ok[None, :]
        k = tl.load(k_ptr + kv_offsets, mask=kv_mask, other=0.0)
        scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2
        scores = tl.where(keys_ok[None, :], scores, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(scores, axis=1))  # finite: every block has a valid key
        probs = tl.exp2(scores - new_max[:, None])
        rescale = tl.exp2(row_max - new_max)
        row_sum = row_sum * rescale + tl.sum(probs, axis=1)
        v = tl.load(v_ptr + kv_offsets, mask=kv_mask, other=0.0)
        acc = acc * rescale[:, None] + tl.dot(probs.to(v.dtype), v, input_precision=PRECISION)
        row_max = new_max
    out = acc / row_sum[:, None]
    out_offsets = (b * Nq * heads + h) * HEAD_DIM + rows.to(tl.int64)[:, None] * row_stride + dims[None, :]
    tl.store(out_ptr + out_offsets, out.to(out_ptr.dtype.element_ty), mask=q_mask)
    tl.store(lse_ptr + (b * heads + h) * Nq + rows, row_max * LN2 + tl.log(row_sum), mask=rows_ok)


# reset_to_zero: every benchmark run of the autotuner would add to dk~ and dv~ again.
@triton.autotune(configs=DKV_CONFIGS, key=["Nq", "Nk", "D_PAD"], prune_configs_by=DKV_PRUNING,
                 reset_to_zero=["dk_ptr", "dv_ptr"],
                 do_bench=autotune_bench)
@triton.jit
def attention_backward_kv_kernel(q_ptr, k_ptr, v_ptr, grad_out_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
                                 Nq, Nk, heads, HEAD_DIM: tl.constexpr, scale,
                                 D_PAD: tl.constexpr, PRECISION: tl.constexpr,
                                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dk~ and dv~ of one block of keys over split program_id(2) of the queries, added to the
    zeroed float32 buffers; delta = rowsum(grad_out * out) from the dq kernel."""
    b = (tl.program_id(1) // heads).to(tl.int64)
    h = tl.program_id(1) % heads
    keys = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    keys_ok = keys < Nk
    dims = tl.arange(0, D_PAD)
    dims_ok = dims < HEAD_DIM
    row_stride = heads * HEAD_DIM
    kv_offsets = (b * Nk * heads + h) * HEAD_DIM + keys[:, None] * row_stride + dims[None, :]
    kv_mask = keys_ok[:, None] & dims_ok[None, :]
    k = tl.load(k_ptr + kv_offsets, mask=kv_mask, other=0.0)
    v = tl.load(v_ptr + kv_offsets, mask=kv_mask, other=0.0)
    q_ptrs = (b * Nq * heads + h) * HEAD_DIM + dims[None, :]
    stats_base = (b * heads + h) * Nq
    dk = tl.zeros([BLOCK_N, D_PAD], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, D_PAD], dtype=tl.float32)
    split_rows = tl.cdiv(tl.cdiv(Nq, BLOCK_M), tl.num_programs(2)) * BLOCK_M
    first_row = tl.program_id(2) * split_rows
    for start in range(first_row, tl.minimum(Nq, first_row + split_rows), BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        rows_ok = rows < Nq
        q_offsets = q_ptrs + rows.to(tl.int64)[:, None] * row_stride
        q_mask = rows_ok[:, None] & dims_ok[None, :]
        q = tl.load(q_ptr + q_offsets, mask=q_mask, other=0.0)
        grad_out = tl.load(grad_out_ptr + q_offsets, mask=q_mask, other=0.0)
        lse = tl.load(lse_ptr + stats_base + rows, mask=rows_ok, other=0.0)
        delta = tl.load(delta_ptr + stats_base + rows, mask=rows_ok, other=0.0)
        scores_t = tl.dot(k, tl.trans(q), input_precision=PRECISION) * scale  # (keys, queries)
        probs_t = tl.where(rows_ok[None, :] & keys_ok[:, None], tl.exp(scores_t - lse[None, :]), 0.0)
        dv += tl.dot(probs_t.to(grad_out.dtype), grad_out, input_precision=PRECISION)
        dprobs_t = tl.dot(v, tl.trans(grad_out), input_precision=PRECISION)
        dscores_t = probs_t * (dprobs_t - delta[None, :])
        dk += tl.dot(dscores_t.to(q.dtype), q, input_precision=PRECISION)
    tl.atomic_add(dk_ptr + kv_offsets, dk * scale, mask=kv_mask)
    tl.atomic_add(dv_ptr + kv_offsets, dv, mask=kv_mask)


@triton.autotune(configs=DQ_CONFIGS, key=["Nq", "Nk", "D_PAD"], prune_configs_by=DQ_PRUNING,
                 do_bench=autotune_bench)
@triton.jit
def attention_backward_q_kernel(q_ptr, k_ptr, v_ptr, out_ptr, grad_out_ptr, lse_ptr, delta_ptr, dq_ptr,
                                Nq, Nk, heads, HEAD_DIM: tl.constexpr, scale,
                                D_PAD: tl.constexpr, PRECISION: tl.constexpr,
                                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dq of one block of queries; also writes their delta = rowsum(grad_out * out) for the
    dk~/dv~ kernel, which runs after it."""
    b = (tl.program_id(1) // heads).to(tl.int64)
    h = tl.program_id(1) % heads
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rows_ok = rows < Nq
    dims = tl.arange(0, D_PAD)
    dims_ok = dims < HEAD_DIM
    row_stride = heads * HEAD_DIM
    q_offsets = (b * Nq * heads + h) * HEAD_DIM + rows.to(tl.int64)[:, None] * row_stride + dims[None, :]
    q_mask = rows_ok[:, None] & dims_ok[None, :]
    q = tl.load(q_ptr + q_offsets, mask=q_mask, other=0.0)
    grad_out = tl.load(grad_out_ptr + q_offsets, mask=q_mask, other=0.0)
    stats_base = (b * heads + h) * Nq
    lse = tl.load(lse_ptr + stats_base + rows, mask=rows_ok, other=0.0)
    out = tl.load(out_ptr + q_offsets, mask=q_mask, other=0.0)
    delta = tl.sum(grad_out.to(tl.float32) * out.to(tl.float32), axis=1)
    tl.store(delta_ptr + stats_base + rows, delta, mask=rows_ok)
    kv_ptrs = (b * Nk * heads + h) * HEAD_DIM + dims[None, :]
    dq = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)
    for start in range(0, Nk, BLOCK_N):
        keys = start + tl.arange(0, BLOCK_N)
        keys_ok = keys < Nk
        kv_offsets = kv_ptrs + keys[:, None] * row_stride
        kv_mask = keys_ok[:, None] & dims_ok[None, :]
        k = tl.load(k_ptr + kv_offsets, mask=kv_mask, other=0.0)
        v = tl.load(v_ptr + kv_offsets, mask=kv_mask, other=0.0)
        scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
        probs = tl.where(keys_ok[None, :], tl.exp(scores - lse[:, None]), 0.0)
        dprobs = tl.dot(grad_out, tl.trans(v), input_precision=PRECISION)
        dscores = probs * (dprobs - delta[:, None])
        dq += tl.dot(dscores.to(k.dtype), k, input_precision=PRECISION)
    tl.store(dq_ptr + q_offsets, (dq * scale).to(dq_ptr.dtype.element_ty), mask=q_mask)
