// tda_attention forward on tensor cores (WMMA m16n16k16, float32 accumulation) with O kept in
// accumulator fragments, for head dims up to 128: the float16/bfloat16 forward V100 runs at the
// SD1.5 head dims. Each of the 4 warps owns 16 rows of a 64-query block and works on them alone
// between the block-wide stagings of key tiles (no block barrier inside the softmax).
//
// One pass (the default): per key tile, S = q k~^T; the online softmax by rows (lanes 2r, 2r + 1
// hold row r); O *= exp(old max - new max) by rows; O += P v~. WMMA hides which row an element of
// a fragment belongs to, but an accumulator fragment loaded from a tile whose every element is its
// own row number tells each lane, for its elements, the rows of every accumulator fragment (load,
// store and mma_sync share one layout): the rows are looked up once, and the per-row factors are
// read from shared memory.
// Two passes (kTwoPass, LC4_CUDA_FORWARD=two_pass): pass 1 finds every row's max and sum of exp;
// pass 2 computes S again and accumulates the already normalised P v~, so no fragment is ever
// rescaled, for the price of q k~^T twice.
#pragma once

#include "cuda/tda_attention_forward_wmma.cuh"

namespace lc4::LC4_CUDA_NS {

template <int D>
struct RegisterForwardTiles {
  static constexpr int kWarps = kAttentionThreads / kWarpSize;
  static constexpr int kRowsPerWarp = 16;
  static constexpr int kBlockQ = kWarps * kRowsPerWarp;
  static constexpr int kBlockK = 32;
  static constexpr int kWidth = (D + 15) / 16 * 16;  // head dim padded to whole WMMA tiles
  static constexpr int kColumnTiles = kWidth / 16;
  static constexpr int kStride = kWidth + 8;          // 16-bit tiles: ldm a multiple of 8
  static constexpr int kScoreStride = kBlockK + 4;    // float scores: ldm a multiple of 4
  static constexpr int kProbStride = 2 * kScoreStride;  // 16-bit P rows over the same bytes as S rows
  static constexpr int kOutStride = kWidth + 4;       // float output staging
  static constexpr int kColumnsPerLane = kBlockK / 2;  // two lanes per row
  // Storage in floats: q, k~, v~ tiles (16-bit), then one score tile per warp; the output
  // staging reuses it all after the last key tile.
  static constexpr int kQ = kBlockQ * kStride / 2, kK = kBlockK * kStride / 2;
  static constexpr int kScores = kWarps * kRowsPerWarp * kScoreStride;
  static constexpr int kStorage = kQ + 2 * kK + kScores;
  static_assert(kWidth <= 128, "register forward: head dims up to 128");
  static_assert(kBlockQ * kOutStride <= kStorage, "output staging fits");
  static_assert(kStorage * 4 <= 48 * 1024, "static shared memory");
};

template <typename T, int D, bool kTwoPass>
__global__ void __launch_bounds__(kAttentionThreads) attention_forward_registers_kernel(const AttentionParams p) {
  if constexpr (kHasWmma<T>) {
    using Tiles = RegisterForwardTiles<D>;
    using Accumulator = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;
    constexpr int BQ = Tiles::kBlockQ, BK = Tiles::kBlockK, DW = Tiles::kWidth, S = Tiles::kStride;
    constexpr int SS = Tiles::kScoreStride, PS = Tiles::kProbStride, OS = Tiles::kOutStride;
    constexpr int kCols = Tiles::kColumnsPerLane, kRows = Tiles::kRowsPerWarp;
    // WMMA loads and stores need 256-bit aligned addresses: every tile starts at a multiple of
    // 32 bytes (strides of 16-bit tiles are multiples of 8 elements, 16 rows apart).
    __shared__ __align__(32) float storage[Tiles::kStorage];
    __shared__ KeyCorners corners[BK];
    __shared__ float row_factor[BQ];  // per row: the rescale of O (one pass), then 1 / sum
    T* const q_tile = reinterpret_cast<T*>(storage);
    T* const k_tile = reinterpret_cast<T*>(storage + Tiles::kQ);
    T* const v_tile = reinterpret_cast<T*>(storage + Tiles::kQ + Tiles::kK);
    const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
    float* const scores = storage + Tiles::kQ + 2 * Tiles::kK + warp * kRows * SS;
    T* const probs = reinterpret_cast<T*>(scores);
    float* const staging = storage + warp * kRows * OS;
    float* const my_factor = row_factor + warp * kRows;
    const T* const my_q = q_tile + warp * kRows * S;

    const int64_t b = blockIdx.z, h = blockIdx.y, i0 = static_cast<int64_t>(blockIdx.x) * BQ;
    const int64_t d = p.d, heads = p.heads;
    load_row_tile<T, BQ, DW, S, kAttentionThreads>(static_cast<const T*>(p.q) + (b * p.Nq * heads + h) * d, p.Nq, i0,
                                                   heads * d, d, q_tile);
    const float score_scale = static_cast<float>(p.scale) * kLog2e;
    // Lanes 2r and 2r + 1 share row r of this warp: score columns half * kCols ...
    const int row = lane / 2, half = lane % 2;

    // The row of each element this lane holds of any accumulator fragment (see the top).
    [[maybe_unused]] int element_row[Accumulator::num_elements];
    {
      for (int idx = lane; idx < kRows * 16; idx += kWarpSize) scores[idx / 16 * SS + idx % 16] = idx / 16;
      __syncwarp();
      Accumulator rows;
      wmma::load_matrix_sync(rows, scores, SS, wmma::mem_row_major);
#pragma unroll
      for (int e = 0; e < Accumulator::num_elements; ++e) element_row[e] = static_cast<int>(rows.x[e]);
      __syncwarp();  // every lane has read the tile: the scores may overwrite it
    }

    // This warp's S = q k~^T for the key tile in k_tile, into its score tile; then the lane's
    // columns of its row, scaled to log2 units (-inf past Nk).
    auto warp_scores = [&](int64_t j0, float (&values)[kCols]) {
      warp_row_scores<T, BK, DW, S, SS>(my_q, k_tile, scores);
#pragma unroll
      for (int u = 0; u < kCols; ++u) {
        const int j = half * kCols + u;
        values[u] = j0 + j < p.Nk ? scores[row * SS + j] * score_scale : -INFINITY;
      }
      __syncwarp();  // every lane has read its scores: the tile may be overwritten
    };

    // Key tiles read from k~ and v~ sampled beforehand go through registers, the next one loaded
    // while the current one's products run (p.prefetch, up to kPrefetchMaxWidth); sampled from k
    // and v here, they are staged as they are needed (the branch is uniform over the block).
    RowTileFetch<T, BK, DW, S, kAttentionThreads> next_k, next_v;
    const bool presampled = p.k_sampled != nullptr;
    const bool prefetch = presampled && p.prefetch && DW <= kPrefetchMaxWidth;
    const int64_t sampled_first = (b * p.Nk * heads + h) * d;
    const T* const k_rows = presampled ? static_cast<const T*>(p.k_sampled) + sampled_first : nullptr;
    const T* const v_rows = presampled ? static_cast<const T*>(p.v_sampled) + sampled_first : nullptr;
    auto fetch_keys = [&](int64_t j0, bool values) {
      next_k.fetch(k_rows, p.Nk, j0, heads * d, d, k_tile);
      if (values) next_v.fetch(v_rows, p.Nk, j0, heads * d, d, v_tile);
    };
    auto stage_keys = [&](int64_t j0, bool values) {
      if (presampled) {
        if (!prefetch) fetch_keys(j0, values);
        next_k.store(k_rows, p.Nk, j0, heads * d, d, k_tile);
        if (values) next_v.store(v_rows, p.Nk, j0, heads * d, d, v_tile);
        return;
      }
      stage_key_tile<T, BK, DW, S, kAttentionThreads, T>(p, nullptr, p.k, true, b, h, j0, corners, k_tile);
      if (values) stage_key_tile<T, BK, DW, S, kAttentionThreads, T>(p, nullptr, p.v, false, b, h, j0, corners, v_tile);
    };

    float running_max = -INFINITY, running_sum = 0.f;  // of this lane's row, log2 units
    if constexpr (kTwoPass) {
      if (prefetch) fetch_keys(0, false);
      for (int64_t j0 = 0; j0 < p.Nk; j0 += BK) {
        stage_keys(j0, false);
        __syncthreads();
        if (prefetch && j0 + BK < p.Nk) fetch_keys(j0 + BK, false);
        float values[kCols];
        warp_scores(j0, values);
        float block_max = -INFINITY;
#pragma unroll
        for (int u = 0; u < kCols; ++u) block_max = fmaxf(block_max, values[u]);
        const float new_max = fmaxf(running_max, row_max<2>(block_max));  // finite: each tile has a key
        float block_sum = 0.f;
#pragma unroll
        for (int u = 0; u < kCols; ++u) block_sum += exp2f(values[u] - new_max);
        running_sum = running_sum * exp2f(running_max - new_max) + row_sum<2>(block_sum);
        running_max = new_max;
        __syncthreads();  // the next key tile overwrites k~ (and the corners)
      }
    }

    [[maybe_unused]] const float inv_sum = 1.f / running_sum;  // two passes: P comes out normalised
    Accumulator out[Tiles::kColumnTiles];
#pragma unroll
    for (int ct = 0; ct < Tiles::kColumnTiles; ++ct) wmma::fill_fragment(out[ct], 0.0f);
    if (prefetch) fetch_keys(0, true);
    for (int64_t j0 = 0; j0 < p.Nk; j0 += BK) {
      stage_keys(j0, true);
      __syncthreads();
      if (prefetch && j0 + BK < p.Nk) fetch_keys(j0 + BK, true);
      float values[kCols];
      warp_scores(j0, values);
      if constexpr (!kTwoPass) {
        float block_max = -INFINITY;
#pragma unroll
        for (int u = 0; u < kCols; ++u) block_max = fmaxf(block_max, values[u]);
        const float new_max = fmaxf(running_max, row_max<2>(block_max));  // finite: each tile has a key
        const float rescale = exp2f(running_max - new_max);                 // 0 on the first tile
        float block_sum = 0.f;
#pragma unroll
        for (int u = 0; u < kCols; ++u) {
          const float prob = exp2f(values[u] - new_max);
          block_sum += prob;
          probs[row * PS + half * kCols + u] = from_float<T>(prob);
        }
        running_sum = running_sum * rescale + row_sum<2>(block_sum);
        running_max = new_max;
        if (half == 0) my_factor[row] = rescale;
        __syncwarp();
#pragma unroll
        for (int e = 0; e < Accumulator::num_elements; ++e) {
          const float factor = my_factor[element_row[e]];
#pragma unroll
          for (int ct = 0; ct < Tiles::kColumnTiles; ++ct) out[ct].x[e] *= factor;
        }
      } else {
#pragma unroll
        for (int u = 0; u < kCols; ++u) {
          probs[row * PS + half * kCols + u] = from_float<T>(exp2f(values[u] - running_max) * inv_sum);
        }
        __syncwarp();
      }
#pragma unroll
      for (int ct = 0; ct < Tiles::kColumnTiles; ++ct) {
        for (int kk = 0; kk < BK; kk += 16) {
          wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
          wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> bv;
          wmma::load_matrix_sync(a, probs + kk, PS);
          wmma::load_matrix_sync(bv, v_tile + kk * S + ct * 16, S);
          wmma::mma_sync(out[ct], a, bv, out[ct]);
        }
      }
      __syncthreads();  // the next key tile overwrites k~, v~ (and this warp's P and factors)
    }

    // The staging rows of a warp overlap tiles other warps read until the barrier above.
    if (half == 0) my_factor[row] = kTwoPass ? 1.f : 1.f / running_sum;
    T* const out_rows = static_cast<T*>(p.out);
    const int64_t first_row = i0 + warp * kRows;
    warp_rows_out<Tiles::kColumnTiles, OS>(out, staging, p.Nq - first_row, d, [&](int r, int c, float value) {
      out_rows[((b * p.Nq + first_row + r) * heads + h) * d + c] = from_float<T>(value * my_factor[r]);
    });
    const int64_t i = first_row + row;
    if (half == 0 && i < p.Nq) {
      static_cast<float*>(p.lse)[(b * heads + h) * p.Nq + i] = (running_max + log2f(running_sum)) * kLn2;
    }
  }
}

}  // namespace lc4::LC4_CUDA_NS
