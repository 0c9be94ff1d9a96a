// Entry points of the attention kernels for one dtype, over every head-dim bucket of
// head_dims.h. tda_attention_<dtype>.cu instantiates them; tda_attention.cu dispatches on dtype.
#pragma once

#include "cuda/head_dims.h"
#include "cuda/tda_attention_backward.cuh"
#include "cuda/tda_attention_forward.cuh"

namespace lc4::LC4_CUDA_NS {

template <typename T>
void attention_forward_for(const AttentionParams& p, cudaStream_t stream) {
  with_head_dim_bucket(p.d, [&](auto bucket) { launch_attention_forward<T, decltype(bucket)::value>(p, stream); });
}

template <typename T>
void attention_backward_for(const AttentionParams& p, const AttentionScratch& s, cudaStream_t stream) {
  with_head_dim_bucket(p.d, [&](auto bucket) { launch_attention_backward<T, decltype(bucket)::value>(p, s, stream); });
}

#define LC4_INSTANTIATE_ATTENTION(T)                                                      \
  template void attention_forward_for<T>(const AttentionParams&, cudaStream_t);          \
  template void attention_backward_for<T>(const AttentionParams&, const AttentionScratch&, cudaStream_t);

}  // namespace lc4::LC4_CUDA_NS
