// The one header every kernel in csrc/cuda includes instead of the CUDA headers. Under nvcc it
// is plain CUDA; under a host compiler it maps the same kernel source onto the host emulation
// of emulation.h (the test-only `cuda_emu` backend). Kernels must keep to what both support:
// blocks of whole warps, full-warp masks, WMMA (not inline PTX), static __shared__ storage,
// and no return before a __syncthreads.
#pragma once

#include <algorithm>
#include <cstdint>

#include "cuda/launchers.h"

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>
#define LC4_CUDA_NS cuda
#define LC4_EMULATED 0
namespace lc4::cuda {
namespace wmma = nvcuda::wmma;

template <typename... KernelArgs, typename... Args>
inline void launch(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, cudaStream_t stream, Args&&... args) {
  kernel<<<grid, block, 0, stream>>>(static_cast<KernelArgs>(args)...);
}

// Streaming multiprocessors of the current device (to size grids that must fill it).
inline int multiprocessor_count() {
  int device = 0, count = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    return 1;
  }
  return count > 0 ? count : 1;
}
}  // namespace lc4::cuda
#else
#include "cuda/emulation.h"
#define LC4_CUDA_NS cuda_emu
#define LC4_EMULATED 1
namespace lc4::cuda_emu {
using namespace lc4::emu;  // dim3, threadIdx, __half, __syncthreads, atomicAdd, launch, wmma, ...
inline int multiprocessor_count() { return 1; }  // blocks run one after another
}  // namespace lc4::cuda_emu
#endif

// The bf16 tensor-core fragments exist from sm_80 on; the host emulation has them everywhere.
#if LC4_EMULATED || (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800) || !defined(__CUDA_ARCH__)
#define LC4_HAS_BF16_WMMA 1
#else
#define LC4_HAS_BF16_WMMA 0
#endif

namespace lc4::LC4_CUDA_NS {

constexpr int kWarpSize = 32;

// Calls f with a value of the element type ScalarKind names: the launchers' dtype dispatch.
template <typename F>
void with_element_type(ScalarKind kind, F&& f) {
  switch (kind) {
    case ScalarKind::f32: return f(float{});
    case ScalarKind::f16: return f(__half{});
    case ScalarKind::bf16: return f(__nv_bfloat16{});
  }
}

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
  return x;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace lc4::LC4_CUDA_NS
