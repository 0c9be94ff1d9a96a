"""FlashAttention-2 style kernels over pre-sampled keys and values.

q ``(B, Nq, heads, d)`` (any strides in the forward, contiguous in the backward), k~ / v~
``(B, Nk, heads, d)`` contiguous (sampled by the trilinear kernel; Nk is small), out and dq
``(B, Nq, heads, d)`` contiguous, lse and delta ``(B, heads, Nq)`` float32 (lse in natural log).
The head dim is padded by masks only, to D_PAD (a power of two >= 16) or, where that pads less,
to two column blocks D_HEAD + D_TAIL (powers of two >= 16; D_TAIL 0 for one block): a product
over the head dim is then two ``tl.dot``s into one accumulator, and a tile of it two tiles
(``tuning.head_split``: SD1.5's 40, 80 and 160 take 32 + 16, 64 + 16 and 128 + 32 columns
instead of 64, 128 and 256). D_PAD stays the tiles' size class. One program owns a block of
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
call of a jit helper costs about a millisecond. Offsets are a loop-invariant tile of the columns
plus the rows' offsets, added before the pointer: other groupings of the same sums took Triton
3.6 up to 255 registers and spills (dk~/dv~ in float32 at d = 160).
"""
import triton
import triton.language as tl

from .tuning import (ATTENTION_CONFIGS, DKV_CONFIGS, DKV_PRUNING, DQ_CONFIGS, DQ_PRUNING,
                     FORWARD_PRUNING, autotune_bench)

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


@triton.autotune(configs=ATTENTION_CONFIGS, key=["Nq", "Nk", "D_PAD", "D_TAIL"], prune_configs_by=FORWARD_PRUNING,
                 do_bench=autotune_bench)
@triton.jit
def attention_forward_kernel(q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr, q_stride_b, q_stride_n, q_stride_h,
                             Nq, Nk, heads, HEAD_DIM: tl.constexpr, scale,
                             D_PAD: tl.constexpr, D_HEAD: tl.constexpr, D_TAIL: tl.constexpr,
                             PRECISION: tl.constexpr, Q_ALIGN: tl.constexpr,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    b = (tl.program_id(1) // heads).to(tl.int64)
    h = tl.program_id(1) % heads
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rows_ok = rows < Nq
    dims = tl.arange(0, D_HEAD)
    dims_ok = dims < HEAD_DIM
    row_stride = heads * HEAD_DIM  # of k~, v~ and out
    q_rows = tl.multiple_of(b * q_stride_b + h * q_stride_h + rows.to(tl.int64) * q_stride_n, Q_ALIGN)
    q = tl.load(q_ptr + q_rows[:, None] + dims[None, :], mask=rows_ok[:, None] & dims_ok[None, :], other=0.0)
    acc = tl.zeros([BLOCK_M, D_HEAD], dtype=tl.float32)
    kv_base = (b * Nk * heads + h) * HEAD_DIM
    kv_dims = kv_base + dims[None, :]
    if D_TAIL > 0:
        tail = D_HEAD + tl.arange(0, D_TAIL)
        tail_ok = tail < HEAD_DIM
        q_tail = tl.load(q_ptr + q_rows[:, None] + tail[None, :], mask=rows_ok[:, None] & tail_ok[None, :],
                         other=0.0)
        acc_tail = tl.zeros([BLOCK_M, D_TAIL], dtype=tl.float32)
        kv_tail = kv_base + tail[None, :]
    scale_log2 = scale * LOG2E
    row_max = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    row_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    for start in range(0, Nk, BLOCK_N):
        keys = start + tl.arange(0, BLOCK_N)
        keys_ok = keys < Nk
        key_rows = keys[:, None] * row_stride
        kv_offsets = kv_dims + key_rows
        key_mask = keys_ok[:, None] & dims_ok[None, :]
        k = tl.load(k_ptr + kv_offsets, mask=key_mask, other=0.0)
        scores = tl.dot(q, tl.trans(k), input_precision=PRECISION)
        if D_TAIL > 0:
            tail_mask = keys_ok[:, None] & tail_ok[None, :]
            kv_tail_offsets = kv_tail + key_rows
            k_tail = tl.load(k_ptr + kv_tail_offsets, mask=tail_mask, other=0.0)
            scores = tl.dot(q_tail, tl.trans(k_tail), scores, input_precision=PRECISION)
        scores = tl.where(keys_ok[None, :], scores * scale_log2, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(scores, axis=1))  # finite: every block has a valid key
        probs = tl.exp2(scores - new_max[:, None])
        rescale = tl.exp2(row_max - new_max)
        row_sum = row_sum * rescale + tl.sum(probs, axis=1)
        probs = probs.to(v_ptr.dtype.element_ty)
        v = tl.load(v_ptr + kv_offsets, mask=key_mask, other=0.0)
        acc = tl.dot(probs, v, acc * rescale[:, None], input_precision=PRECISION)
        if D_TAIL > 0:
            v_tail = tl.load(v_ptr + kv_tail_offsets, mask=tail_mask, other=0.0)
            acc_tail = tl.dot(probs, v_tail, acc_tail * rescale[:, None], input_precision=PRECISION)
        row_max = new_max
    out_rows = (b * Nq * heads + h) * HEAD_DIM + rows.to(tl.int64)[:, None] * row_stride
    tl.store(out_ptr + out_rows + dims[None, :], (acc / row_sum[:, None]).to(out_ptr.dtype.element_ty),
             mask=rows_ok[:, None] & dims_ok[None, :])
    if D_TAIL > 0:
        tl.store(out_ptr + out_rows + tail[None, :], (acc_tail / row_sum[:, None]).to(out_ptr.dtype.element_ty),
                 mask=rows_ok[:, None] & tail_ok[None, :])
    tl.store(lse_ptr + (b * heads + h) * Nq + rows, row_max * LN2 + tl.log(row_sum), mask=rows_ok)


# reset_to_zero: every benchmark run of the autotuner would add to dk~ and dv~ again.
@triton.autotune(configs=DKV_CONFIGS, key=["Nq", "Nk", "D_PAD", "D_TAIL"], prune_configs_by=DKV_PRUNING,
                 reset_to_zero=["dk_ptr", "dv_ptr"],
                 do_bench=autotune_bench)
@triton.jit
def attention_backward_kv_kernel(q_ptr, k_ptr, v_ptr, grad_out_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
                                 Nq, Nk, heads, HEAD_DIM: tl.constexpr, scale,
                                 D_PAD: tl.constexpr, D_HEAD: tl.constexpr, D_TAIL: tl.constexpr,
                                 PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dk~ and dv~ of one block of keys over split program_id(2) of the queries, added to the
    zeroed float32 buffers; delta = rowsum(grad_out * out) from the dq kernel."""
    b = (tl.program_id(1) // heads).to(tl.int64)
    h = tl.program_id(1) % heads
    keys = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    keys_ok = keys < Nk
    dims = tl.arange(0, D_HEAD)
    dims_ok = dims < HEAD_DIM
    row_stride = heads * HEAD_DIM
    key_rows = (b * Nk * heads + h) * HEAD_DIM + keys[:, None] * row_stride
    key_mask = keys_ok[:, None] & dims_ok[None, :]
    kv_offsets = key_rows + dims[None, :]
    k = tl.load(k_ptr + kv_offsets, mask=key_mask, other=0.0)
    v = tl.load(v_ptr + kv_offsets, mask=key_mask, other=0.0)
    dk = tl.zeros([BLOCK_N, D_HEAD], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, D_HEAD], dtype=tl.float32)
    if D_TAIL > 0:
        tail = D_HEAD + tl.arange(0, D_TAIL)
        tail_ok = tail < HEAD_DIM
        key_tail_mask = keys_ok[:, None] & tail_ok[None, :]
        kv_tail_offsets = key_rows + tail[None, :]
        k_tail = tl.load(k_ptr + kv_tail_offsets, mask=key_tail_mask, other=0.0)
        v_tail = tl.load(v_ptr + kv_tail_offsets, mask=key_tail_mask, other=0.0)
        dk_tail = tl.zeros([BLOCK_N, D_TAIL], dtype=tl.float32)
        dv_tail = tl.zeros([BLOCK_N, D_TAIL], dtype=tl.float32)
        q_tail_dims = (b * Nq * heads + h) * HEAD_DIM + tail[None, :]
    q_dims = (b * Nq * heads + h) * HEAD_DIM + dims[None, :]
    stats_base = (b * heads + h) * Nq
    split_rows = tl.cdiv(tl.cdiv(Nq, BLOCK_M), tl.num_programs(2)) * BLOCK_M
    first_row = tl.program_id(2) * split_rows
    for start in range(first_row, tl.minimum(Nq, first_row + split_rows), BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        rows_ok = rows < Nq
        row_offsets = rows.to(tl.int64)[:, None] * row_stride
        q_offsets = q_dims + row_offsets
        q_mask = rows_ok[:, None] & dims_ok[None, :]
        q = tl.load(q_ptr + q_offsets, mask=q_mask, other=0.0)
        grad_out = tl.load(grad_out_ptr + q_offsets, mask=q_mask, other=0.0)
        lse = tl.load(lse_ptr + stats_base + rows, mask=rows_ok, other=0.0)
        delta = tl.load(delta_ptr + stats_base + rows, mask=rows_ok, other=0.0)
        scores_t = tl.dot(k, tl.trans(q), input_precision=PRECISION)  # (keys, queries)
        if D_TAIL > 0:
            q_tail_mask = rows_ok[:, None] & tail_ok[None, :]
            q_tail_offsets = q_tail_dims + row_offsets
            q_tail = tl.load(q_ptr + q_tail_offsets, mask=q_tail_mask, other=0.0)
            grad_out_tail = tl.load(grad_out_ptr + q_tail_offsets, mask=q_tail_mask, other=0.0)
            scores_t = tl.dot(k_tail, tl.trans(q_tail), scores_t, input_precision=PRECISION)
        probs_t = tl.where(rows_ok[None, :] & keys_ok[:, None], tl.exp(scores_t * scale - lse[None, :]), 0.0)
        probs_low = probs_t.to(grad_out.dtype)
        dv = tl.dot(probs_low, grad_out, dv, input_precision=PRECISION)
        dprobs_t = tl.dot(v, tl.trans(grad_out), input_precision=PRECISION)
        if D_TAIL > 0:
            dv_tail = tl.dot(probs_low, grad_out_tail, dv_tail, input_precision=PRECISION)
            dprobs_t = tl.dot(v_tail, tl.trans(grad_out_tail), dprobs_t, input_precision=PRECISION)
        dscores_t = (probs_t * (dprobs_t - delta[None, :])).to(q.dtype)
        dk = tl.dot(dscores_t, q, dk, input_precision=PRECISION)
        if D_TAIL > 0:
            dk_tail = tl.dot(dscores_t, q_tail, dk_tail, input_precision=PRECISION)
    tl.atomic_add(dk_ptr + kv_offsets, dk * scale, mask=key_mask)
    tl.atomic_add(dv_ptr + kv_offsets, dv, mask=key_mask)
    if D_TAIL > 0:
        tl.atomic_add(dk_ptr + kv_tail_offsets, dk_tail * scale, mask=key_tail_mask)
        tl.atomic_add(dv_ptr + kv_tail_offsets, dv_tail, mask=key_tail_mask)


@triton.autotune(configs=DQ_CONFIGS, key=["Nq", "Nk", "D_PAD", "D_TAIL"], prune_configs_by=DQ_PRUNING,
                 do_bench=autotune_bench)
@triton.jit
def attention_backward_q_kernel(q_ptr, k_ptr, v_ptr, out_ptr, grad_out_ptr, lse_ptr, delta_ptr, dq_ptr,
                                Nq, Nk, heads, HEAD_DIM: tl.constexpr, scale,
                                D_PAD: tl.constexpr, D_HEAD: tl.constexpr, D_TAIL: tl.constexpr,
                                PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dq of one block of queries; also writes their delta = rowsum(grad_out * out) for the
    dk~/dv~ kernel, which runs after it."""
    b = (tl.program_id(1) // heads).to(tl.int64)
    h = tl.program_id(1) % heads
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rows_ok = rows < Nq
    dims = tl.arange(0, D_HEAD)
    dims_ok = dims < HEAD_DIM
    row_stride = heads * HEAD_DIM
    q_rows = (b * Nq * heads + h) * HEAD_DIM + rows.to(tl.int64)[:, None] * row_stride
    q_offsets = q_rows + dims[None, :]
    q_mask = rows_ok[:, None] & dims_ok[None, :]
    q = tl.load(q_ptr + q_offsets, mask=q_mask, other=0.0)
    grad_out = tl.load(grad_out_ptr + q_offsets, mask=q_mask, other=0.0)
    out = tl.load(out_ptr + q_offsets, mask=q_mask, other=0.0)
    delta = tl.sum(grad_out.to(tl.float32) * out.to(tl.float32), axis=1)
    dq = tl.zeros([BLOCK_M, D_HEAD], dtype=tl.float32)
    if D_TAIL > 0:
        tail = D_HEAD + tl.arange(0, D_TAIL)
        tail_ok = tail < HEAD_DIM
        q_tail_mask = rows_ok[:, None] & tail_ok[None, :]
        q_tail_offsets = q_rows + tail[None, :]
        q_tail = tl.load(q_ptr + q_tail_offsets, mask=q_tail_mask, other=0.0)
        grad_out_tail = tl.load(grad_out_ptr + q_tail_offsets, mask=q_tail_mask, other=0.0)
        out_tail = tl.load(out_ptr + q_tail_offsets, mask=q_tail_mask, other=0.0)
        delta += tl.sum(grad_out_tail.to(tl.float32) * out_tail.to(tl.float32), axis=1)
        dq_tail = tl.zeros([BLOCK_M, D_TAIL], dtype=tl.float32)
    stats_base = (b * heads + h) * Nq
    lse = tl.load(lse_ptr + stats_base + rows, mask=rows_ok, other=0.0)
    tl.store(delta_ptr + stats_base + rows, delta, mask=rows_ok)
    kv_base = (b * Nk * heads + h) * HEAD_DIM
    kv_dims = kv_base + dims[None, :]
    if D_TAIL > 0:
        kv_tail = kv_base + tail[None, :]
    for start in range(0, Nk, BLOCK_N):
        keys = start + tl.arange(0, BLOCK_N)
        keys_ok = keys < Nk
        key_rows = keys[:, None] * row_stride
        kv_offsets = kv_dims + key_rows
        key_mask = keys_ok[:, None] & dims_ok[None, :]
        k = tl.load(k_ptr + kv_offsets, mask=key_mask, other=0.0)
        v = tl.load(v_ptr + kv_offsets, mask=key_mask, other=0.0)
        scores = tl.dot(q, tl.trans(k), input_precision=PRECISION)
        dprobs = tl.dot(grad_out, tl.trans(v), input_precision=PRECISION)
        if D_TAIL > 0:
            key_tail_mask = keys_ok[:, None] & tail_ok[None, :]
            kv_tail_offsets = kv_tail + key_rows
            k_tail = tl.load(k_ptr + kv_tail_offsets, mask=key_tail_mask, other=0.0)
            v_tail = tl.load(v_ptr + kv_tail_offsets, mask=key_tail_mask, other=0.0)
            scores = tl.dot(q_tail, tl.trans(k_tail), scores, input_precision=PRECISION)
            dprobs = tl.dot(grad_out_tail, tl.trans(v_tail), dprobs, input_precision=PRECISION)
        probs = tl.where(keys_ok[None, :], tl.exp(scores * scale - lse[:, None]), 0.0)
        dscores = (probs * (dprobs - delta[:, None])).to(k.dtype)
        dq = tl.dot(dscores, k, dq, input_precision=PRECISION)
        if D_TAIL > 0:
            dq_tail = tl.dot(dscores, k_tail, dq_tail, input_precision=PRECISION)
    dq_type = dq_ptr.dtype.element_ty
    tl.store(dq_ptr + q_offsets, (dq * scale).to(dq_type), mask=q_mask)
    if D_TAIL > 0:
        tl.store(dq_ptr + q_tail_offsets, (dq_tail * scale).to(dq_type), mask=q_tail_mask)
