// The dk~/dv~ kernel of the tda_attention backward on tensor cores (WMMA m16n16k16) for
// float16, and bfloat16 where the hardware has it (sm_80+), accumulating in float32: the
// backward V100 runs. The other kernels of the backward (delta, the ordered dq, the scatter,
// dpoints) are the float path's. One block per (key block, query split, head, batch) loops over
// its query blocks (splits as in tda_attention_backward.cuh):
//   S = q k~^T and dP = dO v~^T     WMMA into float tiles;
//   P = exp(scale S - lse), dS = P (dP - delta)   by elements, stored as T;
//   dv~ += P^T dO, dk~ += dS^T q     WMMA into accumulator fragments that each warp keeps for
//                                    the whole loop (a warp always owns the same output tiles);
//   dq += scale dS k~                WMMA into a float tile, then atomics (kAtomicDq: only where
//                                    dq has no kernel of its own, see tda_attention_dq_wmma.cuh,
//                                    and not deterministic).
#pragma once

#include "cuda/tda_attention_backward.cuh"
#include "cuda/tda_attention_forward_wmma.cuh"

namespace lc4::LC4_CUDA_NS {

template <int D>
struct WmmaBackwardTiles {
  static constexpr int kBlock = D <= 64 ? 32 : 16;      // queries and keys per tile
  static constexpr int kWidth = (D + 15) / 16 * 16;     // head dim padded to whole WMMA tiles
  static constexpr int kStride = kWidth + 8;            // T (rows x width) tiles: ldm a multiple of 8
  static constexpr int kScoreStride = kBlock + 4;       // float score tiles: ldm a multiple of 4
  static constexpr int kProbStride = kBlock + 8;        // T probability tiles
  static constexpr int kFloatStride = kWidth + 4;       // float (rows x width) staging tile
  static constexpr int kWarps = kAttentionThreads / kWarpSize;
  static constexpr int kColumnTiles = kWidth / 16;
  static constexpr int kOutputTiles = (kBlock / 16) * kColumnTiles;  // of dk~ (and of dv~)
  // The tiles of dk~ then those of dv~, dealt to the warps in turn: at d = 40, 12 tiles are 3 per
  // warp (dealing dk~/dv~ pairs, two warps did twice the products of the other two).
  static constexpr int kGradientTiles = 2 * kOutputTiles;
  static constexpr int kTilesPerWarp = (kGradientTiles + kWarps - 1) / kWarps;
  // The float staging tile reuses the storage of the q and dO tiles (2 x kBlock x kStride T).
  static_assert(kBlock * kFloatStride * 4 <= 2 * kBlock * kStride * 2, "staging tile fits");
};

// this_tile = tile (rows 16 rt.., columns 16 ct..) of A B, where A (16 x depth) and B
// (depth x 16) come from shared memory: a_ptr/b_ptr at the tile's first element, a_step/b_step
// the element offset of the next 16-deep slice.
template <typename T, typename LayoutA, typename LayoutB>
__device__ __forceinline__ void wmma_accumulate(wmma::fragment<wmma::accumulator, 16, 16, 16, float>& acc,
                                                const T* a_ptr, int lda, int a_step, const T* b_ptr, int ldb,
                                                int b_step, int depth) {
  for (int kk = 0; kk < depth; kk += 16) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, T, LayoutA> a;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, T, LayoutB> bm;
    wmma::load_matrix_sync(a, a_ptr + (kk / 16) * a_step, lda);
    wmma::load_matrix_sync(bm, b_ptr + (kk / 16) * b_step, ldb);
    wmma::mma_sync(acc, a, bm, acc);
  }
}

// sampled[b, h, j0 + j, c] += factor * (this block's dk~ or dv~)[j, c], through the staging tile;
// every warp passes all its fragments `acc` (gradient tiles warp, warp + kWarps, ...), and those
// of dv~ (or of dk~) are stored.
template <int D>
__device__ __forceinline__ void store_key_gradients(
    const AttentionParams& p, int64_t b, int64_t h, int64_t j0, int warp,
    const wmma::fragment<wmma::accumulator, 16, 16, 16, float> (&acc)[WmmaBackwardTiles<D>::kTilesPerWarp],
    bool dv, float* staging, float factor, float* sampled) {
  using Tiles = WmmaBackwardTiles<D>;
  constexpr int B = Tiles::kBlock, DW = Tiles::kWidth, FS = Tiles::kFloatStride;
#pragma unroll
  for (int m = 0; m < Tiles::kTilesPerWarp; ++m) {
    const int g = warp + m * Tiles::kWarps;
    if (g < Tiles::kGradientTiles && (g >= Tiles::kOutputTiles) == dv) {
      const int t = g % Tiles::kOutputTiles, rt = t / Tiles::kColumnTiles, ct = t % Tiles::kColumnTiles;
      wmma::store_matrix_sync(staging + rt * 16 * FS + ct * 16, acc[m], FS, wmma::mem_row_major);
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < B * DW; idx += kAttentionThreads) {
    const int j = idx / DW, c = idx % DW;
    if (j0 + j < p.Nk && c < p.d)
      atomicAdd(sampled + ((b * p.heads + h) * p.Nk + j0 + j) * p.d + c, factor * staging[j * FS + c]);
  }
  __syncthreads();  // the staging tile is free again
}

template <typename T, int D, bool kAtomicDq>
__global__ void __launch_bounds__(kAttentionThreads) attention_dkv_wmma_kernel(const AttentionParams p,
                                                                               const AttentionScratch s) {
  if constexpr (kHasWmma<T>) {
    using Tiles = WmmaBackwardTiles<D>;
    constexpr int B = Tiles::kBlock, DW = Tiles::kWidth, S = Tiles::kStride, SS = Tiles::kScoreStride;
    constexpr int PS = Tiles::kProbStride, FS = Tiles::kFloatStride, kWarps = Tiles::kWarps;
    constexpr int kColumnTiles = Tiles::kColumnTiles, kOutputTiles = Tiles::kOutputTiles;
    constexpr int kMine = Tiles::kTilesPerWarp, kScoreTiles = (B / 16) * (B / 16);
    using Accumulator = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;
    // WMMA loads and stores need 256-bit aligned addresses.
    __shared__ __align__(32) T k_tile[B * S];
    __shared__ __align__(32) T v_tile[B * S];
    __shared__ __align__(32) T query_tiles[2 * B * S];  // q then dO; later the float staging tile
    __shared__ __align__(32) float s_tile[B * SS];
    __shared__ __align__(32) float dp_tile[B * SS];
    __shared__ __align__(32) T p_tile[B * PS];
    __shared__ __align__(32) T ds_tile[B * PS];
    __shared__ float lse_row[B];
    __shared__ float delta_row[B];
    __shared__ KeyCorners corners[B];
    T* const q_tile = query_tiles;
    T* const do_tile = query_tiles + B * S;
    float* const staging = reinterpret_cast<float*>(query_tiles);

    const int64_t b = blockIdx.z, h = blockIdx.y;
    const KeyBlockWork work = key_block_work<B>(p);
    const int64_t j0 = work.j0;
    const int warp = threadIdx.x / kWarpSize;
    const float scale = static_cast<float>(p.scale), scale_log2 = scale * kLog2e;
    load_key_corners<B>(p, b, h, j0, corners);
    __syncthreads();
    sample_key_tile<T, B, DW, S, kAttentionThreads, T>(static_cast<const T*>(p.k), p.d, corners, k_tile);
    sample_key_tile<T, B, DW, S, kAttentionThreads, T>(static_cast<const T*>(p.v), p.d, corners, v_tile);

    // This warp's tiles of dk~ and dv~: gradient tile warp + m kWarps (rows: keys, columns: head dim).
    Accumulator grad_acc[kMine];
#pragma unroll
    for (int m = 0; m < kMine; ++m) wmma::fill_fragment(grad_acc[m], 0.0f);

    for (int64_t i0 = work.i_begin; i0 < work.i_end; i0 += B) {
      // Copied as T: routed through the float kernels' load_query_rows (T -> float -> T) the
      // kernel spilled at d = 40 on sm_70 (CUDA 11.8 ptxas).
      // (The row pointers are formed here, not kept across the loop: they cost registers there.)
      const int64_t first_row = (b * p.Nq * p.heads + h) * p.d;  // of q and grad_out for (b, h)
      load_row_tile<T, B, DW, S, kAttentionThreads>(static_cast<const T*>(p.q) + first_row, p.Nq, i0, p.heads * p.d,
                                                    p.d, q_tile);
      load_row_tile<T, B, DW, S, kAttentionThreads>(static_cast<const T*>(p.grad_out) + first_row, p.Nq, i0,
                                                    p.heads * p.d, p.d, do_tile);
      if (threadIdx.x < B) {  // rows past Nq: lse = inf gives P = 0
        const int64_t i = i0 + threadIdx.x, row = (b * p.heads + h) * p.Nq + i;
        lse_row[threadIdx.x] = i < p.Nq ? static_cast<const float*>(p.lse)[row] * kLog2e : INFINITY;  // log2 units
        delta_row[threadIdx.x] = i < p.Nq ? s.delta[row] : 0.f;
      }
      __syncthreads();
      // S = q k~^T and dP = dO v~^T: 2 x (B/16)^2 tiles over the warps.
      for (int t = warp; t < 2 * kScoreTiles; t += kWarps) {
        const bool is_dp = t >= kScoreTiles;
        const int rt = (t % kScoreTiles) / (B / 16), ct = t % (B / 16);
        Accumulator acc;
        wmma::fill_fragment(acc, 0.0f);
        wmma_accumulate<T, wmma::row_major, wmma::col_major>(acc, (is_dp ? do_tile : q_tile) + rt * 16 * S, S, 16,
                                                             (is_dp ? v_tile : k_tile) + ct * 16 * S, S, 16, DW);
        wmma::store_matrix_sync((is_dp ? dp_tile : s_tile) + rt * 16 * SS + ct * 16, acc, SS, wmma::mem_row_major);
      }
      __syncthreads();
      for (int idx = threadIdx.x; idx < B * B; idx += kAttentionThreads) {
        const int i = idx / B, j = idx % B;
        const float prob = j0 + j < p.Nk ? exp2f(scale_log2 * s_tile[i * SS + j] - lse_row[i]) : 0.f;
        p_tile[i * PS + j] = from_float<T>(prob);
        ds_tile[i * PS + j] = from_float<T>(prob * (dp_tile[i * SS + j] - delta_row[i]));
      }
      __syncthreads();
      // dk~ += dS^T q, dv~ += P^T dO. dS^T and P^T (keys x queries) are their tiles read column-major.
#pragma unroll
      for (int m = 0; m < kMine; ++m) {
        const int g = warp + m * kWarps;
        if (g < Tiles::kGradientTiles) {
          const bool dv = g >= kOutputTiles;
          const int t = g % kOutputTiles, rt = t / kColumnTiles, ct = t % kColumnTiles;
          wmma_accumulate<T, wmma::col_major, wmma::row_major>(
              grad_acc[m], (dv ? p_tile : ds_tile) + rt * 16, PS, 16 * PS, (dv ? do_tile : q_tile) + ct * 16, S,
              16 * S, B);
        }
      }
      if constexpr (kAtomicDq) {
        __syncthreads();  // q and dO are read: their storage becomes the dq staging tile
        for (int t = warp; t < kOutputTiles; t += kWarps) {  // dq = dS k~: (B x B)(B x DW)
          const int rt = t / kColumnTiles, ct = t % kColumnTiles;
          Accumulator acc;
          wmma::fill_fragment(acc, 0.0f);
          wmma_accumulate<T, wmma::row_major, wmma::row_major>(acc, ds_tile + rt * 16 * PS, PS, 16,
                                                               k_tile + ct * 16, S, 16 * S, B);
          wmma::store_matrix_sync(staging + rt * 16 * FS + ct * 16, acc, FS, wmma::mem_row_major);
        }
        __syncthreads();
        float* grad_q = static_cast<float*>(p.grad_q);
        for (int idx = threadIdx.x; idx < B * DW; idx += kAttentionThreads) {
          const int i = idx / DW, c = idx % DW;
          if (i0 + i < p.Nq && c < p.d) {
            atomicAdd(grad_q + ((b * p.Nq + i0 + i) * p.heads + h) * p.d + c, scale * staging[i * FS + c]);
          }
        }
      }
      __syncthreads();  // the next query block overwrites q, dO and the score tiles
    }

    // The fragments go to global memory through the staging tile: dk~ (times scale), then dv~.
    store_key_gradients<D>(p, b, h, j0, warp, grad_acc, false, staging, scale, s.grad_k_sampled);
    store_key_gradients<D>(p, b, h, j0, warp, grad_acc, true, staging, 1.f, s.grad_v_sampled);
  }
}

}  // namespace lc4::LC4_CUDA_NS
