// Fused CPU kernels of the two lc4 ops. Pointers and sizes come in the plain params structs of
// common/params.h; the torch glue allocates and checks.
//
// scalar_t is the inputs' storage type: float, double, or float16_t / c10::BFloat16, which are
// read and written as stored and computed in float (acc_t). Everything the kernels keep besides
// the inputs and outputs (sampled keys and values, partial sums, the log-sum-exp, coordinates
// and their gradients, and the zeroed grad_value / grad_k / grad_v they scatter into) is acc_t;
// bfloat16 attention on the CPU's matrix units also keeps the sampled keys and values, and the
// tiles it multiplies, rounded to bfloat16 (bf16_attention_tiles.h).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <type_traits>

#include "common/params.h"

namespace lc4::cpu {

template <typename scalar_t>
using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// float16 as the kernels store it: the compiler's _Float16 where it has one. GCC converts it one
// element at a time (with AVX512-FP16 on, as on a -march=native build on a Sapphire Rapids, or
// without), so the loops that read or write float16 rows convert a vector at a time with F16C
// instead (float_rows.h): trilinear_sample's float16 forward at 1024 points x 8 groups x 40
// channels of an 8x32x32 map took 2.05 ms that way, 0.35 ms this way (float32 0.37 ms).
// (GCC before 13 defines __FLT16_MAX__ on aarch64 but has _Float16 there in C alone, not in C++.)
#if defined(__FLT16_MAX__) && (defined(__clang__) || __GNUC__ >= 13 || defined(__x86_64__) || defined(__i386__))
using float16_t = _Float16;
#else
using float16_t = c10::Half;
#endif

template <typename scalar_t>
void trilinear_sample_forward(const SampleParams& p);
template <typename scalar_t>
void trilinear_sample_backward(const SampleParams& p);

template <typename scalar_t>
void tda_attention_forward(const AttentionParams& p);
template <typename scalar_t>
void tda_attention_backward(const AttentionParams& p);

}  // namespace lc4::cpu
