// Copies of row tiles from global into shared memory, 16 bytes per load where the rows allow it.
// An element-by-element copy of a 16-bit tile issues a 2-byte load, and 64-bit index arithmetic,
// per element: at the SD1.5 head dims (40, 80, 160: multiples of 8) that is 8x the loads needed.
#pragma once

#include <cstring>

#include "cuda/portability.cuh"

namespace lc4::LC4_CUDA_NS {

// *dst = *src for 16 bytes; both 16-byte aligned.
__device__ __forceinline__ void copy16(void* dst, const void* src) {
#if LC4_EMULATED
  std::memcpy(dst, src, 16);
#else
  *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
#endif
}

__device__ __forceinline__ void zero16(void* dst) {
#if LC4_EMULATED
  std::memset(dst, 0, 16);
#else
  *reinterpret_cast<uint4*>(dst) = make_uint4(0u, 0u, 0u, 0u);
#endif
}

// tile[r * kStride + c] = src[(first + r) * row_stride + c] for first + r < rows and c < d, else 0,
// for r < kRows and c < DW (d <= DW). Every thread of the block takes part (no barrier inside).
template <typename T, int kRows, int DW, int kStride, int kThreads>
__device__ __forceinline__ void load_row_tile(const T* src, int64_t rows, int64_t first, int64_t row_stride,
                                              int64_t d, T* tile) {
  constexpr int kVec = 16 / static_cast<int>(sizeof(T));
  if constexpr (DW % kVec == 0 && kStride % kVec == 0) {
    const bool aligned = d % kVec == 0 && row_stride % kVec == 0 && reinterpret_cast<uintptr_t>(src) % 16 == 0 &&
                         reinterpret_cast<uintptr_t>(tile) % 16 == 0;  // uniform over the block
    if (aligned) {
      constexpr int kChunks = DW / kVec;
      for (int idx = threadIdx.x; idx < kRows * kChunks; idx += kThreads) {
        const int r = idx / kChunks, c = idx % kChunks * kVec;
        const int64_t row = first + r;
        T* const dst = tile + r * kStride + c;
        if (row < rows && c < d) {
          copy16(dst, src + row * row_stride + c);
        } else {
          zero16(dst);
        }
      }
      return;
    }
  }
  for (int idx = threadIdx.x; idx < kRows * DW; idx += kThreads) {
    const int r = idx / DW, c = idx % DW;
    const int64_t row = first + r;
    tile[r * kStride + c] = (row < rows && c < d) ? src[row * row_stride + c] : from_float<T>(0.f);
  }
}

}  // namespace lc4::LC4_CUDA_NS
