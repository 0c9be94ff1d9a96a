// Launchers of the CUDA kernels, as the torch glue sees them: plain params structs and a
// stream, no CUDA or torch header. The same declarations serve the real kernels (namespace
// lc4::cuda, built by nvcc) and their host emulation (lc4::cuda_emu, built by the host compiler).
#pragma once

#include <cstdint>

#include "common/params.h"

struct CUstream_st;
typedef CUstream_st* cudaStream_t;

namespace lc4 {

enum class ScalarKind { f32, f16, bf16 };

// Buffers the glue allocates for the attention backward, contiguous. delta (and k~, v~ in
// AttentionParams) serve tda_attention_backward_sampled only, the corner table
// tda_attention_backward_scatter only: the glue frees the first before it allocates the second
// and dk, dv, and may hand dk~, dv~ to the second in the inputs' dtype.
struct AttentionScratch {
  float* delta = nullptr;         // (B, heads, Nq): rowsum(grad_out * out)
  float* grad_k_sampled = nullptr;  // (B, heads, Nk, d): dk~, zeroed (blocks add their shares)
  float* grad_v_sampled = nullptr;  // (B, heads, Nk, d): dv~, zeroed
  // dk~ and dv~ as tda_attention_backward_scatter reads them (segment scatter, dpoints): the
  // float32 buffers above, or, where sampled_grads_in_input_dtype (float16/bfloat16 with the
  // segment scatter), copies in the inputs' dtype that replace them (the atomic scatter reads
  // grad_k_sampled and grad_v_sampled).
  const void* scatter_grad_k_sampled = nullptr;
  const void* scatter_grad_v_sampled = nullptr;
  bool sampled_grads_in_input_dtype = false;
  // The corner table of the segment scatter (scatters_by_segments): every (batch, key, group,
  // corner) entry e = ((b * Nk + n) * G + g) * 8 + corner has a weight (by e) and a key
  // (b * G + g) * T * H * W + voxel, or B * G * T * H * W where the corner weighs nothing; the
  // glue sorts the keys (stably) and passes them with the entry each sorted position holds.
  const float* corner_weights = nullptr;
  const int64_t* sorted_corner_keys = nullptr;
  const int64_t* sorted_corner_entries = nullptr;
};

// Head dims up to this run on the CUDA kernels; each d runs on the smallest instantiated
// bucket that holds it (see head_dims.h).
constexpr int64_t kCudaMaxHeadDim = 256;

// The float16/bfloat16 backward's own dq kernel (tda_attention_dq_wmma.cuh) covers head dims up to this.
constexpr int64_t kSeparateDqMaxHeadDim = 128;

// Whether a float16/bfloat16 backward with these params takes dq in its own kernel, which reads
// k~ and v~ sampled beforehand: the glue provides them when this holds, and a dq buffer in q's dtype.
inline bool separate_half_dq(const AttentionParams& p) {
  return p.half_dq == HalfDq::kSeparate && p.d <= kSeparateDqMaxHeadDim;
}

// Whether the backward scatters dk~, dv~ by segments of the sorted corner table (then dk, dv are
// in the inputs' dtype, zeroed; else float32 buffers, zeroed, that atomics add into).
inline bool scatters_by_segments(const AttentionParams& p) {
  return p.deterministic || p.scatter == Scatter::kSegments;
}

}  // namespace lc4

// Gradients (grad_value, grad_q, grad_k, grad_v, grad_points) are float32 buffers whatever the
// input dtype, except grad_q where a float16/bfloat16 backward has its separate dq kernel
// (separate_half_dq) and grad_k, grad_v where it scatters by segments (scatters_by_segments):
// those are in the inputs' dtype. grad_value, grad_k, grad_v (and grad_q when dq is added up by
// atomics: not deterministic, and float32 or not separate_half_dq) must be zeroed.
// The attention backward runs in two calls: tda_attention_backward_sampled (dq, dk~, dv~) and
// then tda_attention_backward_scatter (dk, dv, dpoints). tda_attention_corner_table fills the
// corner table's keys (unsorted) and weights.
#define LC4_DECLARE_CUDA_LAUNCHERS(NS)                                                              \
  namespace lc4::NS {                                                                              \
  void trilinear_sample_forward(const SampleParams& p, ScalarKind kind, cudaStream_t stream);      \
  void trilinear_sample_backward(const SampleParams& p, ScalarKind kind, bool deterministic,       \
                                 cudaStream_t stream);                                             \
  void tda_attention_forward(const AttentionParams& p, ScalarKind kind, cudaStream_t stream);      \
  void tda_attention_backward_sampled(const AttentionParams& p, const AttentionScratch& scratch,   \
                                      ScalarKind kind, cudaStream_t stream);                       \
  void tda_attention_backward_scatter(const AttentionParams& p, const AttentionScratch& scratch,   \
                                      ScalarKind kind, cudaStream_t stream);                       \
  void tda_attention_corner_table(const AttentionParams& p, int64_t* keys, float* weights,         \
                                  cudaStream_t stream);                                            \
  /* The launchers above as one type, so that the glue wraps every build the same way. */          \
  struct Launchers {                                                                               \
    static constexpr auto sample_forward = &trilinear_sample_forward;                              \
    static constexpr auto sample_backward = &trilinear_sample_backward;                            \
    static constexpr auto attention_forward = &tda_attention_forward;                              \
    static constexpr auto attention_backward_sampled = &tda_attention_backward_sampled;            \
    static constexpr auto attention_backward_scatter = &tda_attention_backward_scatter;            \
    static constexpr auto attention_corner_table = &tda_attention_corner_table;                    \
  };                                                                                               \
  }

LC4_DECLARE_CUDA_LAUNCHERS(cuda_emu)
#if defined(LC4_WITH_CUDA) || defined(__CUDACC__)
LC4_DECLARE_CUDA_LAUNCHERS(cuda)
#endif
