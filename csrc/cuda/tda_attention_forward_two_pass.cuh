// tda_attention forward on tensor cores (WMMA m16n16k16, float32 accumulation) in two passes
// over the keys, for head dims up to 128: the float16/bfloat16 forward V100 runs at the SD1.5
// head dims. Each of the 4 warps owns 16 rows of a 64-query block and works on them alone
// between the block-wide stagings of key tiles (no barrier inside the softmax):
//   pass 1   S = q k~^T per key tile; every row's max and sum of exp (online, scalars only);
//   pass 2   S again; P = exp(S - max) / sum, final from the start; O += P v~ in WMMA
//            accumulator fragments that stay in registers for the whole pass.
// A one-pass online softmax must rescale O by rows at every key tile, which a fragment (whose
// element layout WMMA hides) cannot take, so tda_attention_forward_wmma.cuh keeps O in shared
// memory with three barriers per key tile; here the price is computing q k~^T twice.
#pragma once

#include "cuda/tda_attention_forward_wmma.cuh"

namespace lc4::LC4_CUDA_NS {

template <int D>
struct TwoPassTiles {
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
  static_assert(kWidth <= 128, "two-pass forward: head dims up to 128");
  static_assert(kBlockQ * kOutStride <= kStorage, "output staging fits");
  static_assert(kStorage * 4 <= 48 * 1024, "static shared memory");
};

template <typename T, int D>
__global__ void __launch_bounds__(kAttentionThreads) attention_forward_two_pass_kernel(const AttentionParams p) {
  if constexpr (kHasWmma<T>) {
    using Tiles = TwoPassTiles<D>;
    using Accumulator = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;
    constexpr int BQ = Tiles::kBlockQ, BK = Tiles::kBlockK, DW = Tiles::kWidth, S = Tiles::kStride;
    constexpr int SS = Tiles::kScoreStride, PS = Tiles::kProbStride, OS = Tiles::kOutStride;
    constexpr int kCols = Tiles::kColumnsPerLane;
    // WMMA loads and stores need 256-bit aligned addresses: every tile starts at a multiple of
    // 32 bytes (strides of 16-bit tiles are multiples of 8 elements, 16 rows apart).
    __shared__ __align__(32) float storage[Tiles::kStorage];
    __shared__ KeyCorners corners[BK];
    T* const q_tile = reinterpret_cast<T*>(storage);
    T* const k_tile = reinterpret_cast<T*>(storage + Tiles::kQ);
    T* const v_tile = reinterpret_cast<T*>(storage + Tiles::kQ + Tiles::kK);
    const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
    float* const scores = storage + Tiles::kQ + 2 * Tiles::kK + warp * Tiles::kRowsPerWarp * SS;
    T* const probs = reinterpret_cast<T*>(scores);
    float* const staging = storage + warp * Tiles::kRowsPerWarp * OS;
    const T* const my_q = q_tile + warp * Tiles::kRowsPerWarp * S;

    const int64_t b = blockIdx.z, h = blockIdx.y, i0 = static_cast<int64_t>(blockIdx.x) * BQ;
    const int64_t d = p.d, heads = p.heads;
    const T* q = static_cast<const T*>(p.q);
    for (int idx = threadIdx.x; idx < BQ * DW; idx += kAttentionThreads) {
      const int r = idx / DW, c = idx % DW;
      const int64_t i = i0 + r;
      q_tile[r * S + c] = (i < p.Nq && c < d) ? q[((b * p.Nq + i) * heads + h) * d + c] : from_float<T>(0.f);
    }
    const float score_scale = static_cast<float>(p.scale) * kLog2e;
    // Lanes 2r and 2r + 1 share row r of this warp: score columns half * kCols ...
    const int row = lane / 2, half = lane % 2;

    // This warp's S = q k~^T for the key tile in k_tile, into its score tile; then the lane's
    // columns of its row, scaled to log2 units (-inf past Nk).
    auto warp_scores = [&](int64_t j0, float (&values)[kCols]) {
      for (int ct = 0; ct < BK / 16; ++ct) {
        Accumulator acc;
        wmma::fill_fragment(acc, 0.0f);
        for (int kk = 0; kk < DW; kk += 16) {
          wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
          wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> bt;
          wmma::load_matrix_sync(a, my_q + kk, S);
          wmma::load_matrix_sync(bt, k_tile + ct * 16 * S + kk, S);
          wmma::mma_sync(acc, a, bt, acc);
        }
        wmma::store_matrix_sync(scores + ct * 16, acc, SS, wmma::mem_row_major);
      }
      __syncwarp();
#pragma unroll
      for (int u = 0; u < kCols; ++u) {
        const int j = half * kCols + u;
        values[u] = j0 + j < p.Nk ? scores[row * SS + j] * score_scale : -INFINITY;
      }
      __syncwarp();  // every lane has read its scores: the tile may be overwritten
    };

    float running_max = -INFINITY, running_sum = 0.f;  // of this lane's row, log2 units
    for (int64_t j0 = 0; j0 < p.Nk; j0 += BK) {
      stage_key_tile<T, BK, DW, S, kAttentionThreads, T>(p, p.k_sampled, p.k, true, b, h, j0, corners, k_tile);
      __syncthreads();
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

    const float inv_sum = 1.f / running_sum;
    Accumulator out[Tiles::kColumnTiles];
#pragma unroll
    for (int ct = 0; ct < Tiles::kColumnTiles; ++ct) wmma::fill_fragment(out[ct], 0.0f);
    for (int64_t j0 = 0; j0 < p.Nk; j0 += BK) {
      stage_key_tile<T, BK, DW, S, kAttentionThreads, T>(p, p.k_sampled, p.k, true, b, h, j0, corners, k_tile);
      stage_key_tile<T, BK, DW, S, kAttentionThreads, T>(p, p.v_sampled, p.v, false, b, h, j0, corners, v_tile);
      __syncthreads();
      float values[kCols];
      warp_scores(j0, values);
#pragma unroll
      for (int u = 0; u < kCols; ++u) {
        probs[row * PS + half * kCols + u] = from_float<T>(exp2f(values[u] - running_max) * inv_sum);
      }
      __syncwarp();
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
      __syncthreads();  // the next key tile overwrites k~, v~ (and this warp's P)
    }

    // The staging rows of a warp overlap tiles other warps read until the barrier above.
#pragma unroll
    for (int ct = 0; ct < Tiles::kColumnTiles; ++ct) {
      wmma::store_matrix_sync(staging + ct * 16, out[ct], OS, wmma::mem_row_major);
    }
    __syncwarp();
    T* const out_rows = static_cast<T*>(p.out);
    const int64_t first_row = i0 + warp * Tiles::kRowsPerWarp;
    for (int idx = lane; idx < Tiles::kRowsPerWarp * DW; idx += kWarpSize) {
      const int r = idx / DW, c = idx % DW;
      const int64_t i = first_row + r;
      if (i < p.Nq && c < d) out_rows[((b * p.Nq + i) * heads + h) * d + c] = from_float<T>(staging[r * OS + c]);
    }
    const int64_t i = first_row + row;
    if (half == 0 && i < p.Nq) {
      static_cast<float*>(p.lse)[(b * heads + h) * p.Nq + i] = (running_max + log2f(running_sum)) * kLn2;
    }
  }
}

}  // namespace lc4::LC4_CUDA_NS
