// trilinear_sample on CUDA. Forward and the points gradient: one warp per (batch, point, group),
// lanes over channels. The value gradient is scattered with atomics, or, in deterministic mode,
// by one thread per (batch, group, channel) walking the points in order (no atomics).
#include "common/trilinear_math.h"
#include "cuda/launchers.h"
#include "cuda/portability.cuh"

namespace lc4::LC4_CUDA_NS {
namespace {

constexpr int kThreads = 128;
constexpr int kWarpsPerBlock = kThreads / kWarpSize;
constexpr int64_t kMaxBlocks = 65535;

dim3 warp_grid(int64_t warps) {
  return dim3(static_cast<unsigned>(std::min(kMaxBlocks, ceil_div(warps, kWarpsPerBlock))));
}
dim3 thread_grid(int64_t threads) {
  return dim3(static_cast<unsigned>(std::min(kMaxBlocks, ceil_div(threads, kThreads))));
}

__device__ __forceinline__ int64_t first_warp() {
  return static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarpSize;
}
__device__ __forceinline__ int64_t warp_stride() { return static_cast<int64_t>(gridDim.x) * kWarpsPerBlock; }

template <typename T>
__global__ void __launch_bounds__(kThreads) sample_forward_kernel(const SampleParams p) {
  const T* value = static_cast<const T*>(p.value);
  const float* points = static_cast<const float*>(p.points);
  T* out = static_cast<T*>(p.out);
  const int64_t voxels = p.T * p.H * p.W, lane = threadIdx.x % kWarpSize;
  TrilinearPoint<float> tp;
  for (int64_t bpg = first_warp(); bpg < p.B * p.P * p.G; bpg += warp_stride()) {
    const int64_t g = bpg % p.G, b = bpg / (p.P * p.G);
    trilinear_point(points[bpg * 3], points[bpg * 3 + 1], points[bpg * 3 + 2], p.T, p.H, p.W, tp);
    for (int64_t c = lane; c < p.C; c += kWarpSize) {
      float sum = 0.f;
#pragma unroll
      for (int corner = 0; corner < 8; ++corner) {
        if (tp.valid[corner])
          sum += tp.weight[corner] * to_float(value[((b * voxels + tp.voxel[corner]) * p.G + g) * p.C + c]);
      }
      out[bpg * p.C + c] = from_float<T>(sum);
    }
  }
}

// grad_points for every point, and (when scatter) grad_value through atomics.
template <typename T, bool kScatter>
__global__ void __launch_bounds__(kThreads) sample_backward_points_kernel(const SampleParams p) {
  const T* value = static_cast<const T*>(p.value);
  const T* grad_out = static_cast<const T*>(p.grad_out);
  const float* points = static_cast<const float*>(p.points);
  float* grad_value = static_cast<float*>(p.grad_value);
  float* grad_points = static_cast<float*>(p.grad_points);
  const int64_t voxels = p.T * p.H * p.W, lane = threadIdx.x % kWarpSize;
  TrilinearPoint<float> tp;
  for (int64_t bpg = first_warp(); bpg < p.B * p.P * p.G; bpg += warp_stride()) {
    const int64_t g = bpg % p.G, b = bpg / (p.P * p.G);
    trilinear_point(points[bpg * 3], points[bpg * 3 + 1], points[bpg * 3 + 2], p.T, p.H, p.W, tp);
    float grad[3] = {0.f, 0.f, 0.f};
    for (int64_t c = lane; c < p.C; c += kWarpSize) {
      const float go = to_float(grad_out[bpg * p.C + c]);
#pragma unroll
      for (int corner = 0; corner < 8; ++corner) {
        if (!tp.valid[corner]) continue;
        const int64_t offset = ((b * voxels + tp.voxel[corner]) * p.G + g) * p.C + c;
        const float dot = go * to_float(value[offset]);
        for (int axis = 0; axis < 3; ++axis) grad[axis] += tp.dweight[corner][axis] * dot;
        if (kScatter) atomicAdd(grad_value + offset, tp.weight[corner] * go);
      }
    }
    for (int axis = 0; axis < 3; ++axis) {
      const float total = warp_sum(grad[axis]);
      if (lane == 0) grad_points[bpg * 3 + axis] = total;
    }
  }
}

// Deterministic grad_value: one thread owns one (batch, group, channel) and adds the points in order.
template <typename T>
__global__ void __launch_bounds__(kThreads) sample_backward_value_ordered_kernel(const SampleParams p) {
  const T* grad_out = static_cast<const T*>(p.grad_out);
  const float* points = static_cast<const float*>(p.points);
  float* grad_value = static_cast<float*>(p.grad_value);
  const int64_t voxels = p.T * p.H * p.W;
  TrilinearPoint<float> tp;
  for (int64_t bgc = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; bgc < p.B * p.G * p.C;
       bgc += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t c = bgc % p.C, g = (bgc / p.C) % p.G, b = bgc / (p.G * p.C);
    for (int64_t i = 0; i < p.P; ++i) {
      const int64_t bpg = (b * p.P + i) * p.G + g;
      trilinear_point(points[bpg * 3], points[bpg * 3 + 1], points[bpg * 3 + 2], p.T, p.H, p.W, tp);
      const float go = to_float(grad_out[bpg * p.C + c]);
      for (int corner = 0; corner < 8; ++corner) {
        if (tp.valid[corner])
          grad_value[((b * voxels + tp.voxel[corner]) * p.G + g) * p.C + c] += tp.weight[corner] * go;
      }
    }
  }
}

template <typename T>
void forward(const SampleParams& p, cudaStream_t stream) {
  launch(sample_forward_kernel<T>, warp_grid(p.B * p.P * p.G), dim3(kThreads), stream, p);
}

template <typename T>
void backward(const SampleParams& p, bool deterministic, cudaStream_t stream) {
  const dim3 grid = warp_grid(p.B * p.P * p.G);
  if (deterministic) {
    launch(sample_backward_points_kernel<T, false>, grid, dim3(kThreads), stream, p);
    // A zero-sized grid is a launch error on the device; without channels dvalue is empty.
    if (p.C > 0)
      launch(sample_backward_value_ordered_kernel<T>, thread_grid(p.B * p.G * p.C), dim3(kThreads), stream, p);
  } else {
    launch(sample_backward_points_kernel<T, true>, grid, dim3(kThreads), stream, p);
  }
}

}  // namespace

void trilinear_sample_forward(const SampleParams& p, ScalarKind kind, cudaStream_t stream) {
  if (p.B * p.P * p.G * p.C == 0) return;
  with_element_type(kind, [&](auto t) { forward<decltype(t)>(p, stream); });
}

void trilinear_sample_backward(const SampleParams& p, ScalarKind kind, bool deterministic, cudaStream_t stream) {
  if (p.B * p.P * p.G == 0) return;
  with_element_type(kind, [&](auto t) { backward<decltype(t)>(p, deterministic, stream); });
}

}  // namespace lc4::LC4_CUDA_NS
