// Fused CPU kernels of the two lc4 ops (float and double). Pointers and sizes come in the
// plain params structs of common/params.h; the torch glue allocates and checks.
#pragma once

#include "common/params.h"

namespace lc4::cpu {

template <typename scalar_t>
void trilinear_sample_forward(const SampleParams& p);
template <typename scalar_t>
void trilinear_sample_backward(const SampleParams& p);

template <typename scalar_t>
void tda_attention_forward(const AttentionParams& p);
template <typename scalar_t>
void tda_attention_backward(const AttentionParams& p);

}  // namespace lc4::cpu
