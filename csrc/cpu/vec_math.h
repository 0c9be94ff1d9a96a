// Row kernels of the CPU softmax, written with GCC/Clang vector extensions so that they compile
// to the widest SIMD the build targets (AVX-512, AVX2, NEON, ...); intrinsics only where AVX-512
// has one instruction for what the generic form spells in several. Plain loops over std::exp stay
// scalar: libm calls do not vectorise.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__AVX512F__) || defined(__F16C__)
#include <immintrin.h>
#endif

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
typedef uint32_t vuint __attribute__((vector_size(kLanes * sizeof(uint32_t))));
typedef uint16_t vuint16 __attribute__((vector_size(kLanes * sizeof(uint16_t))));

inline vfloat load(const float* p) {
  vfloat v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void store(float* p, vfloat v) { std::memcpy(p, &v, sizeof(v)); }
// Stores as bfloat16 bits, rounded to nearest even, with magnitudes below float's normal range
// flushed to (signed) zero: what AVX512-BF16's conversion instruction does, used where the build
// has it, and spelled out elsewhere so that every build rounds alike. The softmax's probabilities
// and their gradients go through these on their way to the bfloat16 tile products; a flushed
// value was below 1.2e-38, where the product could not tell it from zero either.
inline void store(uint16_t* p, vfloat v) {
#if defined(__AVX512BF16__)
  const __m256bh rounded = _mm512_cvtneps_pbh(v);
#else
  vuint bits;
  std::memcpy(&bits, &v, sizeof(bits));
  bits = (bits & 0x7F800000u) == 0 ? bits & 0x80000000u : bits;
  const vuint16 rounded = __builtin_convertvector((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16, vuint16);
#endif
  std::memcpy(p, &rounded, sizeof(rounded));
}
inline void store_one(float* p, float x) { *p = x; }
inline void store_one(uint16_t* p, float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  if ((bits & 0x7F800000u) == 0) bits &= 0x80000000u;
  *p = static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}
inline vfloat splat(float x) { return vfloat{} + x; }

// bfloat16 bits (uint16_t) as float: the upper half of each float's bits. (GCC widens a generic
// 16-lane vector in two halves.)
#if defined(__AVX512F__)
inline vfloat widen_bf16(__m256i bits) {
  return (vfloat)_mm512_maskz_slli_epi32(0xFFFF, _mm512_maskz_cvtepu16_epi32(0xFFFF, bits), 16);
}
inline vfloat load(const uint16_t* p) { return widen_bf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
#else
inline vfloat load(const uint16_t* p) {
  vuint16 bits;
  std::memcpy(&bits, p, sizeof(bits));
  return (vfloat)(__builtin_convertvector(bits, vuint) << 16);
}
#endif

// float16 as _Float16, one conversion instruction per vector where the build has F16C (GCC
// converts _Float16 one element at a time: the scalar conversions were 70% of trilinear_sample's
// float16 forward). Stores round to nearest even, as a cast does.
#if defined(__F16C__) && defined(__FLT16_MAX__) && (defined(__AVX512F__) || defined(__AVX__))
#define LC4_SIMD_FLOAT16 1
inline vfloat load(const _Float16* p) {
#if defined(__AVX512F__)
  return _mm512_maskz_cvtph_ps(0xFFFF, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
#else
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
#endif
}
inline void store(_Float16* p, vfloat v) {
#if defined(__AVX512F__)
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                      _mm512_maskz_cvtps_ph(0xFFFF, v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#else
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#endif
}
#else
#define LC4_SIMD_FLOAT16 0
#endif

// The first n (at most kLanes) elements; loads fill the other lanes with zeros, stores leave the
// memory past p + n alone and read none of it. For rows whose length is no multiple of kLanes
// (head dims 40, 80, 160): their scalar tails had cost as much as the vectors before them.
#if defined(__AVX512BW__) && defined(__AVX512VL__)
inline __mmask16 first_lanes(int n) { return static_cast<__mmask16>((1u << n) - 1u); }
inline vfloat load_first(const float* p, int n) { return _mm512_maskz_loadu_ps(first_lanes(n), p); }
inline void store_first(float* p, vfloat v, int n) { _mm512_mask_storeu_ps(p, first_lanes(n), v); }
inline vfloat load_first(const uint16_t* p, int n) {
  return widen_bf16(_mm256_maskz_loadu_epi16(first_lanes(n), p));
}
#if LC4_SIMD_FLOAT16
inline vfloat load_first(const _Float16* p, int n) {
  return _mm512_maskz_cvtph_ps(0xFFFF, _mm256_maskz_loadu_epi16(first_lanes(n), p));
}
inline void store_first(_Float16* p, vfloat v, int n) {
  const __m256i halves = _mm512_maskz_cvtps_ph(0xFFFF, v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  _mm256_mask_storeu_epi16(p, first_lanes(n), halves);
}
#endif
#else
template <typename T>
vfloat load_first(const T* p, int n) {
  T lanes[kLanes] = {};
  std::memcpy(lanes, p, n * sizeof(T));
  return load(lanes);
}
template <typename T>
void store_first(T* p, vfloat v, int n) {
  T lanes[kLanes];
  store(lanes, v);
  std::memcpy(p, lanes, n * sizeof(T));
}
#endif

// exp(x) = 2^n exp(r), n = round(x / ln 2), r = x - n ln 2 (Cody-Waite, |r| <= ln2 / 2), exp(r) by
// 1 + r p(r), p of degree 4 fitted for the least maximum relative error (exp(0) = 1 exactly; within
// 3 ulp of exp over the clamped range, checked by csrc/accuracy/vec_math_driver.cpp). x is clamped
// to [-87.3, 88], so tiny results come out as about 1e-38 instead of 0, which no caller can tell.
// The softmax rows are mostly exp: this form is 12 vector instructions on AVX-512 (rounding and
// scaling by 2^n are one each there) where the 1-ulp Cephes form took 20.
inline vfloat exp(vfloat x) {
  const vfloat lo = splat(-87.3f), hi = splat(88.0f);
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
#if defined(__AVX512F__)
  // The zero-masking forms: the plain ones read an undefined vector, which GCC warns of.
  const vfloat n =
      _mm512_maskz_roundscale_ps(0xFFFF, x * 1.44269504088896341f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#else
  // Adding 1.5 * 2^23 rounds to the nearest integer (ties to even, as above) and leaves it in
  // the low mantissa bits.
  const float magic = 12582912.0f;
  const vfloat shifted = x * 1.44269504088896341f + magic;
  const vfloat n = shifted - magic;
#endif
  vfloat r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  vfloat poly = splat(8.313742466e-3f);
  poly = poly * r + 4.190407693e-2f;
  poly = poly * r + 1.666728109e-1f;
  poly = poly * r + 4.999909699e-1f;
  poly = poly * r + 9.999998212e-1f;
  poly = poly * r + 1.0f;
#if defined(__AVX512F__)
  return _mm512_maskz_scalef_ps(0xFFFF, poly, n);
#else
  int32_t magic_bits;
  std::memcpy(&magic_bits, &magic, sizeof(magic_bits));
  const vint exponent = ((vint)shifted - magic_bits + 127) << 23;
  return poly * (vfloat)exponent;
#endif
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

// out[j] = exp(row[j] * scale - shift), stored as float or as bfloat16 bits (uint16_t), so that
// bfloat16 tiles take the probabilities without a second pass; returns the sum of the unrounded
// exponentials. out may be row.
template <typename Out>
inline float exp_rows_and_sum(const float* row, int64_t n, float scale, float shift, Out* out) {
  // Two vectors a step, two sums: about 6% faster than one (a microbenchmark over 128 x 512 rows).
  simd::vfloat sum = simd::splat(0.f), other_sum = simd::splat(0.f);
  int64_t j = 0;
  for (; j + 2 * simd::kLanes <= n; j += 2 * simd::kLanes) {
    const simd::vfloat e = simd::exp(simd::load(row + j) * scale - shift);
    const simd::vfloat f = simd::exp(simd::load(row + j + simd::kLanes) * scale - shift);
    simd::store(out + j, e);
    simd::store(out + j + simd::kLanes, f);
    sum += e;
    other_sum += f;
  }
  sum += other_sum;
  for (; j + simd::kLanes <= n; j += simd::kLanes) {
    const simd::vfloat e = simd::exp(simd::load(row + j) * scale - shift);
    simd::store(out + j, e);
    sum += e;
  }
  float total = 0.f;
  for (int lane = 0; lane < simd::kLanes; ++lane) total += sum[lane];
  for (; j < n; ++j) {
    const float e = simd::exp(row[j] * scale - shift);
    simd::store_one(out + j, e);
    total += e;
  }
  return total;
}
inline float exp_rows_and_sum(float* row, int64_t n, float scale, float shift) {
  return exp_rows_and_sum(row, n, scale, shift, row);
}
inline double exp_rows_and_sum(double* row, int64_t n, double scale, double shift) {
  double total = 0;
  for (int64_t j = 0; j < n; ++j) total += (row[j] = std::exp(row[j] * scale - shift));
  return total;
}

// Softmax backward on one row: probs[j] = exp(scores[j] * scale - lse) and
// dscores[j] = probs[j] * (dots[j] - delta) * scale, where dots[j] = dO . v~_j; stored as float or
// as bfloat16 bits (uint16_t). The outputs may be the inputs.
template <typename Out>
inline void softmax_backward_row(const float* scores, const float* dots, int64_t n, float scale, float lse,
                                 float delta, Out* probs, Out* dscores) {
  int64_t j = 0;
  for (; j + simd::kLanes <= n; j += simd::kLanes) {
    const simd::vfloat p = simd::exp(simd::load(scores + j) * scale - lse);
    const simd::vfloat ds = p * (simd::load(dots + j) - delta) * scale;
    simd::store(probs + j, p);
    simd::store(dscores + j, ds);
  }
  for (; j < n; ++j) {
    const float p = simd::exp(scores[j] * scale - lse);
    const float ds = p * (dots[j] - delta) * scale;
    simd::store_one(probs + j, p);
    simd::store_one(dscores + j, ds);
  }
}
// In place: probs holds the raw scores, dscores the dots.
inline void softmax_backward_row(float* probs, float* dscores, int64_t n, float scale, float lse, float delta) {
  softmax_backward_row(probs, dscores, n, scale, lse, delta, probs, dscores);
}
inline void softmax_backward_row(double* probs, double* dscores, int64_t n, double scale, double lse, double delta) {
  for (int64_t j = 0; j < n; ++j) {
    probs[j] = std::exp(probs[j] * scale - lse);
    dscores[j] = probs[j] * (dscores[j] - delta) * scale;
  }
}

}  // namespace lc4::cpu
