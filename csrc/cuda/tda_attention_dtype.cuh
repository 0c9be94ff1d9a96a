// Entry points of the attention kernels for one dtype, over every head-dim bucket of
// head_dims.h. tda_attention_<dtype>.cu instantiates them; tda_attention.cu dispatches on dtype.
#pragma once

#include "cuda/head_dims.h"
#include "cuda/tda_attention_backward.cuh"
#include "cuda/tda_attention_backward_wmma.cuh"
#include "cuda/tda_attention_dkv_registers.cuh"
#include "cuda/tda_attention_dq_wmma.cuh"
#include "cuda/tda_attention_forward.cuh"
#include "cuda/tda_attention_forward_registers.cuh"
#include "cuda/tda_attention_forward_wmma.cuh"

namespace lc4::LC4_CUDA_NS {

// float16 (and bfloat16, which the glue admits on sm_80+ only) take a tensor-core forward: O in
// registers up to d = 128 (one pass, or two), else (or with HalfForward::kShared) O in shared memory.
template <typename T, int D>
void launch_attention_forward(const AttentionParams& p, cudaStream_t stream) {
  const auto heads = static_cast<unsigned>(p.heads), batch = static_cast<unsigned>(p.B);
  if constexpr (std::is_same_v<T, float>) {
    const dim3 grid(static_cast<unsigned>(ceil_div(p.Nq, ForwardTiles<D>::kBlockQ)), heads, batch);
    launch(attention_forward_kernel<T, D>, grid, dim3(kAttentionThreads), stream, p);
  } else if (D <= 128 && p.half_forward != HalfForward::kShared) {
    constexpr int kRegistersD = D <= 128 ? D : 128;  // a valid template argument where the branch is dead
    const dim3 grid(static_cast<unsigned>(ceil_div(p.Nq, RegisterForwardTiles<kRegistersD>::kBlockQ)), heads, batch);
    if (p.half_forward == HalfForward::kTwoPass) {
      launch(attention_forward_registers_kernel<T, kRegistersD, true>, grid, dim3(kAttentionThreads), stream, p);
    } else {
      launch(attention_forward_registers_kernel<T, kRegistersD, false>, grid, dim3(kAttentionThreads), stream, p);
    }
  } else {
    const dim3 grid(static_cast<unsigned>(ceil_div(p.Nq, WmmaForwardTiles<D>::kBlockQ)), heads, batch);
    launch(attention_forward_wmma_kernel<T, D>, grid, dim3(kAttentionThreads), stream, p);
  }
}

// The register dk~/dv~ kernel where it applies (float16/bfloat16 up to d = 80, dq in its own
// kernel, not HalfDkv::kShared); whether it was launched.
template <typename T, int D>
bool launch_register_dkv(const AttentionParams& p, const AttentionScratch& s, bool dq_separate, cudaStream_t stream) {
  if constexpr (D <= kDkvRegistersMaxHeadDim) {
    if (dq_separate && p.half_dkv == HalfDkv::kRegisters) {
      using Tiles = DkvRegisterTiles<D>;
      const auto blocks = ceil_div(p.Nk, Tiles::kBlockK) * dkv_query_splits(p, Tiles::kBlockK, Tiles::kBlockQ);
      const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(p.heads), static_cast<unsigned>(p.B));
      launch(attention_dkv_registers_kernel<T, D>, grid, dim3(kAttentionThreads), stream, p, s);
      return true;
    }
  }
  return false;
}

// The backward's first part: dq, delta and dk~/dv~ (the gradients of the attention over the
// sampled keys). float16 and bfloat16 take a tensor-core dk~/dv~ kernel, and up to d = 128
// (separate_half_dq) the tensor-core dq kernel before it, which also writes delta; otherwise dq
// comes from atomics in the dk~/dv~ kernel, or from the float dq kernel when deterministic. With
// dq separate, up to d = 80 the dk~/dv~ kernel keeps 16 keys per warp in registers (unless
// HalfDkv::kShared). The rest is shared.
template <typename T, int D>
void launch_attention_backward_sampled(const AttentionParams& p, const AttentionScratch& s, cudaStream_t stream) {
  constexpr int kWarps = kAttentionThreads / kWarpSize;
  const dim3 block(kAttentionThreads);
  const auto heads = static_cast<unsigned>(p.heads), batch = static_cast<unsigned>(p.B);
  bool dq_done = false;
  if constexpr (!std::is_same_v<T, float> && D <= kSeparateDqMaxHeadDim) {
    if (separate_half_dq(p) && p.Nq > 0) {  // the glue sampled k~ and v~
      const dim3 grid(static_cast<unsigned>(ceil_div(p.Nq, DqTiles<D>::kBlockQ)), heads, batch);
      launch(attention_dq_wmma_kernel<T, D>, grid, block, stream, p, s);
      dq_done = true;
    }
  }
  if (!dq_done && p.Nq > 0)
    launch(attention_delta_kernel<T>, grid_for(p.B * p.Nq * p.heads, kWarps), block, stream, p, s);
  if constexpr (std::is_same_v<T, float>) {
    constexpr int kBlock = BackwardTiles<D>::kBlock;
    const auto blocks = ceil_div(p.Nk, kBlock) * dkv_query_splits(p, kBlock, kBlock);
    launch(attention_dkv_kernel<T, D>, dim3(static_cast<unsigned>(blocks), heads, batch), block, stream, p, s);
  } else if (!launch_register_dkv<T, D>(p, s, dq_done, stream)) {
    constexpr int kBlock = WmmaBackwardTiles<D>::kBlock;
    const dim3 grid(static_cast<unsigned>(ceil_div(p.Nk, kBlock) * dkv_query_splits(p, kBlock, kBlock)), heads, batch);
    if (dq_done || p.deterministic) {
      launch(attention_dkv_wmma_kernel<T, D, false>, grid, block, stream, p, s);
    } else {
      launch(attention_dkv_wmma_kernel<T, D, true>, grid, block, stream, p, s);
    }
  }
  if (p.deterministic && !dq_done && p.Nq > 0) {
    const dim3 grid(static_cast<unsigned>(ceil_div(p.Nq, BackwardTiles<D>::kBlock)), heads, batch);
    launch(attention_dq_kernel<T, D>, grid, block, stream, p, s);
  }
}

// The second part: dk, dv (dk~ and dv~ scattered through the trilinear weights) and dpoints.
template <typename T>
void attention_backward_scatter_for(const AttentionParams& p, const AttentionScratch& s, cudaStream_t stream) {
  constexpr int kWarps = kAttentionThreads / kWarpSize;
  const dim3 block(kAttentionThreads);
  const auto segments_and_dpoints = [&](auto sampled_grad) {
    using S = decltype(sampled_grad);
    if (scatters_by_segments(p)) {
      launch(attention_scatter_segments_kernel<T, S>, grid_for(p.B * p.Nk * p.G * 8, kWarps), block, stream, p, s);
    } else {
      launch(attention_scatter_atomic_kernel, grid_for(p.B * p.Nk * p.heads, kWarps), block, stream, p, s);
    }
    launch(attention_dpoints_kernel<T, S>, grid_for(p.B * p.Nk * p.G, kWarps), block, stream, p, s);
  };
  if constexpr (std::is_same_v<T, float>) {
    segments_and_dpoints(float{});
  } else if (s.sampled_grads_in_input_dtype) {
    segments_and_dpoints(T{});
  } else {
    segments_and_dpoints(float{});
  }
}

template <typename T>
void attention_forward_for(const AttentionParams& p, cudaStream_t stream) {
  with_head_dim_bucket(p.d, [&](auto bucket) { launch_attention_forward<T, decltype(bucket)::value>(p, stream); });
}

template <typename T>
void attention_backward_sampled_for(const AttentionParams& p, const AttentionScratch& s, cudaStream_t stream) {
  with_head_dim_bucket(p.d, [&](auto bucket) {
    launch_attention_backward_sampled<T, decltype(bucket)::value>(p, s, stream);
  });
}

#define LC4_INSTANTIATE_ATTENTION(T)                                                                      \
  template void attention_forward_for<T>(const AttentionParams&, cudaStream_t);                          \
  template void attention_backward_sampled_for<T>(const AttentionParams&, const AttentionScratch&, cudaStream_t); \
  template void attention_backward_scatter_for<T>(const AttentionParams&, const AttentionScratch&, cudaStream_t);

}  // namespace lc4::LC4_CUDA_NS
