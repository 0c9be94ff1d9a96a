// Row kernels of the CPU softmax, written with GCC/Clang vector extensions so that they compile
// to the widest SIMD the build targets (AVX-512, AVX2, NEON, ...) without intrinsics. Plain loops
// over std::exp stay scalar: libm calls do not vectorise.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

namespace lc4::cpu {

namespace simd {
// One vector is one register of the target: GCC splits a wider generic vector through the stack.
// With 16 lanes on an AVX2 build (an AMD EPYC), the softmax spilled every vector and took 43% of
// the forward's time, against 28% for the tile products.
#if defined(__AVX512F__)
constexpr int kLanes = 16;
#elif defined(__AVX__)
constexpr int kLanes = 8;
#else
constexpr int kLanes = 4;  // SSE, NEON
#endif
typedef float vfloat __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t vint __attribute__((vector_size(kLanes * sizeof(int32_t))));

inline vfloat load(const float* p) {
  vfloat v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void store(float* p, vfloat v) { std::memcpy(p, &v, sizeof(v)); }
inline vfloat splat(float x) { return vfloat{} + x; }

// exp(x) by Cody-Waite reduction and the Cephes polynomial (about 1 ulp); x is clamped to
// [-87.3, 88], so tiny results come out as about 1e-38 instead of 0, which no caller can tell.
inline vfloat exp(vfloat x) {
  const vfloat lo = splat(-87.3f), hi = splat(88.0f);
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  // Adding 1.5 * 2^23 rounds to the nearest integer and leaves it in the low mantissa bits.
  const float magic = 12582912.0f;
  const vfloat shifted = x * 1.44269504088896341f + magic;
  const vfloat n = shifted - magic;
  vfloat r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  vfloat poly = splat(1.9875691500e-4f);
  poly = poly * r + 1.3981999507e-3f;
  poly = poly * r + 8.3334519073e-3f;
  poly = poly * r + 4.1665795894e-2f;
  poly = poly * r + 1.6666665459e-1f;
  poly = poly * r + 5.0000001201e-1f;
  const vfloat y = poly * r * r + r + 1.0f;
  int32_t magic_bits;
  std::memcpy(&magic_bits, &magic, sizeof(magic_bits));
  const vint exponent = ((vint)shifted - magic_bits + 127) << 23;
  return y * (vfloat)exponent;
}

inline float exp(float x) {
  float lanes[kLanes] = {x};
  return simd::exp(load(lanes))[0];
}
}  // namespace simd

// max_j row[j]
inline float row_max_of(const float* row, int64_t n) {
  int64_t j = 0;
  float best = -std::numeric_limits<float>::infinity();
  if (n >= simd::kLanes) {
    simd::vfloat m = simd::load(row);
    for (j = simd::kLanes; j + simd::kLanes <= n; j += simd::kLanes) {
      const simd::vfloat x = simd::load(row + j);
      m = x > m ? x : m;
    }
    for (int lane = 0; lane < simd::kLanes; ++lane) best = std::max(best, m[lane]);
  }
  for (; j < n; ++j) best = std::max(best, row[j]);
  return best;
}
inline double row_max_of(const double* row, int64_t n) {
  double best = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < n; ++j) best = std::max(best, row[j]);
  return best;
}

// row[j] = exp(row[j] * scale - shift); returns sum_j row[j]
inline float exp_rows_and_sum(float* row, int64_t n, float scale, float shift) {
  simd::vfloat sum = simd::splat(0.f);
  int64_t j = 0;
  for (; j + simd::kLanes <= n; j += simd::kLanes) {
    const simd::vfloat e = simd::exp(simd::load(row + j) * scale - shift);
    simd::store(row + j, e);
    sum += e;
  }
  float total = 0.f;
  for (int lane = 0; lane < simd::kLanes; ++lane) total += sum[lane];
  for (; j < n; ++j) {
    row[j] = simd::exp(row[j] * scale - shift);
    total += row[j];
  }
  return total;
}
inline double exp_rows_and_sum(double* row, int64_t n, double scale, double shift) {
  double total = 0;
  for (int64_t j = 0; j < n; ++j) total += (row[j] = std::exp(row[j] * scale - shift));
  return total;
}

// Softmax backward on one row: probs[j] = exp(probs[j] * scale - lse) (probs holds raw scores),
// dscores[j] = probs[j] * (dscores[j] - delta) * scale (dscores holds dO . v~_j).
inline void softmax_backward_row(float* probs, float* dscores, int64_t n, float scale, float lse, float delta) {
  int64_t j = 0;
  for (; j + simd::kLanes <= n; j += simd::kLanes) {
    const simd::vfloat p = simd::exp(simd::load(probs + j) * scale - lse);
    simd::store(probs + j, p);
    simd::store(dscores + j, p * (simd::load(dscores + j) - delta) * scale);
  }
  for (; j < n; ++j) {
    probs[j] = simd::exp(probs[j] * scale - lse);
    dscores[j] = probs[j] * (dscores[j] - delta) * scale;
  }
}
inline void softmax_backward_row(double* probs, double* dscores, int64_t n, double scale, double lse, double delta) {
  for (int64_t j = 0; j < n; ++j) {
    probs[j] = std::exp(probs[j] * scale - lse);
    dscores[j] = probs[j] * (dscores[j] - delta) * scale;
  }
}

}  // namespace lc4::cpu
