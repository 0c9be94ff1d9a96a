// tda_attention backward, FlashAttention-2 style, probabilities recomputed from the saved
// log-sum-exp, nothing of size Nq x Nk in global memory:
//   delta      rowsum(dO * O) per query;
//   dkv        one block per (key block, query split, head, batch): dk~, dv~ added into zeroed
//              float (B, heads, Nk, d) buffers, and dq through atomics unless deterministic
//              (this file: float32 on CUDA cores; float16/bfloat16 on tensor cores in
//              tda_attention_backward_wmma.cuh, or, where dq has a tensor-core kernel of its own
//              that writes delta too, tda_attention_dq_wmma.cuh, in
//              tda_attention_dkv_registers.cuh up to d = 80). Nk is small next to Nq at the SD1.5
//              shapes (1024 keys, up to 32768 queries), so one block per key block would leave the GPU
//              mostly idle while each block walks every query: the queries are split between
//              blocks (one split, a single addition to zero, when deterministic);
//   dq         (deterministic, where dq has no tensor-core kernel) one block per (query block,
//              head, batch), no atomics;
//   scatter    dk~, dv~ into dk, dv through the trilinear weights: by runs of a sorted corner
//              table, each voxel summed once in a fixed order (always when deterministic), or by
//              float atomics;
//   dpoints    one warp per (batch, key, group).
#pragma once

#include "cuda/key_sampling.cuh"
#include "cuda/launchers.h"
#include "cuda/tda_attention_forward.cuh"

namespace lc4::LC4_CUDA_NS {

template <int D>
struct BackwardTiles {
  static constexpr int kBlock = D <= 64 ? 32 : D <= 128 ? 16 : 8;  // queries and keys per tile
  static constexpr int kThreadsPerRow = kAttentionThreads / kBlock;
  static constexpr int kColumns = D / kThreadsPerRow;
  static constexpr int kStride = D + 1;
  static_assert(D % kThreadsPerRow == 0, "tile shape");
};

// Query rows i0.. of (b, h) into shared memory: q, dO, lse and delta (rows past Nq give p = 0).
template <typename T, int D>
__device__ __forceinline__ void load_query_rows(const AttentionParams& p, const AttentionScratch& s, int64_t b,
                                                int64_t h, int64_t i0, float* q_tile, float* do_tile, float* lse_row,
                                                float* delta_row) {
  using Tiles = BackwardTiles<D>;
  constexpr int B = Tiles::kBlock, S = Tiles::kStride;
  const T* q = static_cast<const T*>(p.q);
  const T* grad_out = static_cast<const T*>(p.grad_out);
  for (int idx = threadIdx.x; idx < B * D; idx += kAttentionThreads) {
    const int r = idx / D, c = idx % D;
    const int64_t i = i0 + r;
    const bool inside = i < p.Nq && c < p.d;
    const int64_t offset = ((b * p.Nq + i) * p.heads + h) * p.d + c;
    q_tile[r * S + c] = inside ? to_float(q[offset]) : 0.f;
    do_tile[r * S + c] = inside ? to_float(grad_out[offset]) : 0.f;
  }
  if (threadIdx.x < B) {
    const int64_t i = i0 + threadIdx.x, row = (b * p.heads + h) * p.Nq + i;
    lse_row[threadIdx.x] = i < p.Nq ? static_cast<const float*>(p.lse)[row] : INFINITY;
    delta_row[threadIdx.x] = i < p.Nq ? s.delta[row] : 0.f;
  }
}

// P = exp(scale q k~ - lse) and dS = P (dO v~ - delta) for the (query, key) tile.
template <int D>
__device__ __forceinline__ void probabilities_and_score_grads(const AttentionParams& p, int64_t j0,
                                                              const float* q_tile, const float* do_tile,
                                                              const float* k_tile, const float* v_tile,
                                                              const float* lse_row, const float* delta_row,
                                                              float* p_tile, float* ds_tile) {
  using Tiles = BackwardTiles<D>;
  constexpr int B = Tiles::kBlock, S = Tiles::kStride;
  const float scale = static_cast<float>(p.scale);
  for (int idx = threadIdx.x; idx < B * B; idx += kAttentionThreads) {
    const int i = idx / B, j = idx % B;
    float qk = 0.f, dov = 0.f;
#pragma unroll 8
    for (int c = 0; c < D; ++c) {
      qk += q_tile[i * S + c] * k_tile[j * S + c];
      dov += do_tile[i * S + c] * v_tile[j * S + c];
    }
    const float prob = j0 + j < p.Nk ? expf(scale * qk - lse_row[i]) : 0.f;
    p_tile[i * (B + 1) + j] = prob;
    ds_tile[i * (B + 1) + j] = prob * (dov - delta_row[i]);
  }
}

// The key block and the range of query rows of one dk~/dv~ block: blockIdx.x = split * key
// blocks + key block, so the blocks that run together share their query rows.
struct KeyBlockWork {
  int64_t j0, i_begin, i_end;
};

// Key blocks of kBlock keys; the queries are split in whole blocks of kQueryBlock.
template <int kBlock, int kQueryBlock = kBlock>
__device__ __forceinline__ KeyBlockWork key_block_work(const AttentionParams& p) {
  const int64_t key_blocks = (p.Nk + kBlock - 1) / kBlock, splits = gridDim.x / key_blocks;
  const int64_t split = blockIdx.x / key_blocks, query_blocks = (p.Nq + kQueryBlock - 1) / kQueryBlock;
  const int64_t split_rows = (query_blocks + splits - 1) / splits * kQueryBlock;
  const int64_t i_begin = split * split_rows, i_end = i_begin + split_rows < p.Nq ? i_begin + split_rows : p.Nq;
  return {static_cast<int64_t>(blockIdx.x % key_blocks) * kBlock, i_begin, i_end};
}

// Blocks per SM the dk~/dv~ grid aims at, and the fewest query blocks a split gets.
constexpr int64_t kKeyBlocksPerProcessor = 16;
constexpr int64_t kMinQueryBlocksPerSplit = 4;

// Query splits of the dk~/dv~ kernel for key blocks of `block` keys and query tiles of
// `query_block` rows (none left empty).
inline int64_t dkv_query_splits(const AttentionParams& p, int64_t block, int64_t query_block) {
  const int64_t query_blocks = ceil_div(p.Nq, query_block);
  if (p.deterministic || query_blocks <= 1) return 1;
  int64_t splits = p.query_splits;
  if (splits <= 0) {
    const int64_t key_blocks = ceil_div(p.Nk, block) * p.heads * p.B;
    splits = std::min(ceil_div(kKeyBlocksPerProcessor * multiprocessor_count(), key_blocks),
                      query_blocks / kMinQueryBlocksPerSplit);
  }
  splits = std::max<int64_t>(1, std::min(splits, query_blocks));
  return ceil_div(query_blocks, ceil_div(query_blocks, splits));
}

template <typename T>
__global__ void __launch_bounds__(kAttentionThreads)
attention_delta_kernel(const AttentionParams p, const AttentionScratch s) {
  constexpr int kWarps = kAttentionThreads / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  const T* grad_out = static_cast<const T*>(p.grad_out);
  const T* out = static_cast<const T*>(p.out);
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / kWarpSize; row < p.B * p.Nq * p.heads;
       row += static_cast<int64_t>(gridDim.x) * kWarps) {  // row = (b, i, h)
    float dot = 0.f;
    for (int64_t c = lane; c < p.d; c += kWarpSize)
      dot += to_float(grad_out[row * p.d + c]) * to_float(out[row * p.d + c]);
    dot = warp_sum(dot);
    const int64_t h = row % p.heads, i = (row / p.heads) % p.Nq, b = row / (p.heads * p.Nq);
    if (lane == 0) s.delta[(b * p.heads + h) * p.Nq + i] = dot;
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(kAttentionThreads)
attention_dkv_kernel(const AttentionParams p, const AttentionScratch s) {
  using Tiles = BackwardTiles<D>;
  constexpr int B = Tiles::kBlock, S = Tiles::kStride, TPR = Tiles::kThreadsPerRow;
  __shared__ float k_tile[B * S];
  __shared__ float v_tile[B * S];
  __shared__ float q_tile[B * S];
  __shared__ float do_tile[B * S];
  __shared__ float p_tile[B * (B + 1)];
  __shared__ float ds_tile[B * (B + 1)];
  __shared__ float lse_row[B];
  __shared__ float delta_row[B];
  __shared__ KeyCorners corners[B];

  const int64_t b = blockIdx.z, h = blockIdx.y;
  const KeyBlockWork work = key_block_work<B>(p);
  const int64_t j0 = work.j0;
  const int key = threadIdx.x / TPR, sub = threadIdx.x % TPR;
  const float scale = static_cast<float>(p.scale);
  load_key_corners<B>(p, b, h, j0, corners);
  __syncthreads();
  sample_key_tile<T, B, D, S, kAttentionThreads>(static_cast<const T*>(p.k), p.d, corners, k_tile);
  sample_key_tile<T, B, D, S, kAttentionThreads>(static_cast<const T*>(p.v), p.d, corners, v_tile);

  float dk[Tiles::kColumns], dv[Tiles::kColumns];
#pragma unroll
  for (int u = 0; u < Tiles::kColumns; ++u) dk[u] = dv[u] = 0.f;

  for (int64_t i0 = work.i_begin; i0 < work.i_end; i0 += B) {
    load_query_rows<T, D>(p, s, b, h, i0, q_tile, do_tile, lse_row, delta_row);
    __syncthreads();
    probabilities_and_score_grads<D>(p, j0, q_tile, do_tile, k_tile, v_tile, lse_row, delta_row, p_tile, ds_tile);
    __syncthreads();
    for (int i = 0; i < B; ++i) {
      const float prob = p_tile[i * (B + 1) + key], ds = ds_tile[i * (B + 1) + key];
#pragma unroll
      for (int u = 0; u < Tiles::kColumns; ++u) {
        dv[u] += prob * do_tile[i * S + sub + TPR * u];
        dk[u] += ds * q_tile[i * S + sub + TPR * u];
      }
    }
    if (!p.deterministic) {  // each (query, column) of this block is one thread's: atomics only across blocks
      float* grad_q = static_cast<float*>(p.grad_q);
      for (int idx = threadIdx.x; idx < B * D; idx += kAttentionThreads) {
        const int i = idx / D, c = idx % D;
        if (i0 + i >= p.Nq || c >= p.d) continue;
        float sum = 0.f;
        for (int j = 0; j < B; ++j) sum += ds_tile[i * (B + 1) + j] * k_tile[j * S + c];
        atomicAdd(grad_q + ((b * p.Nq + i0 + i) * p.heads + h) * p.d + c, scale * sum);
      }
    }
    __syncthreads();  // the next query block overwrites the tiles
  }

  if (j0 + key < p.Nk) {
    const int64_t first = ((b * p.heads + h) * p.Nk + j0 + key) * p.d;
#pragma unroll
    for (int u = 0; u < Tiles::kColumns; ++u) {
      const int c = sub + TPR * u;
      if (c < p.d) {
        atomicAdd(s.grad_k_sampled + first + c, scale * dk[u]);
        atomicAdd(s.grad_v_sampled + first + c, dv[u]);
      }
    }
  }
}

template <typename T, int D>
__global__ void __launch_bounds__(kAttentionThreads)
attention_dq_kernel(const AttentionParams p, const AttentionScratch s) {
  using Tiles = BackwardTiles<D>;
  constexpr int B = Tiles::kBlock, S = Tiles::kStride, TPR = Tiles::kThreadsPerRow;
  __shared__ float k_tile[B * S];
  __shared__ float v_tile[B * S];
  __shared__ float q_tile[B * S];
  __shared__ float do_tile[B * S];
  __shared__ float p_tile[B * (B + 1)];
  __shared__ float ds_tile[B * (B + 1)];
  __shared__ float lse_row[B];
  __shared__ float delta_row[B];
  __shared__ KeyCorners corners[B];

  const int64_t b = blockIdx.z, h = blockIdx.y, i0 = static_cast<int64_t>(blockIdx.x) * B;
  const int row = threadIdx.x / TPR, sub = threadIdx.x % TPR;
  load_query_rows<T, D>(p, s, b, h, i0, q_tile, do_tile, lse_row, delta_row);
  float dq[Tiles::kColumns];
#pragma unroll
  for (int u = 0; u < Tiles::kColumns; ++u) dq[u] = 0.f;

  for (int64_t j0 = 0; j0 < p.Nk; j0 += B) {
    load_key_corners<B>(p, b, h, j0, corners);
    __syncthreads();
    sample_key_tile<T, B, D, S, kAttentionThreads>(static_cast<const T*>(p.k), p.d, corners, k_tile);
    sample_key_tile<T, B, D, S, kAttentionThreads>(static_cast<const T*>(p.v), p.d, corners, v_tile);
    __syncthreads();
    probabilities_and_score_grads<D>(p, j0, q_tile, do_tile, k_tile, v_tile, lse_row, delta_row, p_tile, ds_tile);
    __syncthreads();
    for (int j = 0; j < B; ++j) {
      const float ds = ds_tile[row * (B + 1) + j];
#pragma unroll
      for (int u = 0; u < Tiles::kColumns; ++u) dq[u] += ds * k_tile[j * S + sub + TPR * u];
    }
    __syncthreads();
  }
  const int64_t i = i0 + row;
  if (i < p.Nq) {
    float* grad_q = static_cast<float*>(p.grad_q) + ((b * p.Nq + i) * p.heads + h) * p.d;
#pragma unroll
    for (int u = 0; u < Tiles::kColumns; ++u) {
      const int c = sub + TPR * u;
      if (c < p.d) grad_q[c] = static_cast<float>(p.scale) * dq[u];
    }
  }
}

namespace {  // dtype-independent kernels: one copy per translation unit

// Atomic scatter: one warp per (batch, key, head), lanes over columns.
__global__ void __launch_bounds__(kAttentionThreads)
attention_scatter_atomic_kernel(const AttentionParams p, const AttentionScratch s) {
  constexpr int kWarps = kAttentionThreads / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  const int64_t voxels = p.T * p.H * p.W, per_group = p.heads / p.G;
  float* grad_k = static_cast<float*>(p.grad_k);
  float* grad_v = static_cast<float*>(p.grad_v);
  TrilinearPoint<float> tp;
  for (int64_t bnh = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / kWarpSize; bnh < p.B * p.Nk * p.heads;
       bnh += static_cast<int64_t>(gridDim.x) * kWarps) {
    const int64_t h = bnh % p.heads, n = (bnh / p.heads) % p.Nk, b = bnh / (p.heads * p.Nk);
    const float* xyt = static_cast<const float*>(p.points) + ((b * p.Nk + n) * p.G + h / per_group) * 3;
    trilinear_point(xyt[0], xyt[1], xyt[2], p.T, p.H, p.W, tp);
    const int64_t sampled = ((b * p.heads + h) * p.Nk + n) * p.d;
    for (int64_t c = lane; c < p.d; c += kWarpSize) {
      const float dk = s.grad_k_sampled[sampled + c], dv = s.grad_v_sampled[sampled + c];
      for (int corner = 0; corner < 8; ++corner) {
        if (!tp.valid[corner]) continue;
        const int64_t offset = ((b * voxels + tp.voxel[corner]) * p.heads + h) * p.d + c;
        atomicAdd(grad_k + offset, tp.weight[corner] * dk);
        atomicAdd(grad_v + offset, tp.weight[corner] * dv);
      }
    }
  }
}

}  // namespace

// Segment scatter: one warp per run of equal keys of the sorted corner table (a voxel of one
// batch and group), lanes over (head of the group, column): the run's entries are added in their
// sorted order and the sum is written once, in T, to the zeroed dk and dv. No atomics. dk~ and
// dv~ are read as S: float32, or T where the glue converted them (AttentionScratch).
template <typename T, typename S>
__global__ void __launch_bounds__(kAttentionThreads) attention_scatter_segments_kernel(const AttentionParams p,
                                                                                       const AttentionScratch s) {
  constexpr int kWarps = kAttentionThreads / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  const int64_t voxels = p.T * p.H * p.W, nothing = p.B * p.G * voxels, entries = p.B * p.Nk * p.G * 8;
  const int64_t per_group = p.heads / p.G, width = per_group * p.d;  // the group's heads, side by side
  T* grad_k = static_cast<T*>(p.grad_k);
  T* grad_v = static_cast<T*>(p.grad_v);
  const S* grad_k_sampled = static_cast<const S*>(s.scatter_grad_k_sampled);
  const S* grad_v_sampled = static_cast<const S*>(s.scatter_grad_v_sampled);
  for (int64_t first = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / kWarpSize; first < entries;
       first += static_cast<int64_t>(gridDim.x) * kWarps) {
    const int64_t key = s.sorted_corner_keys[first];
    if (key == nothing || (first > 0 && s.sorted_corner_keys[first - 1] == key)) continue;  // not a run's start
    int64_t end = first + 1;
    while (end < entries && s.sorted_corner_keys[end] == key) ++end;
    const int64_t voxel = key % voxels, g = (key / voxels) % p.G, b = key / (voxels * p.G);
    for (int64_t column = lane; column < width; column += kWarpSize) {
      const int64_t h = g * per_group + column / p.d, c = column % p.d;
      float dk = 0.f, dv = 0.f;
      for (int64_t position = first; position < end; ++position) {
        const int64_t entry = s.sorted_corner_entries[position], n = entry / (8 * p.G) % p.Nk;
        const float weight = s.corner_weights[entry];
        const int64_t sampled = ((b * p.heads + h) * p.Nk + n) * p.d + c;
        dk += weight * to_float(grad_k_sampled[sampled]);
        dv += weight * to_float(grad_v_sampled[sampled]);
      }
      const int64_t offset = ((b * voxels + voxel) * p.heads + h) * p.d + c;
      grad_k[offset] = from_float<T>(dk);
      grad_v[offset] = from_float<T>(dv);
    }
  }
}

// dpoints[b, n, g] = sum over the group's heads and the corners of dweight * (<dk~, k> + <dv~, v>).
// dk~ and dv~ are read as S, as in the segment scatter.
template <typename T, typename S>
__global__ void __launch_bounds__(kAttentionThreads)
attention_dpoints_kernel(const AttentionParams p, const AttentionScratch s) {
  constexpr int kWarps = kAttentionThreads / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  const int64_t voxels = p.T * p.H * p.W, per_group = p.heads / p.G;
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  const S* grad_k_sampled = static_cast<const S*>(s.scatter_grad_k_sampled);
  const S* grad_v_sampled = static_cast<const S*>(s.scatter_grad_v_sampled);
  TrilinearPoint<float> tp;
  for (int64_t bng = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / kWarpSize; bng < p.B * p.Nk * p.G;
       bng += static_cast<int64_t>(gridDim.x) * kWarps) {
    const int64_t g = bng % p.G, n = (bng / p.G) % p.Nk, b = bng / (p.G * p.Nk);
    const float* xyt = static_cast<const float*>(p.points) + bng * 3;
    trilinear_point(xyt[0], xyt[1], xyt[2], p.T, p.H, p.W, tp);
    float grad[3] = {0.f, 0.f, 0.f};
    for (int64_t h = g * per_group; h < (g + 1) * per_group; ++h) {
      const int64_t sampled = ((b * p.heads + h) * p.Nk + n) * p.d;
      for (int64_t c = lane; c < p.d; c += kWarpSize) {
        const float dk = to_float(grad_k_sampled[sampled + c]), dv = to_float(grad_v_sampled[sampled + c]);
        for (int corner = 0; corner < 8; ++corner) {
          if (!tp.valid[corner]) continue;
          const int64_t offset = ((b * voxels + tp.voxel[corner]) * p.heads + h) * p.d + c;
          const float dot = dk * to_float(k[offset]) + dv * to_float(v[offset]);
          for (int axis = 0; axis < 3; ++axis) grad[axis] += tp.dweight[corner][axis] * dot;
        }
      }
    }
    for (int axis = 0; axis < 3; ++axis) {
      const float total = warp_sum(grad[axis]);
      if (lane == 0) static_cast<float*>(p.grad_points)[bng * 3 + axis] = total;
    }
  }
}

}  // namespace lc4::LC4_CUDA_NS
