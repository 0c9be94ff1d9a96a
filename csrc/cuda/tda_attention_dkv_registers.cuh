// The dk~/dv~ kernel of the float16/bfloat16 backward where dq has a kernel of its own
// (tda_attention_dq_wmma.cuh, which also writes delta), for head dims up to 80: the SD1.5 64x64
// and 32x32 layers. One block per (64 keys, query split, head, batch); each of the 4 warps owns 16
// keys, holds their dk~ and dv~ in accumulator fragments, and per tile of 32 queries computes
//   S^T = k~ q^T, dP^T = v~ dO^T   WMMA into the warp's score tile, read back by rows (lanes 2r
//                                  and 2r + 1 hold key r);
//   P^T, dS^T = P^T (dP^T - delta) by elements, stored as T over the score tile's bytes;
//   dv~ += P^T dO, dk~ += dS^T q   WMMA into the fragments.
// Only the query tile is shared between warps, so a query tile costs two barriers (the kernel of
// tda_attention_backward_wmma.cuh spreads 32 x 32 products over the warps with four or five), and
// q and dO are read once per 64 keys instead of per 32. The next query tile is loaded into
// registers while the current one's products run (RowTileFetch).
#pragma once

#include "cuda/tda_attention_backward.cuh"
#include "cuda/tda_attention_forward_wmma.cuh"

namespace lc4::LC4_CUDA_NS {

// Head dims up to this take the kernel (shared memory: the key tiles grow with d).
constexpr int kDkvRegistersMaxHeadDim = 80;

template <int D>
struct DkvRegisterTiles {
  static constexpr int kWarps = kAttentionThreads / kWarpSize;
  static constexpr int kKeysPerWarp = 16;
  static constexpr int kBlockK = kWarps * kKeysPerWarp;
  static constexpr int kBlockQ = 32;
  static constexpr int kWidth = (D + 15) / 16 * 16;  // head dim padded to whole WMMA tiles
  static constexpr int kStride = kWidth + 8;         // 16-bit tiles: ldm a multiple of 8
  // A warp's score tile: kKeysPerWarp rows of kBlockQ floats; the same bytes then hold P^T and
  // dS^T as T, side by side in rows of 2 kScoreStride (dS^T from column kGradColumn: 32-byte aligned).
  static constexpr int kScoreStride = kBlockQ + 8;
  static constexpr int kProbStride = 2 * kScoreStride;
  static constexpr int kGradColumn = kBlockQ + 16;
  static constexpr int kOutStride = kWidth + 4;  // float staging of a warp's dk~ or dv~ rows
  static constexpr int kColumnTiles = kWidth / 16;
  static constexpr int kColumnsPerLane = kBlockQ / 2;  // two lanes per key row
  // Storage in floats: k~, v~ (16-bit, kBlockK rows), q, dO (16-bit, kBlockQ rows), the score
  // tiles, then lse and delta of the query tile. The staging reuses k~ and v~ at the end.
  static constexpr int kK = kBlockK * kStride / 2, kQ = kBlockQ * kStride / 2;
  static constexpr int kScores = kWarps * kKeysPerWarp * kScoreStride;
  static constexpr int kStorage = 2 * kK + 2 * kQ + kScores + 2 * kBlockQ;
  static_assert(kWidth <= kDkvRegistersMaxHeadDim, "register dk~/dv~: head dims up to 80");
  static_assert(kGradColumn + kBlockQ <= kProbStride, "dS^T fits beside P^T");
  static_assert(kWarps * kKeysPerWarp * kOutStride <= 2 * kK, "staging fits in the key tiles");
  static_assert(kStorage * 4 <= 48 * 1024, "static shared memory");
};

template <typename T, int D>
__global__ void __launch_bounds__(kAttentionThreads) attention_dkv_registers_kernel(const AttentionParams p,
                                                                                    const AttentionScratch s) {
  if constexpr (kHasWmma<T>) {
    using Tiles = DkvRegisterTiles<D>;
    using Accumulator = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;
    constexpr int BK = Tiles::kBlockK, BQ = Tiles::kBlockQ, DW = Tiles::kWidth, S = Tiles::kStride;
    constexpr int SS = Tiles::kScoreStride, PS = Tiles::kProbStride, GC = Tiles::kGradColumn;
    constexpr int OS = Tiles::kOutStride, kCols = Tiles::kColumnsPerLane, kRows = Tiles::kKeysPerWarp;
    // WMMA loads and stores need 256-bit aligned addresses: every tile starts at a multiple of
    // 32 bytes (strides of 16-bit tiles are multiples of 8 elements, 16 rows apart).
    __shared__ __align__(32) float storage[Tiles::kStorage];
    T* const k_tile = reinterpret_cast<T*>(storage);
    T* const v_tile = reinterpret_cast<T*>(storage + Tiles::kK);
    T* const q_tile = reinterpret_cast<T*>(storage + 2 * Tiles::kK);
    T* const do_tile = reinterpret_cast<T*>(storage + 2 * Tiles::kK + Tiles::kQ);
    const int warp = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
    float* const scores = storage + 2 * Tiles::kK + 2 * Tiles::kQ + warp * kRows * SS;
    T* const probs_t = reinterpret_cast<T*>(scores);
    T* const grads_t = probs_t + GC;
    float* const lse_row = storage + 2 * Tiles::kK + 2 * Tiles::kQ + Tiles::kScores;
    float* const delta_row = lse_row + BQ;
    float* const staging = storage + warp * kRows * OS;
    const T* const my_k = k_tile + warp * kRows * S;
    const T* const my_v = v_tile + warp * kRows * S;

    const int64_t b = blockIdx.z, h = blockIdx.y, d = p.d, heads = p.heads, row_stride = heads * d;
    const KeyBlockWork work = key_block_work<BK, BQ>(p);
    const int64_t j0 = work.j0;
    const int64_t sampled_first = (b * p.Nk * heads + h) * d;
    load_row_tile<T, BK, DW, S, kAttentionThreads>(static_cast<const T*>(p.k_sampled) + sampled_first, p.Nk, j0,
                                                   row_stride, d, k_tile);
    load_row_tile<T, BK, DW, S, kAttentionThreads>(static_cast<const T*>(p.v_sampled) + sampled_first, p.Nk, j0,
                                                   row_stride, d, v_tile);
    const int row = lane / 2, half = lane % 2;
    const bool key_inside = j0 + warp * kRows + row < p.Nk;
    const float scale = static_cast<float>(p.scale), scale_log2 = scale * kLog2e;

    Accumulator dk[Tiles::kColumnTiles], dv[Tiles::kColumnTiles];
#pragma unroll
    for (int ct = 0; ct < Tiles::kColumnTiles; ++ct)
      wmma::fill_fragment(dk[ct], 0.0f), wmma::fill_fragment(dv[ct], 0.0f);

    // The query tile at i0 (q, dO, and lse and delta of its rows) into registers: before the
    // previous tile's products (p.prefetch), or just before it is stored.
    RowTileFetch<T, BQ, DW, S, kAttentionThreads> next_q, next_do;
    float next_lse = INFINITY, next_delta = 0.f;  // of query i0 + threadIdx.x, for threads below BQ
    const int64_t query_first = (b * p.Nq * heads + h) * d;  // of q and dO for (b, h)
    const T* const q_rows = static_cast<const T*>(p.q) + query_first;
    const T* const do_rows = static_cast<const T*>(p.grad_out) + query_first;
    auto fetch_queries = [&](int64_t i0) {
      next_q.fetch(q_rows, p.Nq, i0, row_stride, d, q_tile);
      next_do.fetch(do_rows, p.Nq, i0, row_stride, d, do_tile);
      const int64_t i = i0 + threadIdx.x, stats = (b * heads + h) * p.Nq + i;
      if (threadIdx.x < BQ) {  // queries past Nq: lse = inf gives P = 0
        next_lse = i < p.Nq ? static_cast<const float*>(p.lse)[stats] * kLog2e : INFINITY;  // log2 units
        next_delta = i < p.Nq ? s.delta[stats] : 0.f;
      }
    };
    const bool prefetch = p.prefetch && DW <= kPrefetchMaxWidth;
    if (prefetch && work.i_begin < work.i_end) fetch_queries(work.i_begin);
    for (int64_t i0 = work.i_begin; i0 < work.i_end; i0 += BQ) {
      if (!prefetch) fetch_queries(i0);
      next_q.store(q_rows, p.Nq, i0, row_stride, d, q_tile);
      next_do.store(do_rows, p.Nq, i0, row_stride, d, do_tile);
      if (threadIdx.x < BQ) lse_row[threadIdx.x] = next_lse, delta_row[threadIdx.x] = next_delta;
      __syncthreads();
      if (prefetch && i0 + BQ < work.i_end) fetch_queries(i0 + BQ);
      float probs[kCols], dprobs[kCols];
      warp_row_scores<T, BQ, DW, S, SS>(my_k, q_tile, scores);
#pragma unroll
      for (int u = 0; u < kCols; ++u) probs[u] = scores[row * SS + half * kCols + u];
      __syncwarp();
      warp_row_scores<T, BQ, DW, S, SS>(my_v, do_tile, scores);
#pragma unroll
      for (int u = 0; u < kCols; ++u) dprobs[u] = scores[row * SS + half * kCols + u];
      __syncwarp();  // every lane has read its scores: P^T and dS^T may overwrite them
#pragma unroll
      for (int u = 0; u < kCols; ++u) {
        const int q = half * kCols + u;
        const float prob = key_inside ? exp2f(probs[u] * scale_log2 - lse_row[q]) : 0.f;
        probs_t[row * PS + q] = from_float<T>(prob);
        grads_t[row * PS + q] = from_float<T>(prob * (dprobs[u] - delta_row[q]));
      }
      __syncwarp();
#pragma unroll
      for (int ct = 0; ct < Tiles::kColumnTiles; ++ct) {
        for (int kk = 0; kk < BQ; kk += 16) {
          wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
          wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> bm;
          wmma::load_matrix_sync(a, probs_t + kk, PS);
          wmma::load_matrix_sync(bm, do_tile + kk * S + ct * 16, S);
          wmma::mma_sync(dv[ct], a, bm, dv[ct]);
          wmma::load_matrix_sync(a, grads_t + kk, PS);
          wmma::load_matrix_sync(bm, q_tile + kk * S + ct * 16, S);
          wmma::mma_sync(dk[ct], a, bm, dk[ct]);
        }
      }
      __syncthreads();  // the next query tile overwrites q, dO, lse and delta
    }
    __syncthreads();  // with no query tile, other warps may still load k~ and v~, which the staging overlaps

    // Each warp adds its 16 rows of dk~ (times scale), then of dv~, through its staging rows.
    const int64_t first_key = j0 + warp * kRows, first = (b * heads + h) * p.Nk + first_key;  // row of (b, h, key)
    warp_rows_out<Tiles::kColumnTiles, OS>(dk, staging, p.Nk - first_key, d, [&](int r, int c, float value) {
      atomicAdd(s.grad_k_sampled + (first + r) * d + c, scale * value);
    });
    warp_rows_out<Tiles::kColumnTiles, OS>(dv, staging, p.Nk - first_key, d, [&](int r, int c, float value) {
      atomicAdd(s.grad_v_sampled + (first + r) * d + c, value);
    });
  }
}

}  // namespace lc4::LC4_CUDA_NS
