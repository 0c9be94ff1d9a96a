// dq of the tda_attention backward on tensor cores (WMMA m16n16k16, float32 accumulation) for
// float16/bfloat16 up to d = 128, in a kernel of its own: one block per (64 queries, head, batch)
// walks the key tiles of k~ and v~ sampled beforehand, like the register forward, loading the
// next tile into registers while the current one's products run (RowTileFetch). Each of the
// 4 warps owns 16 query rows and keeps its dq rows in accumulator fragments for the whole loop:
//   S = q k~^T, dP = dO v~^T    WMMA into the warp's score tile, read back by rows (lanes 2r and
//                               2r + 1 hold row r, with its lse and delta in registers);
//   dS = P (dP - delta)         by elements, stored as T over the score tile's bytes;
//   dq += dS k~                 WMMA into the fragments; written once at the end in q's dtype, no
//                               atomics and no float32 buffer.
// Fused into the dk~/dv~ kernel instead, dq costs one float atomic per (query, column, key block):
// 335M at the 64x64 SD1.5 layer. This kernel recomputes S and dP instead (two more products of
// the size of the forward's), and writes delta = rowsum(dO * O) for the dk~/dv~ kernel, which
// runs after it.
#pragma once

#include "cuda/launchers.h"
#include "cuda/tda_attention_forward_wmma.cuh"

namespace lc4::LC4_CUDA_NS {

template <int D>
struct DqTiles {
  static constexpr int kWarps = kAttentionThreads / kWarpSize;
  static constexpr int kRowsPerWarp = 16;
  static constexpr int kBlockQ = kWarps * kRowsPerWarp;
  static constexpr int kWidth = (D + 15) / 16 * 16;    // head dim padded to whole WMMA tiles
  static constexpr int kBlockK = kWidth <= 80 ? 32 : 16;  // keeps d = 128 within 48 KiB
  static constexpr int kStride = kWidth + 8;           // 16-bit tiles: ldm a multiple of 8
  static constexpr int kScoreStride = kBlockK + 4;     // float scores: ldm a multiple of 4
  static constexpr int kGradStride = 2 * kScoreStride;  // 16-bit dS rows over the same bytes as S rows
  static constexpr int kOutStride = kWidth + 4;        // float dq staging
  static constexpr int kColumnTiles = kWidth / 16;
  static constexpr int kColumnsPerLane = kBlockK / 2;  // two lanes per row
  // Storage in floats: q, dO (16-bit, kBlockQ rows), k~, v~ (16-bit, kBlockK rows), one score
  // tile per warp; the dq staging reuses it all after the last key tile.
  static constexpr int kQ = kBlockQ * kStride / 2, kK = kBlockK * kStride / 2;
  static constexpr int kScores = kWarps * kRowsPerWarp * kScoreStride;
  static constexpr int kStorage = 2 * kQ + 2 * kK + kScores;
  static_assert(kWidth <= kSeparateDqMaxHeadDim, "separate dq: head dims up to 128");
  static_assert(kBlockQ * kOutStride <= kStorage, "dq staging fits");
  static_assert(kStorage * 4 <= 48 * 1024, "static shared memory");
};

template <typename T, int D>
__global__ void __launch_bounds__(kAttentionThreads) attention_dq_wmma_kernel(const AttentionParams p,
                                                                              const AttentionScratch s) {
  if constexpr (kHasWmma<T>) {
    using Tiles = DqTiles<D>;
    using Accumulator = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;
    constexpr int BQ = Tiles::kBlockQ, BK = Tiles::kBlockK, DW = Tiles::kWidth, S = Tiles::kStride;
    constexpr int SS = Tiles::kScoreStride, GS = Tiles::kGradStride, OS = Tiles::kOutStride;
    constexpr int kCols = Tiles::kColumnsPerLane, kRows = Tiles::kRowsPerWarp;
    // WMMA loads and stores need 256-bit aligned addresses: every tile starts at a multiple of
    // 32 bytes (strides of 16-bit tiles are multiples of 8 elements, 16 rows apart).
    __shared__ __align__(32) float storage[Tiles::kStorage];
    T* const q_tile = reinterpret_cast<T*>(storage);
    T* const do_tile = reinterpret_cast<T*>(storage + Tiles::kQ);
    T* const k_tile = reinterpret_cast<T*>(storage + 2 * Tiles::kQ);
    T* const v_tile = reinterpret_cast<T*>(storage + 2 * Tiles::kQ + Tiles::kK);
    const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
    float* const scores = storage + 2 * Tiles::kQ + 2 * Tiles::kK + warp * kRows * SS;
    T* const score_grads = reinterpret_cast<T*>(scores);
    float* const staging = storage + warp * kRows * OS;
    const T* const my_q = q_tile + warp * kRows * S;
    const T* const my_do = do_tile + warp * kRows * S;

    const int64_t b = blockIdx.z, h = blockIdx.y, i0 = static_cast<int64_t>(blockIdx.x) * BQ;
    const int64_t d = p.d, heads = p.heads, row_stride = heads * d;
    const int64_t first = (b * p.Nq * heads + h) * d;  // of q, dO and out for (b, h)
    load_row_tile<T, BQ, DW, S, kAttentionThreads>(static_cast<const T*>(p.q) + first, p.Nq, i0, row_stride, d, q_tile);
    load_row_tile<T, BQ, DW, S, kAttentionThreads>(static_cast<const T*>(p.grad_out) + first, p.Nq, i0, row_stride, d,
                                                   do_tile);
    __syncthreads();

    // This lane's row: its delta (each of the row's two lanes sums every other column) and lse,
    // both in log2 units where the scores are; rows past Nq get P = 0.
    const int row = lane / 2, half = lane % 2;
    const int64_t i = i0 + warp * kRows + row, stats = (b * heads + h) * p.Nq + i;
    const bool row_inside = i < p.Nq;
    float delta = 0.f;
    if (row_inside) {
      const T* const out_row = static_cast<const T*>(p.out) + first + i * row_stride;
      for (int64_t c = half; c < d; c += 2) delta += to_float(my_do[row * S + c]) * to_float(out_row[c]);
    }
    delta = row_sum<2>(delta);
    if (row_inside && half == 0) s.delta[stats] = delta;
    const float lse = row_inside ? static_cast<const float*>(p.lse)[stats] * kLog2e : INFINITY;
    const float score_scale = static_cast<float>(p.scale) * kLog2e;

    // This warp's rows of a (rows x head dim) tile times the key tile's rows, into its score
    // tile; then the lane's columns of its row.
    auto warp_products = [&](const T* rows, const T* keys, float (&values)[kCols]) {
      warp_row_scores<T, BK, DW, S, SS>(rows, keys, scores);
#pragma unroll
      for (int u = 0; u < kCols; ++u) values[u] = scores[row * SS + half * kCols + u];
      __syncwarp();  // every lane has read its values: the tile may be overwritten
    };

    // The key tiles at j0 into registers: before the previous tile's products (prefetch), or
    // just before they are stored.
    RowTileFetch<T, BK, DW, S, kAttentionThreads> next_k, next_v;
    const T* const k_rows = static_cast<const T*>(p.k_sampled) + (b * p.Nk * heads + h) * d;
    const T* const v_rows = static_cast<const T*>(p.v_sampled) + (b * p.Nk * heads + h) * d;
    auto fetch_keys = [&](int64_t j0) {
      next_k.fetch(k_rows, p.Nk, j0, row_stride, d, k_tile);
      next_v.fetch(v_rows, p.Nk, j0, row_stride, d, v_tile);
    };
    const bool prefetch = p.prefetch && DW <= kPrefetchMaxWidth;
    if (prefetch) fetch_keys(0);

    Accumulator dq[Tiles::kColumnTiles];
#pragma unroll
    for (int ct = 0; ct < Tiles::kColumnTiles; ++ct) wmma::fill_fragment(dq[ct], 0.0f);
    for (int64_t j0 = 0; j0 < p.Nk; j0 += BK) {
      if (!prefetch) fetch_keys(j0);
      next_k.store(k_rows, p.Nk, j0, row_stride, d, k_tile);
      next_v.store(v_rows, p.Nk, j0, row_stride, d, v_tile);
      __syncthreads();
      if (prefetch && j0 + BK < p.Nk) fetch_keys(j0 + BK);
      float probs[kCols], dprobs[kCols];
      warp_products(my_q, k_tile, probs);
      warp_products(my_do, v_tile, dprobs);
#pragma unroll
      for (int u = 0; u < kCols; ++u) {
        const int j = half * kCols + u;
        const float prob = j0 + j < p.Nk ? exp2f(probs[u] * score_scale - lse) : 0.f;
        score_grads[row * GS + j] = from_float<T>(prob * (dprobs[u] - delta));
      }
      __syncwarp();
#pragma unroll
      for (int ct = 0; ct < Tiles::kColumnTiles; ++ct) {
        for (int kk = 0; kk < BK; kk += 16) {
          wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
          wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> bk;
          wmma::load_matrix_sync(a, score_grads + kk, GS);
          wmma::load_matrix_sync(bk, k_tile + kk * S + ct * 16, S);
          wmma::mma_sync(dq[ct], a, bk, dq[ct]);
        }
      }
      __syncthreads();  // the next key tiles overwrite k~ and v~
    }
    __syncthreads();  // with no key tile, other warps may still read q and dO, which the staging overlaps

    T* const grad_q = static_cast<T*>(p.grad_q);  // in q's dtype: written once
    const float scale = static_cast<float>(p.scale);
    const int64_t first_row = i0 + warp * kRows;
    warp_rows_out<Tiles::kColumnTiles, OS>(dq, staging, p.Nq - first_row, d, [&](int r, int c, float value) {
      grad_q[((b * p.Nq + first_row + r) * heads + h) * d + c] = from_float<T>(scale * value);
    });
  }
}

}  // namespace lc4::LC4_CUDA_NS
