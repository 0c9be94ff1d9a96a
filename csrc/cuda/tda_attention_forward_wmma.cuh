// tda_attention forward on tensor cores (WMMA m16n16k16) for float16, and bfloat16 where the
// hardware has it (sm_80+), accumulating in float32: the path V100 runs. Same structure as the
// float kernel: q and the sampled k~ (then v~) staged in shared memory as T; S = q k~^T by WMMA
// into a float tile; the online softmax by rows; P (as T) v~ by WMMA into a float output tile in
// shared memory, rescaled by rows there. Used above d = 128 (and with LC4_CUDA_FORWARD=shared);
// tda_attention_forward_registers.cuh keeps O in fragments instead.
#pragma once

#include "cuda/tda_attention_forward.cuh"

namespace lc4::LC4_CUDA_NS {

template <typename T>
constexpr bool kHasWmma = std::is_same_v<T, __half> || (std::is_same_v<T, __nv_bfloat16> && LC4_HAS_BF16_WMMA);

// scores[r * kScoreStride + j] = (rows[r] . keys[j]) for the 16 rows of a warp (16-bit, kStride
// apart) and kKeys key rows of kWidth: WMMA over the warp, then a __syncwarp, after which any of
// the warp's lanes may read any score.
template <typename T, int kKeys, int kWidth, int kStride, int kScoreStride>
__device__ __forceinline__ void warp_row_scores(const T* rows, const T* keys, float* scores) {
  for (int ct = 0; ct < kKeys / 16; ++ct) {
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::fill_fragment(acc, 0.0f);
    for (int kk = 0; kk < kWidth; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> bt;
      wmma::load_matrix_sync(a, rows + kk, kStride);
      wmma::load_matrix_sync(bt, keys + ct * 16 * kStride + kk, kStride);
      wmma::mma_sync(acc, a, bt, acc);
    }
    wmma::store_matrix_sync(scores + ct * 16, acc, kScoreStride, wmma::mem_row_major);
  }
  __syncwarp();
}

// emit(r, c, value) for every element (row r < rows, column c < d) of a warp's 16 rows held in
// accumulator fragments of 16 columns each, through the warp's float staging rows (kOutStride
// apart). Anything the lanes wrote to shared memory before the call is visible to emit.
template <int kColumnTiles, int kOutStride, typename Emit>
__device__ __forceinline__ void warp_rows_out(
    const wmma::fragment<wmma::accumulator, 16, 16, 16, float> (&fragments)[kColumnTiles], float* staging,
    int64_t rows, int64_t d, Emit&& emit) {
  constexpr int kWidth = kColumnTiles * 16;
#pragma unroll
  for (int ct = 0; ct < kColumnTiles; ++ct) {
    wmma::store_matrix_sync(staging + ct * 16, fragments[ct], kOutStride, wmma::mem_row_major);
  }
  __syncwarp();
  for (int idx = threadIdx.x % kWarpSize; idx < 16 * kWidth; idx += kWarpSize) {
    const int r = idx / kWidth, c = idx % kWidth;
    if (r < rows && c < d) emit(r, c, staging[r * kOutStride + c]);
  }
  __syncwarp();  // every lane has read the staging rows: they may be overwritten
}

template <int D>
struct WmmaForwardTiles {
  static constexpr int kBlockQ = D <= 128 ? 32 : 16;
  static constexpr int kBlockK = kBlockQ;
  static constexpr int kWidth = (D + 15) / 16 * 16;  // head dim padded to whole WMMA tiles
  static constexpr int kStride = kWidth + 8;        // T tiles: ldm a multiple of 8
  static constexpr int kScoreStride = kBlockK + 4;  // float tiles: ldm a multiple of 4
  static constexpr int kOutStride = kWidth + 4;
  static constexpr int kProbStride = kBlockK + 8;
  static constexpr int kThreadsPerRow = kAttentionThreads / kBlockQ;
  static constexpr int kKeys = kBlockK / kThreadsPerRow;
};

template <typename T, int D>
__global__ void __launch_bounds__(kAttentionThreads) attention_forward_wmma_kernel(const AttentionParams p) {
  if constexpr (kHasWmma<T>) {
    using Tiles = WmmaForwardTiles<D>;
    constexpr int BQ = Tiles::kBlockQ, BK = Tiles::kBlockK, DW = Tiles::kWidth, S = Tiles::kStride;
    constexpr int SS = Tiles::kScoreStride, OS = Tiles::kOutStride, PS = Tiles::kProbStride;
    constexpr int TPR = Tiles::kThreadsPerRow;
    constexpr int kWarps = kAttentionThreads / kWarpSize;
    // WMMA loads and stores need 256-bit aligned addresses.
    __shared__ __align__(32) T q_tile[BQ * S];
    __shared__ __align__(32) T kv_tile[BK * S];
    __shared__ __align__(32) T p_tile[BQ * PS];
    __shared__ __align__(32) float s_tile[BQ * SS];
    __shared__ __align__(32) float o_tile[BQ * OS];
    __shared__ KeyCorners corners[BK];

    const int64_t b = blockIdx.z, h = blockIdx.y, i0 = static_cast<int64_t>(blockIdx.x) * BQ;
    const int64_t d = p.d, heads = p.heads;
    const int warp = threadIdx.x / kWarpSize, row = threadIdx.x / TPR, sub = threadIdx.x % TPR;
    load_row_tile<T, BQ, DW, S, kAttentionThreads>(static_cast<const T*>(p.q) + (b * p.Nq * heads + h) * d, p.Nq, i0,
                                                   heads * d, d, q_tile);
    for (int idx = threadIdx.x; idx < BQ * OS; idx += kAttentionThreads) o_tile[idx] = 0.f;
    const float score_scale = static_cast<float>(p.scale) * kLog2e;
    float running_max = -INFINITY, running_sum = 0.f;

    for (int64_t j0 = 0; j0 < p.Nk; j0 += BK) {
      stage_key_tile<T, BK, DW, S, kAttentionThreads, T>(p, p.k_sampled, p.k, true, b, h, j0, corners, kv_tile);
      __syncthreads();
      // S = q k~^T: one 16x16 score tile per warp.
      for (int t = warp; t < (BQ / 16) * (BK / 16); t += kWarps) {
        const int rt = t / (BK / 16), ct = t % (BK / 16);
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
        wmma::fill_fragment(acc, 0.0f);
        for (int kk = 0; kk < DW; kk += 16) {
          wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
          wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> bt;
          wmma::load_matrix_sync(a, q_tile + rt * 16 * S + kk, S);
          wmma::load_matrix_sync(bt, kv_tile + ct * 16 * S + kk, S);
          wmma::mma_sync(acc, a, bt, acc);
        }
        wmma::store_matrix_sync(s_tile + rt * 16 * SS + ct * 16, acc, SS, wmma::mem_row_major);
      }
      __syncthreads();  // scores are in s_tile; k~ is no longer needed
      stage_key_tile<T, BK, DW, S, kAttentionThreads, T>(p, p.v_sampled, p.v, false, b, h, j0, corners, kv_tile);

      float scores[Tiles::kKeys];
      float block_max = -INFINITY;
#pragma unroll
      for (int u = 0; u < Tiles::kKeys; ++u) {
        const int j = sub + TPR * u;
        scores[u] = j0 + j < p.Nk ? s_tile[row * SS + j] * score_scale : -INFINITY;
        block_max = fmaxf(block_max, scores[u]);
      }
      block_max = row_max<TPR>(block_max);
      const float new_max = fmaxf(running_max, block_max);
      const float correction = exp2f(running_max - new_max);
      float block_sum = 0.f;
#pragma unroll
      for (int u = 0; u < Tiles::kKeys; ++u) {
        const float prob = exp2f(scores[u] - new_max);
        p_tile[row * PS + sub + TPR * u] = from_float<T>(prob);
        block_sum += prob;
      }
      running_sum = running_sum * correction + row_sum<TPR>(block_sum);
      running_max = new_max;
      for (int c = sub; c < DW; c += TPR) o_tile[row * OS + c] *= correction;
      __syncthreads();  // P, v~ and the rescaled output are in shared memory
      // O += P v~: the (BQ / 16) x (DW / 16) output tiles spread over the warps.
      for (int t = warp; t < (BQ / 16) * (DW / 16); t += kWarps) {
        const int rt = t / (DW / 16), ct = t % (DW / 16);
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
        wmma::load_matrix_sync(acc, o_tile + rt * 16 * OS + ct * 16, OS, wmma::mem_row_major);
        for (int kk = 0; kk < BK; kk += 16) {
          wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
          wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> bv;
          wmma::load_matrix_sync(a, p_tile + rt * 16 * PS + kk, PS);
          wmma::load_matrix_sync(bv, kv_tile + kk * S + ct * 16, S);
          wmma::mma_sync(acc, a, bv, acc);
        }
        wmma::store_matrix_sync(o_tile + rt * 16 * OS + ct * 16, acc, OS, wmma::mem_row_major);
      }
      __syncthreads();  // the next key block overwrites corners, v~, P and reads the output tile
    }

    const int64_t i = i0 + row;
    if (i < p.Nq) {
      T* out = static_cast<T*>(p.out) + ((b * p.Nq + i) * heads + h) * d;
      const float inv = 1.f / running_sum;
      for (int c = sub; c < d; c += TPR) out[c] = from_float<T>(o_tile[row * OS + c] * inv);
      if (sub == 0) static_cast<float*>(p.lse)[(b * heads + h) * p.Nq + i] = (running_max + log2f(running_sum)) * kLn2;
    }
  }
}

}  // namespace lc4::LC4_CUDA_NS
