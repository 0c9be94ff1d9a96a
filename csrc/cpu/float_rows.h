// Rows of the kernels' storage types read and written as float: the loops where half-precision
// inputs meet float sums. float and double rows the compiler vectorises on its own; bfloat16 and
// float16 rows go through simd::load / simd::store (vec_math.h), since GCC converts float16 one
// element at a time.
#pragma once

#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "cpu/bf16_matrix_tiles.h"
#include "cpu/cpu_kernels.h"
#include "cpu/vec_math.h"

namespace lc4::cpu {

template <typename T>
constexpr bool kHalfVectorRows = std::is_same_v<T, c10::BFloat16>
#if LC4_SIMD_FLOAT16
                                 || std::is_same_v<T, _Float16>
#endif
    ;

template <typename T>
auto as_simd_pointer(const T* p) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    return reinterpret_cast<const uint16_t*>(p);
  } else {
    return p;
  }
}

// Elements c .. c + width of a float or half-precision row as a float vector (width <= kLanes; the
// lanes past it are zero).
template <typename T>
simd::vfloat load_as_float(const T* p, int width) {
  return width == simd::kLanes ? simd::load(as_simd_pointer(p)) : simd::load_first(as_simd_pointer(p), width);
}
// ... and stored back from one, float or float16 (bfloat16 rows are rounded by round_to_bf16).
template <typename T>
void store_from_float(T* p, simd::vfloat v, int width) {
  if (width == simd::kLanes) {
    simd::store(p, v);
  } else {
    simd::store_first(p, v, width);
  }
}
inline int lanes_from(int64_t c, int64_t n) { return static_cast<int>(std::min<int64_t>(simd::kLanes, n - c)); }

// Whether a loop reading rows of T (and U) into sums of A takes the explicit vector path.
template <typename A, typename T, typename U = T>
constexpr bool kVectorPath = std::is_same_v<A, float> && (kHalfVectorRows<T> || kHalfVectorRows<U>) &&
                             (kHalfVectorRows<T> || std::is_same_v<T, float>) &&
                             (kHalfVectorRows<U> || std::is_same_v<U, float>);

// out[c] = in[c], either way between float and the storage types (rounded to nearest even).
template <typename From, typename To>
void convert_row(const From* in, int64_t n, To* out) {
  if constexpr (std::is_same_v<From, float> && std::is_same_v<To, c10::BFloat16>) {
    round_to_bf16(in, n, out);  // c10::BFloat16's conversion is scalar
  } else if constexpr (kVectorPath<float, From, To>) {
    for (int64_t c = 0; c < n; c += simd::kLanes) {
      const int width = lanes_from(c, n);
      store_from_float(out + c, load_as_float(in + c, width), width);
    }
  } else {
#pragma omp simd
    for (int64_t c = 0; c < n; ++c) out[c] = static_cast<To>(in[c]);
  }
}

// y[c] += w * x[c]
template <typename T, typename A>
void add_scaled_row(A w, const T* x, int64_t n, A* y) {
  if constexpr (kVectorPath<A, T>) {
    for (int64_t c = 0; c < n; c += simd::kLanes) {
      const int width = lanes_from(c, n);
      store_from_float(y + c, load_as_float(y + c, width) + w * load_as_float(x + c, width), width);
    }
  } else {
#pragma omp simd
    for (int64_t c = 0; c < n; ++c) y[c] += w * static_cast<A>(x[c]);
  }
}

// sum over c of x[c] * y[c], in the accumulation type.
template <typename A, typename T, typename U>
A dot_row(const T* x, const U* y, int64_t n) {
  A dot = 0;
  if constexpr (kVectorPath<A, T, U>) {
    simd::vfloat sum = simd::splat(0.0f);
    for (int64_t c = 0; c < n; c += simd::kLanes) {
      const int width = lanes_from(c, n);
      sum += load_as_float(x + c, width) * load_as_float(y + c, width);
    }
    for (int lane = 0; lane < simd::kLanes; ++lane) dot += sum[lane];
  } else {
#pragma omp simd reduction(+ : dot)
    for (int64_t c = 0; c < n; ++c) dot += static_cast<A>(x[c]) * static_cast<A>(y[c]);
  }
  return dot;
}

}  // namespace lc4::cpu
