// tda_attention forward, one block per (query block, head, batch): an online softmax over key
// blocks whose k~ and v~ are staged in shared memory (k~ for the scores, then v~ into the same
// tile), read from buffers sampled beforehand or sampled on the fly. Keeps only the output and
// the per-query log-sum-exp.
//
// Thread layout: kThreadsPerRow consecutive lanes share a query row; lane `sub` of a row owns
// the score columns and the output columns sub, sub + kThreadsPerRow, ...
#pragma once

#include "cuda/key_sampling.cuh"

namespace lc4::LC4_CUDA_NS {

constexpr int kAttentionThreads = 128;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// A grid of blocks that each take per_block items, capped for kernels that stride over the rest.
inline dim3 grid_for(int64_t items, int64_t per_block) {
  return dim3(static_cast<unsigned>(std::min<int64_t>(65535, ceil_div(items, per_block))));
}

template <int D>
struct ForwardTiles {
  static constexpr int kBlockQ = D <= 128 ? 32 : 16;
  static constexpr int kBlockK = kBlockQ;
  static constexpr int kThreadsPerRow = kAttentionThreads / kBlockQ;
  static constexpr int kColumns = D / kThreadsPerRow;  // output columns per thread
  static constexpr int kKeys = kBlockK / kThreadsPerRow;  // score columns per thread
  static constexpr int kStride = D + 1;  // odd row stride: the lanes of a warp hit distinct banks
  static_assert(D % kThreadsPerRow == 0 && kBlockK % kThreadsPerRow == 0, "tile shape");
};

template <typename T, int D>
__global__ void __launch_bounds__(kAttentionThreads) attention_forward_kernel(const AttentionParams p) {
  using Tiles = ForwardTiles<D>;
  constexpr int BQ = Tiles::kBlockQ, BK = Tiles::kBlockK, TPR = Tiles::kThreadsPerRow, S = Tiles::kStride;
  __shared__ float q_tile[BQ * S];
  __shared__ float kv_tile[BK * S];
  __shared__ float p_tile[BQ * (BK + 1)];
  __shared__ KeyCorners corners[BK];

  const int64_t b = blockIdx.z, h = blockIdx.y, i0 = static_cast<int64_t>(blockIdx.x) * BQ;
  const int64_t d = p.d, heads = p.heads;
  const int row = threadIdx.x / TPR, sub = threadIdx.x % TPR;
  const T* q = static_cast<const T*>(p.q);
  const float q_scale = static_cast<float>(p.scale) * kLog2e;  // scores in log2 units: exp2f below
  for (int idx = threadIdx.x; idx < BQ * D; idx += kAttentionThreads) {
    const int r = idx / D, c = idx % D;
    const int64_t i = i0 + r;
    q_tile[r * S + c] = (i < p.Nq && c < d) ? to_float(q[((b * p.Nq + i) * heads + h) * d + c]) * q_scale : 0.f;
  }

  float acc[Tiles::kColumns];
#pragma unroll
  for (int u = 0; u < Tiles::kColumns; ++u) acc[u] = 0.f;
  float running_max = -INFINITY, running_sum = 0.f;

  for (int64_t j0 = 0; j0 < p.Nk; j0 += BK) {
    stage_key_tile<T, BK, D, S, kAttentionThreads>(p, p.k_sampled, p.k, true, b, h, j0, corners, kv_tile);
    __syncthreads();
    float scores[Tiles::kKeys];
    float block_max = -INFINITY;
#pragma unroll
    for (int u = 0; u < Tiles::kKeys; ++u) {
      const int j = sub + TPR * u;
      float dot = 0.f;
#pragma unroll 8
      for (int c = 0; c < D; ++c) dot += q_tile[row * S + c] * kv_tile[j * S + c];
      scores[u] = j0 + j < p.Nk ? dot : -INFINITY;
      block_max = fmaxf(block_max, scores[u]);
    }
    block_max = row_max<TPR>(block_max);  // finite: key j0 exists
    __syncthreads();  // every thread is done with k~
    stage_key_tile<T, BK, D, S, kAttentionThreads>(p, p.v_sampled, p.v, false, b, h, j0, corners, kv_tile);

    const float new_max = fmaxf(running_max, block_max);
    const float correction = exp2f(running_max - new_max);
    float block_sum = 0.f;
#pragma unroll
    for (int u = 0; u < Tiles::kKeys; ++u) {
      const float prob = exp2f(scores[u] - new_max);
      p_tile[row * (BK + 1) + sub + TPR * u] = prob;
      block_sum += prob;
    }
    running_sum = running_sum * correction + row_sum<TPR>(block_sum);
    running_max = new_max;
    __syncthreads();  // probabilities and v~ are in shared memory
#pragma unroll
    for (int u = 0; u < Tiles::kColumns; ++u) acc[u] *= correction;
    for (int j = 0; j < BK; ++j) {
      const float prob = p_tile[row * (BK + 1) + j];
#pragma unroll
      for (int u = 0; u < Tiles::kColumns; ++u) acc[u] += prob * kv_tile[j * S + sub + TPR * u];
    }
    __syncthreads();  // the next key block overwrites corners, v~ and probabilities
  }

  const int64_t i = i0 + row;
  if (i < p.Nq) {
    T* out = static_cast<T*>(p.out) + ((b * p.Nq + i) * heads + h) * d;
    const float inv = 1.f / running_sum;
#pragma unroll
    for (int u = 0; u < Tiles::kColumns; ++u) {
      const int c = sub + TPR * u;
      if (c < d) out[c] = from_float<T>(acc[u] * inv);
    }
    if (sub == 0) static_cast<float*>(p.lse)[(b * heads + h) * p.Nq + i] = (running_max + log2f(running_sum)) * kLn2;
  }
}


}  // namespace lc4::LC4_CUDA_NS
