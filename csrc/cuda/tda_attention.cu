// Launchers of tda_attention: dtype dispatch onto the per-dtype instantiations, and the corner
// table of the segment scatter (dtype-independent, so built once here).
#include "cuda/launchers.h"
#include "cuda/portability.cuh"
#include "cuda/tda_attention_forward.cuh"

namespace lc4::LC4_CUDA_NS {

template <typename T>
void attention_forward_for(const AttentionParams& p, cudaStream_t stream);
template <typename T>
void attention_backward_sampled_for(const AttentionParams& p, const AttentionScratch& s, cudaStream_t stream);
template <typename T>
void attention_backward_scatter_for(const AttentionParams& p, const AttentionScratch& s, cudaStream_t stream);

void tda_attention_forward(const AttentionParams& p, ScalarKind kind, cudaStream_t stream) {
  if (p.B == 0 || p.Nq == 0 || p.heads == 0) return;
  with_element_type(kind, [&](auto t) { attention_forward_for<decltype(t)>(p, stream); });
}

void tda_attention_backward_sampled(const AttentionParams& p, const AttentionScratch& s, ScalarKind kind,
                                    cudaStream_t stream) {
  if (p.B == 0 || p.heads == 0) return;
  with_element_type(kind, [&](auto t) { attention_backward_sampled_for<decltype(t)>(p, s, stream); });
}

void tda_attention_backward_scatter(const AttentionParams& p, const AttentionScratch& s, ScalarKind kind,
                                    cudaStream_t stream) {
  if (p.B == 0 || p.heads == 0) return;
  with_element_type(kind, [&](auto t) { attention_backward_scatter_for<decltype(t)>(p, s, stream); });
}

// The corner table of the segment scatter (launchers.h, AttentionScratch): one thread per
// (batch, key, group) writes its 8 entries.
__global__ void __launch_bounds__(kAttentionThreads)
attention_corner_table_kernel(const AttentionParams p, int64_t* keys,
                                                                                   float* weights) {
  const int64_t voxels = p.T * p.H * p.W, nothing = p.B * p.G * voxels;
  TrilinearPoint<float> tp;
  for (int64_t bng = static_cast<int64_t>(blockIdx.x) * kAttentionThreads + threadIdx.x; bng < p.B * p.Nk * p.G;
       bng += static_cast<int64_t>(gridDim.x) * kAttentionThreads) {
    const int64_t g = bng % p.G, b = bng / (p.G * p.Nk);
    const float* xyt = static_cast<const float*>(p.points) + bng * 3;
    trilinear_point(xyt[0], xyt[1], xyt[2], p.T, p.H, p.W, tp);
    for (int corner = 0; corner < 8; ++corner) {
      keys[bng * 8 + corner] = tp.valid[corner] ? (b * p.G + g) * voxels + tp.voxel[corner] : nothing;
      weights[bng * 8 + corner] = tp.weight[corner];
    }
  }
}

void tda_attention_corner_table(const AttentionParams& p, int64_t* keys, float* weights, cudaStream_t stream) {
  if (p.B * p.Nk * p.G == 0) return;
  launch(attention_corner_table_kernel, grid_for(p.B * p.Nk * p.G, kAttentionThreads), dim3(kAttentionThreads), stream,
         p, keys, weights);
}

}  // namespace lc4::LC4_CUDA_NS
