// Staging of sampled keys/values (k~, v~) for the attention kernels: the 8 corners of each key
// point of a block (element offsets into k/v for this batch and head, or -1 outside), then a
// (keys x D) float tile sampled from k or v through them. Padding keys and columns are zero.
#pragma once

#include <type_traits>

#include "common/params.h"
#include "common/trilinear_math.h"
#include "cuda/portability.cuh"
#include "cuda/tile_copy.cuh"

namespace lc4::LC4_CUDA_NS {

struct KeyCorners {
  int64_t offset[8];
  float weight[8];
};

// Threads 0..kKeys-1 fill corners[] for keys j0 .. j0 + kKeys - 1 of (b, h).
template <int kKeys>
__device__ __forceinline__ void load_key_corners(const AttentionParams& p, int64_t b, int64_t h, int64_t j0,
                                                 KeyCorners* corners) {
  const int j = threadIdx.x;
  if (j >= kKeys) return;
  const int64_t key = j0 + j, g = h / (p.heads / p.G), voxels = p.T * p.H * p.W;
  KeyCorners& kc = corners[j];
  if (key >= p.Nk) {
    for (int c = 0; c < 8; ++c) kc.offset[c] = -1, kc.weight[c] = 0.f;
    return;
  }
  const float* xyt = static_cast<const float*>(p.points) + ((b * p.Nk + key) * p.G + g) * 3;
  TrilinearPoint<float> tp;
  trilinear_point(xyt[0], xyt[1], xyt[2], p.T, p.H, p.W, tp);
  for (int c = 0; c < 8; ++c) {
    kc.offset[c] = tp.valid[c] ? ((b * voxels + tp.voxel[c]) * p.heads + h) * p.d : -1;
    kc.weight[c] = tp.weight[c];
  }
}

// tile[j * kStride + c] = sum over corners of weight * src[offset + c], for c < d, else 0
// (the tile holds float, or T for the tensor-core kernels).
template <typename T, int kKeys, int D, int kStride, int kThreads, typename TileT = float>
__device__ __forceinline__ void sample_key_tile(const T* src, int64_t d, const KeyCorners* corners, TileT* tile) {
  for (int idx = threadIdx.x; idx < kKeys * D; idx += kThreads) {
    const int j = idx / D, c = idx % D;
    float sum = 0.f;
    if (c < d) {
#pragma unroll
      for (int corner = 0; corner < 8; ++corner) {
        const int64_t offset = corners[j].offset[corner];
        if (offset >= 0) sum += corners[j].weight[corner] * to_float(src[offset + c]);
      }
    }
    tile[j * kStride + c] = from_float<TileT>(sum);
  }
}

// The same tile read from k~ or v~ sampled beforehand (AttentionParams::k_sampled): rows j0 ..
// j0 + kKeys - 1 of (b, h); padding keys and columns are zero.
template <typename T, int kKeys, int D, int kStride, int kThreads, typename TileT = float>
__device__ __forceinline__ void load_sampled_tile(const T* sampled, const AttentionParams& p, int64_t b, int64_t h,
                                                  int64_t j0, TileT* tile) {
  static_assert(std::is_same_v<T, TileT>, "pre-sampled tiles are staged in the inputs' dtype");
  load_row_tile<T, kKeys, D, kStride, kThreads>(sampled + (b * p.Nk * p.heads + h) * p.d, p.Nk, j0, p.heads * p.d,
                                                p.d, tile);
}

// k~ (or v~) tile of keys j0 .. j0 + kKeys - 1: read from the pre-sampled buffer when there is
// one, else sampled from src through the corners that the k~ tile loaded (the branch is uniform
// over the block, so its barrier is reached by every thread).
template <typename T, int kKeys, int D, int kStride, int kThreads, typename TileT = float>
__device__ __forceinline__ void stage_key_tile(const AttentionParams& p, const void* sampled, const void* src,
                                               bool load_corners, int64_t b, int64_t h, int64_t j0,
                                               KeyCorners* corners, TileT* tile) {
  if (sampled != nullptr) {
    load_sampled_tile<T, kKeys, D, kStride, kThreads, TileT>(static_cast<const T*>(sampled), p, b, h, j0, tile);
    return;
  }
  if (load_corners) {
    load_key_corners<kKeys>(p, b, h, j0, corners);
    __syncthreads();
  }
  sample_key_tile<T, kKeys, D, kStride, kThreads, TileT>(static_cast<const T*>(src), p.d, corners, tile);
}

// Sum (or max) over the kLanes consecutive lanes that share one tile row.
template <int kLanes>
__device__ __forceinline__ float row_sum(float x) {
#pragma unroll
  for (int offset = kLanes / 2; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

template <int kLanes>
__device__ __forceinline__ float row_max(float x) {
#pragma unroll
  for (int offset = kLanes / 2; offset > 0; offset /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
  return x;
}

}  // namespace lc4::LC4_CUDA_NS
