// tda_attention on the CPU, FlashAttention-style.
//
// Forward: keys and values are sampled once per (batch, group) into small buffers
// (B, heads, Nk, d), then each task (batch, head, block of queries) runs an online softmax over
// blocks of keys. Only the output and a per-query log-sum-exp are kept; nothing of size Nq x Nk
// is allocated. Tile products go to the BLAS behind at::mm (kept single-threaded inside
// at::parallel_for), the softmax and everything else is fused here.
//
// Backward: probabilities are recomputed from the log-sum-exp. Tasks own (batch, head, chunk
// of queries) and accumulate dk~/dv~ into per-chunk buffers reduced in a fixed order, so the
// result has the same bits on every run whatever the thread count. dk~/dv~ are then scattered
// into dk/dv through the trilinear weights (tasks own disjoint heads), and dpoints is reduced
// from dk~/dv~ and the corner values.
//
// Half-precision inputs are read as stored and computed in float: the sampled keys and values,
// the tiles of queries and incoming gradients (converted a block at a time), the tile products,
// the softmax and every sum are float; out and dq are written back in the inputs' dtype.
// bfloat16 instead multiplies its tiles in bfloat16 on the CPU's matrix units where torch's
// oneDNN microkernel runs (bf16_attention_tiles.h; LC4_CPU_BRGEMM=0 turns that off), with the
// same block loops and float32 sums.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common/trilinear_math.h"
#include "cpu/bf16_attention_tiles.h"
#include "cpu/corner_rows.h"
#include "cpu/cpu_kernels.h"
#include "cpu/float_rows.h"
#include "cpu/sequential_blas.h"
#include "cpu/vec_math.h"

namespace lc4::cpu {
namespace {

constexpr int64_t kForwardBlockQ = 128;
constexpr int64_t kForwardBlockK = 512;
constexpr int64_t kBackwardBlockQ = 128;
constexpr int64_t kBackwardBlockK = 256;

// The query and key block sizes of one call: the constants above, or all of Nq / Nk where that is
// fewer, so that a small problem neither allocates nor zeroes buffers for a whole block. The
// tiling, and so every result bit, is the same either way.
struct Blocks {
  int64_t q, k;
};
Blocks blocks_for(const AttentionParams& p, int64_t max_q, int64_t max_k) {
  return {std::clamp<int64_t>(p.Nq, 1, max_q), std::clamp<int64_t>(p.Nk, 1, max_k)};
}
// The backward splits each (batch, head) into enough query chunks for about this many tasks;
// fixed (not the thread count) so that the reduction order, and so the bits, never change.
constexpr int64_t kBackwardTasks = 32;

// A (rows x cols) row-major view of memory owned elsewhere, for the tile products.
template <typename T>
at::Tensor tile(const T* data, int64_t rows, int64_t cols, int64_t row_stride) {
  return at::from_blob(const_cast<T*>(data), {rows, cols}, {row_stride, 1},
                       at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
}

// A (rows x d) tile of rows `row_stride` elements apart, in the accumulation type: a view when the
// storage is that type already, otherwise a converted copy in `buffer` (at least rows * d).
template <typename T, typename A>
at::Tensor rows_as(const T* first, int64_t rows, int64_t d, int64_t row_stride, std::vector<A>& buffer) {
  if constexpr (std::is_same_v<T, A>) {
    return tile(first, rows, d, row_stride);
  } else {
    for (int64_t i = 0; i < rows; ++i) convert_row(first + i * row_stride, d, buffer.data() + i * d);
    return tile(buffer.data(), rows, d, d);
  }
}

// Scratch memory comes from the torch allocator, so that memory profilers see it.
template <typename T>
at::Tensor scratch(int64_t elements) {
  return at::zeros({elements}, at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
}

// Samples k and v at every key point into (B, heads, Nk, d) buffers of the accumulation type,
// writing every row.
template <typename T, typename A = acc_t<T>>
void sample_keys_values(const AttentionParams& p, A* k_sampled, A* v_sampled) {
  const auto* k = static_cast<const T*>(p.k);
  const auto* v = static_cast<const T*>(p.v);
  const auto* points = static_cast<const A*>(p.points);
  const int64_t voxels = p.T * p.H * p.W, d = p.d, Nk = p.Nk, heads = p.heads;
  const int64_t per_group = heads / p.G;
  at::parallel_for(0, p.B * Nk, 16, [&](int64_t begin, int64_t end) {
    TrilinearPoint<A> tp;
    const std::vector<T> zeros(d, T(0));
    for (int64_t bn = begin; bn < end; ++bn) {
      const int64_t b = bn / Nk, n = bn % Nk;
      for (int64_t g = 0; g < p.G; ++g) {
        const A* xyt = points + (bn * p.G + g) * 3;
        trilinear_point(xyt[0], xyt[1], xyt[2], p.T, p.H, p.W, tp);
        for (int64_t h = g * per_group; h < (g + 1) * per_group; ++h) {
          const int64_t first = b * voxels * heads * d + h * d, row = ((b * heads + h) * Nk + n) * d;
          weighted_corner_sum(corner_rows(tp, k + first, heads * d, zeros.data()), d, k_sampled + row);
          weighted_corner_sum(corner_rows(tp, v + first, heads * d, zeros.data()), d, v_sampled + row);
        }
      }
    }
  });
}

// k and v sampled at every key point: (2, B, heads, Nk, d) in the accumulation type.
template <typename T, typename A = acc_t<T>>
at::Tensor sampled_keys_values(const AttentionParams& p) {
  const int64_t size = p.B * p.heads * p.Nk * p.d;
  at::Tensor sampled = at::empty({2 * size}, at::TensorOptions().dtype(c10::CppTypeToScalarType<A>::value));
  sample_keys_values<T>(p, sampled.data_ptr<A>(), sampled.data_ptr<A>() + size);
  return sampled;
}

// The forward's two products over one block of keys, in float32 through the BLAS behind at::mm:
// scores = scale q K~^T and acc += P V~, on the sampled keys and values. The probabilities
// replace the scores in place.
template <typename T, typename A = acc_t<T>>
class FloatTiles {
 public:
  FloatTiles(const AttentionParams& p, Blocks blocks, const A* k_sampled, const A* v_sampled)
      : k_sampled_(k_sampled), v_sampled_(v_sampled), Nk_(p.Nk), d_(p.d), scale_(static_cast<A>(p.scale)),
        q_rows_(blocks.q * p.d) {}

  void load_queries(const T* first, int64_t nq, int64_t row_stride) {
    q_tile_ = rows_as(first, nq, d_, row_stride, q_rows_);
  }
  void scores(int64_t bh, int64_t j0, int64_t nq, int64_t nk, A* scores) {
    probs_ = scores;
    at::Tensor score_tile = tile(scores, nq, nk, nk);
    // beta = 0: the tile's previous contents are ignored, NaN included.
    at::addmm_out(score_tile, score_tile, q_tile_, tile(k_sampled_ + (bh * Nk_ + j0) * d_, nk, d_, d_).t(),
                  /*beta=*/0, /*alpha=*/scale_);
  }
  // The scale the softmax still has to apply to the scores: none, addmm applied it.
  A unapplied_scale() const { return A(1); }
  // Row i of the block's probabilities, exp(row * factor - shift); returns their sum.
  A exponentiate_row(int64_t /*i*/, A* row, int64_t nk, A factor, A shift) {
    return exp_rows_and_sum(row, nk, factor, shift);
  }
  void accumulate(int64_t bh, int64_t j0, int64_t nq, int64_t nk, A* acc) {
    tile(acc, nq, d_, d_).addmm_(tile(probs_, nq, nk, nk), tile(v_sampled_ + (bh * Nk_ + j0) * d_, nk, d_, d_));
  }
  void finish() {}

 private:
  const A *k_sampled_, *v_sampled_;
  int64_t Nk_, d_;
  A scale_;
  std::vector<A> q_rows_;
  at::Tensor q_tile_;
  const A* probs_ = nullptr;
};

// The online softmax over blocks of keys, one task per (batch, head, block of queries); the tile
// products come from `make_tiles()`, one per thread.
template <typename T, typename MakeTiles>
void attention_forward_over_blocks(const AttentionParams& p, Blocks blocks, MakeTiles make_tiles) {
  using A = acc_t<T>;
  const auto* q = static_cast<const T*>(p.q);
  auto* out = static_cast<T*>(p.out);
  auto* lse = static_cast<A*>(p.lse);
  const int64_t d = p.d, Nk = p.Nk, Nq = p.Nq, heads = p.heads, row_stride = heads * d;
  const int64_t q_blocks = (Nq + blocks.q - 1) / blocks.q;

  at::parallel_for(0, p.B * heads * q_blocks, 1, [&](int64_t begin, int64_t end) {
    const SequentialBlasScope sequential_blas;
    auto tiles = make_tiles();
    const A scale = tiles.unapplied_scale();
    std::vector<A> acc(blocks.q * d), scores(blocks.q * blocks.k);
    std::vector<A> row_max(blocks.q), row_sum(blocks.q), new_max(blocks.q), correction(blocks.q);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bh = task / q_blocks, b = bh / heads, h = bh % heads;
      const int64_t i0 = (task % q_blocks) * blocks.q, nq = std::min(blocks.q, Nq - i0);
      tiles.load_queries(q + ((b * Nq + i0) * heads + h) * d, nq, row_stride);
      std::fill(acc.begin(), acc.end(), A(0));
      std::fill(row_max.begin(), row_max.end(), -std::numeric_limits<A>::infinity());
      std::fill(row_sum.begin(), row_sum.end(), A(0));

      for (int64_t j0 = 0; j0 < Nk; j0 += blocks.k) {
        const int64_t nk = std::min(blocks.k, Nk - j0);
        tiles.scores(bh, j0, nq, nk, scores.data());
        // A positive scale goes into the exponent (the row's maximum scales with it); any other is
        // applied to the scores first.
        const A factor = scale > A(0) ? scale : A(1);
        for (int64_t i = 0; i < nq; ++i) {
          A* row = scores.data() + i * nk;
          if (!(scale > A(0))) {
#pragma omp simd
            for (int64_t j = 0; j < nk; ++j) row[j] *= scale;
          }
          new_max[i] = std::max(row_max[i], factor * row_max_of(row, nk));
          correction[i] = row_max[i] - new_max[i];
        }
        // exp(old maximum - new) of every row at once: what the earlier blocks' sums shrink by.
        exp_rows_and_sum(correction.data(), nq, A(1), A(0));
        for (int64_t i = 0; i < nq; ++i) {
          const A block_sum = tiles.exponentiate_row(i, scores.data() + i * nk, nk, factor, new_max[i]);
          row_sum[i] = row_sum[i] * correction[i] + block_sum;
          row_max[i] = new_max[i];
          A* a = acc.data() + i * d;
#pragma omp simd
          for (int64_t c = 0; c < d; ++c) a[c] *= correction[i];
        }
        tiles.accumulate(bh, j0, nq, nk, acc.data());
      }
      for (int64_t i = 0; i < nq; ++i) {
        const A inv = A(1) / row_sum[i];
        A* a = acc.data() + i * d;
#pragma omp simd
        for (int64_t c = 0; c < d; ++c) a[c] *= inv;
        convert_row(a, d, out + ((b * Nq + i0 + i) * heads + h) * d);
        lse[bh * Nq + i0 + i] = row_max[i] + std::log(row_sum[i]);
      }
    }
    tiles.finish();
  });
}

}  // namespace

template <typename T>
void tda_attention_forward(const AttentionParams& p) {
  using A = acc_t<T>;
  const at::Tensor sampled = sampled_keys_values<T>(p);
  A* k_sampled = sampled.data_ptr<A>();
  A* v_sampled = k_sampled + p.B * p.heads * p.Nk * p.d;
  const Blocks blocks = blocks_for(p, kForwardBlockQ, kForwardBlockK);
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    if (p.d > 0 && bf16_brgemm_enabled()) {  // the packing takes no empty matrix
      const PackedKeyBlocks packed(p, k_sampled, v_sampled, blocks.k, {KeyMatrix::keys_transposed, KeyMatrix::values});
      attention_forward_over_blocks<T>(p, blocks, [&] { return Bf16ForwardTiles(p, packed, blocks.q, blocks.k); });
      return;
    }
  }
  attention_forward_over_blocks<T>(p, blocks, [&] { return FloatTiles<T>(p, blocks, k_sampled, v_sampled); });
}

namespace {

// The backward's products over one block of queries and one of keys, in float32 through the
// BLAS: raw scores q K~^T and dO V~^T; then dv~ += P^T dO and dk~ += dS^T q into the task's
// partial sums, (Nk x d) per task, and dq += dS K~. P and dS replace the scores in place.
template <typename T, typename A = acc_t<T>>
class FloatBackwardTiles {
 public:
  static constexpr bool transposed_partials = false;

  FloatBackwardTiles(const AttentionParams& p, Blocks blocks, const A* k_sampled, const A* v_sampled, A* partial_dk,
                     A* partial_dv)
      : k_sampled_(k_sampled), v_sampled_(v_sampled), partial_dk_(partial_dk), partial_dv_(partial_dv), Nk_(p.Nk),
        d_(p.d), q_rows_(blocks.q * p.d), do_rows_(blocks.q * p.d) {}

  void load_queries(const T* q_first, const T* do_first, int64_t nq, int64_t row_stride) {
    q_tile_ = rows_as(q_first, nq, d_, row_stride, q_rows_);
    do_tile_ = rows_as(do_first, nq, d_, row_stride, do_rows_);
  }
  void scores(int64_t bh, int64_t j0, int64_t nq, int64_t nk, A* probs, A* dscores) {
    probs_ = probs;
    dscores_ = dscores;
    at::Tensor p_tile = tile(probs, nq, nk, nk), ds_tile = tile(dscores, nq, nk, nk);
    at::mm_out(p_tile, q_tile_, keys(bh, j0, nk).t());
    at::mm_out(ds_tile, do_tile_, tile(v_sampled_ + (bh * Nk_ + j0) * d_, nk, d_, d_).t());
  }
  // Row i of P and dS from its raw scores and dO . v~ (the rows of scores()'s buffers).
  void softmax_row(int64_t /*i*/, A* probs, A* dscores, int64_t nk, A scale, A lse, A delta) {
    softmax_backward_row(probs, dscores, nk, scale, lse, delta);
  }
  void accumulate(int64_t task, int64_t bh, int64_t j0, int64_t nq, int64_t nk, A* dq) {
    const at::Tensor p_tile = tile(probs_, nq, nk, nk), ds_tile = tile(dscores_, nq, nk, nk);
    tile(partial_dv_ + (task * Nk_ + j0) * d_, nk, d_, d_).addmm_(p_tile.t(), do_tile_);
    tile(partial_dk_ + (task * Nk_ + j0) * d_, nk, d_, d_).addmm_(ds_tile.t(), q_tile_);
    tile(dq, nq, d_, d_).addmm_(ds_tile, keys(bh, j0, nk));
  }
  void finish() {}

 private:
  at::Tensor keys(int64_t bh, int64_t j0, int64_t nk) const { return tile(k_sampled_ + (bh * Nk_ + j0) * d_, nk, d_, d_); }

  const A *k_sampled_, *v_sampled_;
  A *partial_dk_, *partial_dv_;
  int64_t Nk_, d_;
  std::vector<A> q_rows_, do_rows_;
  at::Tensor q_tile_, do_tile_;
  const A *probs_ = nullptr, *dscores_ = nullptr;
};

// dq and the per-task partial sums of dk~ and dv~: tasks own (batch, head, chunk of queries) and
// recompute the probabilities from the log-sum-exp, block by block; the products come from
// `make_tiles()`, one per thread.
template <typename T, typename MakeTiles>
void attention_backward_over_blocks(const AttentionParams& p, Blocks blocks, int64_t chunks, MakeTiles make_tiles) {
  using A = acc_t<T>;
  const auto* q = static_cast<const T*>(p.q);
  const auto* out = static_cast<const T*>(p.out);
  const auto* lse = static_cast<const A*>(p.lse);
  const auto* grad_out = static_cast<const T*>(p.grad_out);
  auto* grad_q = static_cast<T*>(p.grad_q);
  const int64_t d = p.d, Nk = p.Nk, Nq = p.Nq, heads = p.heads, BH = p.B * heads, row_stride = heads * d;
  const A scale = static_cast<A>(p.scale);
  const int64_t q_blocks = std::max<int64_t>(1, (Nq + blocks.q - 1) / blocks.q);
  const int64_t blocks_per_chunk = (q_blocks + chunks - 1) / chunks;

  at::parallel_for(0, BH * chunks, 1, [&](int64_t begin, int64_t end) {
    const SequentialBlasScope sequential_blas;
    auto tiles = make_tiles();
    std::vector<A> probs(blocks.q * blocks.k), dscores(blocks.q * blocks.k);
    std::vector<A> dq(blocks.q * d), row_lse(blocks.q), row_delta(blocks.q);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bh = task / chunks, chunk = task % chunks, b = bh / heads, h = bh % heads;
      const int64_t first_block = chunk * blocks_per_chunk;
      const int64_t last_block = std::min(q_blocks, first_block + blocks_per_chunk);
      for (int64_t block = first_block; block < last_block; ++block) {
        const int64_t i0 = block * blocks.q;
        const int64_t nq = std::max<int64_t>(0, std::min(blocks.q, Nq - i0));
        if (nq == 0) continue;
        const int64_t first_row = ((b * Nq + i0) * heads + h) * d;
        for (int64_t i = 0; i < nq; ++i) {
          row_delta[i] = dot_row<A>(grad_out + first_row + i * row_stride, out + first_row + i * row_stride, d);
          row_lse[i] = lse[bh * Nq + i0 + i];
        }
        tiles.load_queries(q + first_row, grad_out + first_row, nq, row_stride);
        std::fill(dq.begin(), dq.end(), A(0));
        for (int64_t j0 = 0; j0 < Nk; j0 += blocks.k) {
          const int64_t nk = std::min(blocks.k, Nk - j0);
          tiles.scores(bh, j0, nq, nk, probs.data(), dscores.data());
          for (int64_t i = 0; i < nq; ++i)
            tiles.softmax_row(i, probs.data() + i * nk, dscores.data() + i * nk, nk, scale, row_lse[i], row_delta[i]);
          tiles.accumulate(task, bh, j0, nq, nk, dq.data());
        }
        for (int64_t i = 0; i < nq; ++i) convert_row(dq.data() + i * d, d, grad_q + first_row + i * row_stride);
      }
    }
    tiles.finish();
  });
}

}  // namespace

template <typename T>
void tda_attention_backward(const AttentionParams& p) {
  using A = acc_t<T>;
  const at::Tensor sampled = sampled_keys_values<T>(p);
  A* k_sampled = sampled.data_ptr<A>();
  A* v_sampled = k_sampled + p.B * p.heads * p.Nk * p.d;
  const auto* k = static_cast<const T*>(p.k);
  const auto* v = static_cast<const T*>(p.v);
  const auto* points = static_cast<const A*>(p.points);
  auto* grad_k = static_cast<A*>(p.grad_k);
  auto* grad_v = static_cast<A*>(p.grad_v);
  auto* grad_points = static_cast<A*>(p.grad_points);
  const int64_t d = p.d, Nk = p.Nk, Nq = p.Nq, heads = p.heads, BH = p.B * heads;
  const int64_t voxels = p.T * p.H * p.W, per_group = heads / p.G;

  const Blocks blocks = blocks_for(p, kBackwardBlockQ, kBackwardBlockK);
  const int64_t q_blocks = std::max<int64_t>(1, (Nq + blocks.q - 1) / blocks.q);
  const int64_t chunks = std::max<int64_t>(1, std::min(q_blocks, kBackwardTasks / std::max<int64_t>(BH, 1)));
  const int64_t partial_size = BH * chunks * Nk * d;
  const at::Tensor partial = scratch<A>(2 * partial_size);
  A* partial_dk = partial.data_ptr<A>();
  A* partial_dv = partial_dk + partial_size;

  bool transposed_partials = false;
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    if (p.d > 0 && bf16_brgemm_enabled()) {  // the packing takes no empty matrix
      const PackedKeyBlocks packed(p, k_sampled, v_sampled, blocks.k,
                                   {KeyMatrix::keys_transposed, KeyMatrix::values_transposed, KeyMatrix::keys});
      attention_backward_over_blocks<T>(p, blocks, chunks, [&] {
        return Bf16BackwardTiles(p, packed, blocks.q, blocks.k, partial_dk, partial_dv);
      });
      transposed_partials = Bf16BackwardTiles::transposed_partials;
    }
  }
  if (!transposed_partials) {
    attention_backward_over_blocks<T>(p, blocks, chunks, [&] {
      return FloatBackwardTiles<T>(p, blocks, k_sampled, v_sampled, partial_dk, partial_dv);
    });
  }

  // Reduce the chunks in a fixed order into chunk 0: dk~ and dv~ of shape (B, heads, Nk, d).
  if (chunks > 1) {
    at::parallel_for(0, BH * Nk, 64, [&](int64_t begin, int64_t end) {
      for (int64_t bhn = begin; bhn < end; ++bhn) {
        const int64_t bh = bhn / Nk, n = bhn % Nk;
        A* dk0 = partial_dk + ((bh * chunks) * Nk + n) * d;
        A* dv0 = partial_dv + ((bh * chunks) * Nk + n) * d;
        for (int64_t chunk = 1; chunk < chunks; ++chunk) {
          const A* dk1 = partial_dk + ((bh * chunks + chunk) * Nk + n) * d;
          const A* dv1 = partial_dv + ((bh * chunks + chunk) * Nk + n) * d;
#pragma omp simd
          for (int64_t c = 0; c < d; ++c) {
            dk0[c] += dk1[c];
            dv0[c] += dv1[c];
          }
        }
      }
    });
  }
  // dk~ and dv~ of (batch, head) are chunk 0's sums, (Nk x d); the matrix-unit tiles summed them
  // transposed, (d x Nk), so those are turned back first.
  const A* dk_sums = partial_dk;
  const A* dv_sums = partial_dv;
  int64_t sums_stride = chunks * Nk * d;
  at::Tensor turned;
  if (transposed_partials) {
    turned = at::empty({2 * BH * Nk * d}, at::TensorOptions().dtype(c10::CppTypeToScalarType<A>::value));
    A* dk_turned = turned.data_ptr<A>();
    A* dv_turned = dk_turned + BH * Nk * d;
    at::parallel_for(0, BH, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bh = begin; bh < end; ++bh) {
        const A* dk_t = partial_dk + bh * sums_stride;
        const A* dv_t = partial_dv + bh * sums_stride;
        for (int64_t n = 0; n < Nk; ++n)
          for (int64_t c = 0; c < d; ++c) {
            dk_turned[(bh * Nk + n) * d + c] = dk_t[c * Nk + n];
            dv_turned[(bh * Nk + n) * d + c] = dv_t[c * Nk + n];
          }
      }
    });
    dk_sums = dk_turned;
    dv_sums = dv_turned;
    sums_stride = Nk * d;
  }
  auto sampled_grad = [&](const A* sums, int64_t bh, int64_t n) { return sums + bh * sums_stride + n * d; };

  // Scatter dk~/dv~ into dk/dv through the trilinear weights; a task owns one (batch, head).
  at::parallel_for(0, BH, 1, [&](int64_t begin, int64_t end) {
    TrilinearPoint<A> tp;
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / heads, h = bh % heads, g = h / per_group;
      for (int64_t n = 0; n < Nk; ++n) {
        const A* xyt = points + ((b * Nk + n) * p.G + g) * 3;
        trilinear_point(xyt[0], xyt[1], xyt[2], p.T, p.H, p.W, tp);
        const A* dk_s = sampled_grad(dk_sums, bh, n);
        const A* dv_s = sampled_grad(dv_sums, bh, n);
        for (int corner = 0; corner < 8; ++corner) {
          if (!tp.valid[corner]) continue;
          const A w = tp.weight[corner];
          const int64_t offset = ((b * voxels + tp.voxel[corner]) * heads + h) * d;
#pragma omp simd
          for (int64_t c = 0; c < d; ++c) {
            grad_k[offset + c] += w * dk_s[c];
            grad_v[offset + c] += w * dv_s[c];
          }
        }
      }
    }
  });

  // dpoints[b, n, g] = sum over the group's heads and the corners of dweight * <dk~, k> + <dv~, v>.
  at::parallel_for(0, p.B * Nk, 16, [&](int64_t begin, int64_t end) {
    TrilinearPoint<A> tp;
    for (int64_t bn = begin; bn < end; ++bn) {
      const int64_t b = bn / Nk, n = bn % Nk;
      for (int64_t g = 0; g < p.G; ++g) {
        const A* xyt = points + (bn * p.G + g) * 3;
        trilinear_point(xyt[0], xyt[1], xyt[2], p.T, p.H, p.W, tp);
        A grad[3] = {0, 0, 0};
        for (int corner = 0; corner < 8; ++corner) {
          if (!tp.valid[corner]) continue;
          A dot = 0;
          for (int64_t h = g * per_group; h < (g + 1) * per_group; ++h) {
            const A* dk_s = sampled_grad(dk_sums, b * heads + h, n);
            const A* dv_s = sampled_grad(dv_sums, b * heads + h, n);
            const int64_t offset = ((b * voxels + tp.voxel[corner]) * heads + h) * d;
            dot += dot_row<A>(dk_s, k + offset, d) + dot_row<A>(dv_s, v + offset, d);
          }
          for (int axis = 0; axis < 3; ++axis) grad[axis] += tp.dweight[corner][axis] * dot;
        }
        for (int axis = 0; axis < 3; ++axis) grad_points[(bn * p.G + g) * 3 + axis] = grad[axis];
      }
    }
  });
}

#define LC4_INSTANTIATE(T)                                           \
  template void tda_attention_forward<T>(const AttentionParams&); \
  template void tda_attention_backward<T>(const AttentionParams&);
LC4_INSTANTIATE(float)
LC4_INSTANTIATE(double)
LC4_INSTANTIATE(float16_t)
LC4_INSTANTIATE(c10::BFloat16)
#undef LC4_INSTANTIATE

}  // namespace lc4::cpu
