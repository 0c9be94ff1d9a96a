// Copies of row tiles from global into shared memory, 16 bytes per load where the rows allow it.
// An element-by-element copy of a 16-bit tile issues a 2-byte load, and 64-bit index arithmetic,
// per element: at the SD1.5 head dims (40, 80, 160: multiples of 8) that is 8x the loads needed.
#pragma once

#include <cstring>

#include "cuda/portability.cuh"

namespace lc4::LC4_CUDA_NS {

// 16 bytes held in registers.
struct alignas(16) Chunk16 {
  uint32_t word[4];
};

__device__ __forceinline__ Chunk16 load16(const void* src) {
  Chunk16 chunk;
#if LC4_EMULATED
  std::memcpy(&chunk, src, 16);
#else
  const uint4 value = *reinterpret_cast<const uint4*>(src);
  chunk.word[0] = value.x, chunk.word[1] = value.y, chunk.word[2] = value.z, chunk.word[3] = value.w;
#endif
  return chunk;
}

__device__ __forceinline__ void store16(void* dst, const Chunk16& chunk) {
#if LC4_EMULATED
  std::memcpy(dst, &chunk, 16);
#else
  *reinterpret_cast<uint4*>(dst) = make_uint4(chunk.word[0], chunk.word[1], chunk.word[2], chunk.word[3]);
#endif
}

// *dst = *src for 16 bytes; both 16-byte aligned.
__device__ __forceinline__ void copy16(void* dst, const void* src) { store16(dst, load16(src)); }

__device__ __forceinline__ void zero16(void* dst) { store16(dst, Chunk16{}); }

// Whether a tile's rows can be copied 16 bytes at a time: the padded width and the tile's stride
// are whole chunks, and so are d, the row stride and both pointers' alignment (uniform over the block).
template <typename T, int DW, int kStride>
__device__ __forceinline__ bool rows_in_16_byte_chunks(const T* src, int64_t row_stride, int64_t d, const T* tile) {
  constexpr int kVec = 16 / static_cast<int>(sizeof(T));
  return DW % kVec == 0 && kStride % kVec == 0 && d % kVec == 0 && row_stride % kVec == 0 &&
         reinterpret_cast<uintptr_t>(src) % 16 == 0 && reinterpret_cast<uintptr_t>(tile) % 16 == 0;
}

// tile[r * kStride + c] = src[(first + r) * row_stride + c] for first + r < rows and c < d, else 0,
// for r < kRows and c < DW (d <= DW). Every thread of the block takes part (no barrier inside).
template <typename T, int kRows, int DW, int kStride, int kThreads>
__device__ __forceinline__ void load_row_tile(const T* src, int64_t rows, int64_t first, int64_t row_stride,
                                              int64_t d, T* tile) {
  constexpr int kVec = 16 / static_cast<int>(sizeof(T));
  if constexpr (DW % kVec == 0 && kStride % kVec == 0) {
    if (rows_in_16_byte_chunks<T, DW, kStride>(src, row_stride, d, tile)) {
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

// The widest padded head dim whose tile kernels load the next tile ahead: at 96 and 128 the
// chunks held over the products took the register forward to 255 registers and spills (sm_90).
constexpr int kPrefetchMaxWidth = 80;

// The tile of load_row_tile in two steps: fetch() loads this thread's 16-byte chunks into
// registers, store() writes them to the shared tile. Fetching the next tile before the current
// tile's products and storing it after them lets the loads' latency pass under the products,
// with no second shared tile and no cp.async (which V100 lacks): the pre-Ampere form of double
// buffering. Only the chunks live across the products: store() takes the tile's arguments again,
// and where the rows do not allow 16-byte loads (d or the row stride not a multiple of 8 half
// elements, or a misaligned pointer) it copies them element by element instead.
template <typename T, int kRows, int DW, int kStride, int kThreads>
struct RowTileFetch {
  static constexpr int kVec = 16 / static_cast<int>(sizeof(T));
  static constexpr bool kVectorizable = DW % kVec == 0 && kStride % kVec == 0;
  static constexpr int kChunksPerRow = kVectorizable ? DW / kVec : 1;
  static constexpr int kPerThread = (kRows * kChunksPerRow + kThreads - 1) / kThreads;

  Chunk16 chunk[kPerThread] = {};  // zeroed only for -Wmaybe-uninitialized: store() reads what fetch() wrote

  __device__ __forceinline__ void fetch(const T* src, int64_t rows, int64_t first, int64_t row_stride, int64_t d,
                                        const T* tile) {
    if (!rows_in_16_byte_chunks<T, DW, kStride>(src, row_stride, d, tile)) return;
#pragma unroll
    for (int u = 0; u < kPerThread; ++u) {
      const int idx = threadIdx.x + u * kThreads;
      const int r = idx / kChunksPerRow, c = idx % kChunksPerRow * kVec;
      const int64_t row = first + r;
      if (idx < kRows * kChunksPerRow && row < rows && c < d) {
        chunk[u] = load16(src + row * row_stride + c);
      } else {
        chunk[u] = Chunk16{};
      }
    }
  }

  // The same arguments as the fetch() of this tile.
  __device__ __forceinline__ void store(const T* src, int64_t rows, int64_t first, int64_t row_stride, int64_t d,
                                        T* tile) const {
    if (!rows_in_16_byte_chunks<T, DW, kStride>(src, row_stride, d, tile)) {
      load_row_tile<T, kRows, DW, kStride, kThreads>(src, rows, first, row_stride, d, tile);
      return;
    }
#pragma unroll
    for (int u = 0; u < kPerThread; ++u) {
      const int idx = threadIdx.x + u * kThreads;
      if (idx < kRows * kChunksPerRow)
        store16(tile + idx / kChunksPerRow * kStride + idx % kChunksPerRow * kVec, chunk[u]);
    }
  }
};

}  // namespace lc4::LC4_CUDA_NS
