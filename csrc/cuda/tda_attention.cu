// Launchers of tda_attention: dtype dispatch onto the per-dtype instantiations.
#include "cuda/launchers.h"
#include "cuda/portability.cuh"
#include "cuda/tda_attention_backward.cuh"

namespace lc4::LC4_CUDA_NS {

template <typename T>
void attention_forward_for(const AttentionParams& p, cudaStream_t stream);
template <typename T>
void attention_backward_for(const AttentionParams& p, const AttentionScratch& s, cudaStream_t stream);

void tda_attention_forward(const AttentionParams& p, ScalarKind kind, cudaStream_t stream) {
  if (p.B == 0 || p.Nq == 0 || p.heads == 0) return;
  switch (kind) {
    case ScalarKind::f32: return attention_forward_for<float>(p, stream);
    case ScalarKind::f16: return attention_forward_for<__half>(p, stream);
    case ScalarKind::bf16: return attention_forward_for<__nv_bfloat16>(p, stream);
  }
}

void tda_attention_backward(const AttentionParams& p, const AttentionScratch& s, ScalarKind kind, cudaStream_t stream) {
  if (p.B == 0 || p.heads == 0) return;
  switch (kind) {
    case ScalarKind::f32: return attention_backward_for<float>(p, s, stream);
    case ScalarKind::f16: return attention_backward_for<__half>(p, s, stream);
    case ScalarKind::bf16: return attention_backward_for<__nv_bfloat16>(p, s, stream);
  }
}

void tda_attention_corner_table(const AttentionParams& p, int64_t* keys, float* weights, cudaStream_t stream) {
  if (p.B * p.Nk * p.G == 0) return;
  launch(attention_corner_table_kernel, grid_for(p.B * p.Nk * p.G, kAttentionThreads), dim3(kAttentionThreads), stream,
         p, keys, weights);
}

}  // namespace lc4::LC4_CUDA_NS
