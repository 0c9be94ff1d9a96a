"""Triton kernels of Eq. 2: trilinear sampling and its backward.

Layouts (contiguous): value ``(B, T, H, W, G, C)``, points ``(B, P, G, 3)``, samples
``(B, P, G, C)``. A "row" is one (b, p, g) triple, ``row = (b * P + p) * G + g``; a voxel is
``(t * H + y) * W + x``. The per-point math follows ``csrc/common/trilinear_math.h``: a
coordinate outside [-1, n) or not finite weighs zero on every corner, gets zero gradient and
never produces an address; the derivative at an exact integer is the right-hand one (floor).

The backward's first kernel computes dpoints and lists every (row, corner) with its voxel key
and weight; a second kernel scatters into ``dvalue`` through that list: with float32 atomics by
default, or, when deterministic algorithms are enabled, without atomics (the keys are sorted
and each run of equal keys is summed in sorted order, the same bits on every run).

Every kernel takes one value or a pair sampled at the same points (TDA's k and v), so that the
pair costs one launch, not two: the forward and the scatters run the second value of a pair as
grid axis 2 = 1; dpoints sums both values' terms in one pass (PAIR). A single value is passed as
its own pair with a grid of one on axis 2.
"""
import triton
import triton.language as tl

from .tuning import SAMPLE_CONFIGS, SEGMENT_CONFIGS, TRILINEAR_PRUNING, autotune_bench

CORNERS = tl.constexpr(8)
INVALID_KEY = tl.constexpr(-1)  # key of an invalid corner; sorts before every real key


@triton.jit
def _axis_neighbours(coord, size):
    """Lower neighbour index, the weights of the lower and upper neighbours and whether each
    neighbour lies in [0, size); everything is zero/False for an unusable coordinate."""
    # Negated form of the bounds test, so that NaN (every comparison false) is unusable.
    usable = (coord >= -1.0) & (coord < size)
    safe = tl.where(usable, coord, 0.0)  # NaN, inf, 1e30 never reach floor or an index
    lower = tl.floor(safe)
    frac = safe - lower
    index = lower.to(tl.int64)
    return index, 1.0 - frac, frac, usable & (index >= 0), usable & (index + 1 < size)


@triton.jit
def _load_coordinates(points_ptr, row, row_ok):
    base = row * 3
    x = tl.load(points_ptr + base, mask=row_ok, other=float("nan"))
    y = tl.load(points_ptr + base + 1, mask=row_ok, other=float("nan"))
    t = tl.load(points_ptr + base + 2, mask=row_ok, other=float("nan"))
    return x, y, t


@triton.jit
def _corner(cx: tl.constexpr, cy: tl.constexpr, ct: tl.constexpr,
            x_index, x_lower_weight, x_upper_weight, x_lower_inside, x_upper_inside,
            y_index, y_lower_weight, y_upper_weight, y_lower_inside, y_upper_inside,
            t_index, t_lower_weight, t_upper_weight, t_lower_inside, t_upper_inside, H, W):
    """Voxel index, validity, weight and the weight's (x, y, t) derivatives of one corner."""
    wx = x_upper_weight if cx else x_lower_weight
    wy = y_upper_weight if cy else y_lower_weight
    wt = t_upper_weight if ct else t_lower_weight
    valid = (x_upper_inside if cx else x_lower_inside) & (y_upper_inside if cy else y_lower_inside) \
        & (t_upper_inside if ct else t_lower_inside)
    # d g(p, lower) / dp = -1 and d g(p, lower + 1) / dp = +1 between the neighbours.
    sx = 1.0 if cx else -1.0
    sy = 1.0 if cy else -1.0
    st = 1.0 if ct else -1.0
    voxel = ((t_index + ct) * H + (y_index + cy)) * W + (x_index + cx)
    weight = tl.where(valid, wx * wy * wt, 0.0).to(tl.float32)
    dweight_x = tl.where(valid, sx * wy * wt, 0.0).to(tl.float32)
    dweight_y = tl.where(valid, wx * sy * wt, 0.0).to(tl.float32)
    dweight_t = tl.where(valid, wx * wy * st, 0.0).to(tl.float32)
    return voxel, valid, weight, dweight_x, dweight_y, dweight_t


@triton.jit
def _row_base(row, rows_per_batch, G, voxels):
    """``b * V * G + g`` of each row, so that a corner's value row is ``base + voxel * G``."""
    return (row // rows_per_batch) * voxels * G + row % G


@triton.jit
def _corner_values(value_ptr, row_base, voxel, valid, row_ok, chan, chan_ok, G, C):
    offsets = (row_base + voxel * G)[:, None] * C + chan[None, :]
    mask = (valid & row_ok)[:, None] & chan_ok[None, :]
    return tl.load(value_ptr + offsets, mask=mask, other=0.0).to(tl.float32)


@triton.autotune(configs=SAMPLE_CONFIGS, key=["C", "BLOCK_C"],
                 prune_configs_by=TRILINEAR_PRUNING, do_bench=autotune_bench)
@triton.jit
def sample_forward_kernel(value_ptr, value2_ptr, points_ptr, out_ptr, out2_ptr, rows, rows_per_batch, G, C, T, H, W,
                          BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    if tl.program_id(2) == 1:
        value_ptr = value2_ptr
        out_ptr = out2_ptr
    row = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    row_ok = row < rows
    chan = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    chan_ok = chan < C
    base = _row_base(row, rows_per_batch, G, T * H * W)
    x, y, t = _load_coordinates(points_ptr, row, row_ok)
    xi, xw0, xw1, xin0, xin1 = _axis_neighbours(x, W)
    yi, yw0, yw1, yin0, yin1 = _axis_neighbours(y, H)
    ti, tw0, tw1, tin0, tin1 = _axis_neighbours(t, T)
    acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    for corner in tl.static_range(CORNERS):
        voxel, valid, weight, _, _, _ = _corner(corner & 1, (corner >> 1) & 1, (corner >> 2) & 1,
                                                xi, xw0, xw1, xin0, xin1, yi, yw0, yw1, yin0, yin1,
                                                ti, tw0, tw1, tin0, tin1, H, W)
        acc += weight[:, None] * _corner_values(value_ptr, base, voxel, valid, row_ok, chan, chan_ok, G, C)
    tl.store(out_ptr + row[:, None] * C + chan[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & chan_ok[None, :])


@triton.autotune(configs=SAMPLE_CONFIGS, key=["C", "BLOCK_C", "PAIR"],
                 prune_configs_by=TRILINEAR_PRUNING, do_bench=autotune_bench)
@triton.jit
def sample_backward_points_kernel(value_ptr, grad_ptr, value2_ptr, grad2_ptr, points_ptr, dpoints_ptr, keys_ptr,
                                  weights_ptr, rows, rows_per_batch, G, C, T, H, W,
                                  PAIR: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """dpoints of <grad, sample(value, points)> (plus <grad2, sample(value2, points)> with PAIR),
    reduced over channels in registers, and each (row, corner)'s voxel key
    ``(b * G + g) * V + voxel`` (or -1 when the corner is invalid) and weight, for the scatter."""
    row = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    row_ok = row < rows
    voxels = T * H * W
    base = _row_base(row, rows_per_batch, G, voxels)
    x, y, t = _load_coordinates(points_ptr, row, row_ok)
    xi, xw0, xw1, xin0, xin1 = _axis_neighbours(x, W)
    yi, yw0, yw1, yin0, yin1 = _axis_neighbours(y, H)
    ti, tw0, tw1, tin0, tin1 = _axis_neighbours(t, T)
    dx = tl.zeros([BLOCK_P], dtype=tl.float32)
    dy = tl.zeros([BLOCK_P], dtype=tl.float32)
    dt = tl.zeros([BLOCK_P], dtype=tl.float32)
    for corner in tl.static_range(CORNERS):
        voxel, valid, weight, dwx, dwy, dwt = _corner(corner & 1, (corner >> 1) & 1, (corner >> 2) & 1,
                                                      xi, xw0, xw1, xin0, xin1, yi, yw0, yw1, yin0, yin1,
                                                      ti, tw0, tw1, tin0, tin1, H, W)
        key = (row // rows_per_batch * G + row % G) * voxels + voxel
        tl.store(keys_ptr + row * CORNERS + corner, tl.where(valid, key, INVALID_KEY), mask=row_ok)
        tl.store(weights_ptr + row * CORNERS + corner, weight, mask=row_ok)
        projection = tl.zeros([BLOCK_P], dtype=tl.float32)  # <grad row, value at this corner>
        for start in range(0, C, BLOCK_C):
            chan = start + tl.arange(0, BLOCK_C)
            chan_ok = chan < C
            grad_offsets = row[:, None] * C + chan[None, :]
            grad_mask = row_ok[:, None] & chan_ok[None, :]
            grad = tl.load(grad_ptr + grad_offsets, mask=grad_mask, other=0.0).to(tl.float32)
            values = _corner_values(value_ptr, base, voxel, valid, row_ok, chan, chan_ok, G, C)
            projection += tl.sum(grad * values, axis=1)
            if PAIR:
                grad = tl.load(grad2_ptr + grad_offsets, mask=grad_mask, other=0.0).to(tl.float32)
                values = _corner_values(value2_ptr, base, voxel, valid, row_ok, chan, chan_ok, G, C)
                projection += tl.sum(grad * values, axis=1)
        dx += dwx * projection
        dy += dwy * projection
        dt += dwt * projection
    point_type = dpoints_ptr.dtype.element_ty
    tl.store(dpoints_ptr + row * 3, dx.to(point_type), mask=row_ok)
    tl.store(dpoints_ptr + row * 3 + 1, dy.to(point_type), mask=row_ok)
    tl.store(dpoints_ptr + row * 3 + 2, dt.to(point_type), mask=row_ok)


@triton.jit
def _value_row(key, G, voxels):
    """The ``dvalue`` row of a voxel key ``(b * G + g) * V + voxel``."""
    group_batch = key // voxels  # b * G + g
    return ((group_batch // G) * voxels + key % voxels) * G + group_batch % G


@triton.autotune(configs=SEGMENT_CONFIGS, key=["C", "BLOCK_C"],
                 prune_configs_by=TRILINEAR_PRUNING, do_bench=autotune_bench)
@triton.jit
def scatter_segments_kernel(grad_ptr, grad2_ptr, weights_ptr, order_ptr, sorted_keys_ptr, segment_ends_ptr,
                            dvalue_ptr, dvalue2_ptr, entries, G, C, voxels,
                            BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    """Deterministic scatter: dvalue[voxel row] = sum over the (row, corner) entries of one key,
    in sorted order, of weight * grad[row]. A lane owns one sorted position and works only where
    a run of equal keys starts, so every output is written once; the run ends at
    ``segment_ends[position]``. The grid covers every position, so the number of runs never
    has to be read back by the host."""
    if tl.program_id(2) == 1:
        grad_ptr = grad2_ptr
        dvalue_ptr = dvalue2_ptr
    position = tl.program_id(0).to(tl.int64) * BLOCK_S + tl.arange(0, BLOCK_S)
    inside = position < entries
    key = tl.load(sorted_keys_ptr + position, mask=inside, other=INVALID_KEY)
    # Position 0 reads INVALID_KEY as its predecessor, which no valid key equals.
    previous = tl.load(sorted_keys_ptr + position - 1, mask=inside & (position > 0), other=INVALID_KEY)
    live = (key != INVALID_KEY) & (key != previous)
    count = tl.where(live, tl.load(segment_ends_ptr + position, mask=live, other=0) - position, 0)
    chan = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    chan_ok = chan < C
    acc = tl.zeros([BLOCK_S, BLOCK_C], dtype=tl.float32)
    for j in range(0, tl.max(count, axis=0)):
        take = j < count
        entry = tl.load(order_ptr + position + j, mask=take, other=0)
        weight = tl.load(weights_ptr + entry, mask=take, other=0.0)
        grad = tl.load(grad_ptr + (entry // CORNERS)[:, None] * C + chan[None, :],
                       mask=take[:, None] & chan_ok[None, :], other=0.0).to(tl.float32)
        acc += weight[:, None] * grad
    tl.store(dvalue_ptr + _value_row(key, G, voxels)[:, None] * C + chan[None, :],
             acc.to(dvalue_ptr.dtype.element_ty), mask=live[:, None] & chan_ok[None, :])


# reset_to_zero: every benchmark run of the autotuner would add to dvalue again.
@triton.autotune(configs=SEGMENT_CONFIGS, key=["C", "BLOCK_C"], reset_to_zero=["dvalue_ptr", "dvalue2_ptr"],
                 prune_configs_by=TRILINEAR_PRUNING, do_bench=autotune_bench)
@triton.jit
def scatter_atomic_kernel(grad_ptr, grad2_ptr, keys_ptr, weights_ptr, dvalue_ptr, dvalue2_ptr, entries, G, C, voxels,
                          BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    """Fast scatter: each (row, corner) entry adds weight * grad[row] to its voxel's float32
    dvalue row with atomics (the order of the additions, and so the last bits, vary)."""
    if tl.program_id(2) == 1:
        grad_ptr = grad2_ptr
        dvalue_ptr = dvalue2_ptr
    entry = tl.program_id(0).to(tl.int64) * BLOCK_S + tl.arange(0, BLOCK_S)
    key = tl.load(keys_ptr + entry, mask=entry < entries, other=INVALID_KEY)
    live = key != INVALID_KEY
    weight = tl.load(weights_ptr + entry, mask=live, other=0.0)
    chan = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = live[:, None] & (chan < C)[None, :]
    grad = tl.load(grad_ptr + (entry // CORNERS)[:, None] * C + chan[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.atomic_add(dvalue_ptr + _value_row(key, G, voxels)[:, None] * C + chan[None, :], weight[:, None] * grad,
                  mask=mask)
