// trilinear_sample on the CPU: forward gathers 8 channel vectors per point; backward scatters
// into grad_value in a fixed order (tasks own disjoint (batch, group, channel-chunk) slices, so
// no atomics and the same bits on every run) and reduces grad_points over channels.
// Half-precision values are read as stored and summed in float (see cpu_kernels.h).
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "common/trilinear_math.h"
#include "cpu/corner_rows.h"
#include "cpu/cpu_kernels.h"
#include "cpu/float_rows.h"

namespace lc4::cpu {
namespace {
constexpr int64_t kChannelChunk = 64;
}

template <typename scalar_t>
void trilinear_sample_forward(const SampleParams& p) {
  using acc = acc_t<scalar_t>;
  constexpr bool in_place = std::is_same_v<scalar_t, acc>;
  const auto* value = static_cast<const scalar_t*>(p.value);
  const auto* points = static_cast<const acc*>(p.points);
  auto* out = static_cast<scalar_t*>(p.out);
  const int64_t voxels = p.T * p.H * p.W;
  at::parallel_for(0, p.B * p.P, 16, [&](int64_t begin, int64_t end) {
    TrilinearPoint<acc> tp;
    const std::vector<scalar_t> zeros(p.C, scalar_t(0));
    std::vector<acc> sum(in_place ? 0 : p.C);
    for (int64_t bp = begin; bp < end; ++bp) {
      const int64_t b = bp / p.P;
      for (int64_t g = 0; g < p.G; ++g) {
        const acc* xyt = points + (bp * p.G + g) * 3;
        trilinear_point(xyt[0], xyt[1], xyt[2], p.T, p.H, p.W, tp);
        scalar_t* o = out + (bp * p.G + g) * p.C;
        const auto rows = corner_rows(tp, value + (b * voxels * p.G + g) * p.C, p.G * p.C, zeros.data());
        if constexpr (in_place) {
          weighted_corner_sum(rows, p.C, o);
        } else {
          weighted_corner_sum(rows, p.C, sum.data());
          convert_row(sum.data(), p.C, o);
        }
      }
    }
  });
}

template <typename scalar_t>
void trilinear_sample_backward(const SampleParams& p) {
  using acc = acc_t<scalar_t>;
  const auto* value = static_cast<const scalar_t*>(p.value);
  const auto* points = static_cast<const acc*>(p.points);
  const auto* grad_out = static_cast<const scalar_t*>(p.grad_out);
  auto* grad_value = static_cast<acc*>(p.grad_value);
  auto* grad_points = static_cast<acc*>(p.grad_points);
  const int64_t voxels = p.T * p.H * p.W;
  const int64_t chunks = (p.C + kChannelChunk - 1) / kChannelChunk;

  at::parallel_for(0, p.B * p.G * chunks, 1, [&](int64_t begin, int64_t end) {
    TrilinearPoint<acc> tp;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t chunk = task % chunks;
      const int64_t g = (task / chunks) % p.G;
      const int64_t b = task / (chunks * p.G);
      const int64_t c0 = chunk * kChannelChunk, c1 = std::min(p.C, c0 + kChannelChunk);
      for (int64_t i = 0; i < p.P; ++i) {
        const int64_t bpg = (b * p.P + i) * p.G + g;
        const acc* xyt = points + bpg * 3;
        trilinear_point(xyt[0], xyt[1], xyt[2], p.T, p.H, p.W, tp);
        const scalar_t* go = grad_out + bpg * p.C;
        for (int corner = 0; corner < 8; ++corner) {
          if (!tp.valid[corner]) continue;
          const acc w = tp.weight[corner];
          acc* dst = grad_value + ((b * voxels + tp.voxel[corner]) * p.G + g) * p.C;
          add_scaled_row(w, go + c0, c1 - c0, dst + c0);
        }
      }
    }
  });

  at::parallel_for(0, p.B * p.P, 16, [&](int64_t begin, int64_t end) {
    TrilinearPoint<acc> tp;
    for (int64_t bp = begin; bp < end; ++bp) {
      const int64_t b = bp / p.P;
      for (int64_t g = 0; g < p.G; ++g) {
        const int64_t bpg = bp * p.G + g;
        const acc* xyt = points + bpg * 3;
        trilinear_point(xyt[0], xyt[1], xyt[2], p.T, p.H, p.W, tp);
        const scalar_t* go = grad_out + bpg * p.C;
        acc grad[3] = {0, 0, 0};
        for (int corner = 0; corner < 8; ++corner) {
          if (!tp.valid[corner]) continue;
          const scalar_t* src = value + ((b * voxels + tp.voxel[corner]) * p.G + g) * p.C;
          const acc dot = dot_row<acc>(go, src, p.C);
          for (int axis = 0; axis < 3; ++axis) grad[axis] += tp.dweight[corner][axis] * dot;
        }
        for (int axis = 0; axis < 3; ++axis) grad_points[bpg * 3 + axis] = grad[axis];
      }
    }
  });
}

#define LC4_INSTANTIATE(T)                                          \
  template void trilinear_sample_forward<T>(const SampleParams&); \
  template void trilinear_sample_backward<T>(const SampleParams&);
LC4_INSTANTIATE(float)
LC4_INSTANTIATE(double)
LC4_INSTANTIATE(float16_t)
LC4_INSTANTIATE(c10::BFloat16)
#undef LC4_INSTANTIATE

}  // namespace lc4::cpu
