// Checks the CPU softmax's row kernels (csrc/cpu/vec_math.h) on their own, without torch, for
// whichever SIMD width the build targets (tests/kernels/test_vec_math.py builds it for several):
// - simd::exp within 3 ulp of exp over its whole clamped range (every 61st float, or every Nth
//   with the argument N: under an emulator, where long double is software), exp(0) = 1,
//   NaN in gives NaN out, the clamped ends finite and positive;
// - the bfloat16 stores round to nearest even, flush subnormals to zero, keep infinities and
//   NaNs, and vector and scalar stores agree bit for bit;
// - exp_rows_and_sum and softmax_backward_row give the same values through float and bfloat16
//   outputs (the latter the former rounded), on row lengths that leave every tail length;
// - the float16 and bfloat16 vector loads and stores, whole and partial (check_half_loads_and_stores).
// Prints "vec_math driver: ok" and exits 0, or prints the first failure and exits 1.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu/vec_math.h"

namespace {

using namespace lc4::cpu;

int failures = 0;
void check(bool ok, const char* what, double a = 0, double b = 0) {
  if (!ok && failures++ < 10) std::printf("FAILED: %s (%.9g, %.9g)\n", what, a, b);
}

float from_bits(uint32_t bits) {
  float x;
  std::memcpy(&x, &bits, sizeof(x));
  return x;
}
uint32_t to_bits(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  return bits;
}

// Rounds to nearest even by way of double arithmetic, independently of the bit trick under test;
// subnormal floats flush to zero first.
uint16_t bf16_reference(float x) {
  if (std::isnan(x)) return static_cast<uint16_t>((to_bits(x) >> 16) | 0x40);  // quiet
  if (std::fpclassify(x) == FP_SUBNORMAL) return static_cast<uint16_t>((to_bits(x) >> 16) & 0x8000);
  const uint32_t bits = to_bits(x);
  const float down = from_bits(bits & 0xFFFF0000u), up = from_bits((bits & 0xFFFF0000u) + 0x10000u);
  // Past the largest bfloat16 the next step is 2^128, which float spells as infinity.
  const double up_value = std::isinf(up) ? std::copysign(std::ldexp(1.0, 128), x) : double(up);
  const double to_down = std::fabs(double(x) - double(down)), to_up = std::fabs(up_value - double(x));
  if (to_down < to_up) return static_cast<uint16_t>(to_bits(down) >> 16);
  if (to_up < to_down) return static_cast<uint16_t>(to_bits(up) >> 16);
  const uint16_t d = static_cast<uint16_t>(to_bits(down) >> 16);
  return (d & 1) ? static_cast<uint16_t>(d + 1) : d;
}

void check_exp(uint32_t stride) {
  double worst = 0;
  float worst_x = 0;
  std::vector<float> xs;
  for (float x = -87.3f; x < 88.0f;) {  // every stride-th float of [-87.3, 88)
    xs.push_back(x);
    const uint32_t bits = to_bits(x);
    x = x < 0 ? (bits - stride > 0x80000000u ? from_bits(bits - stride) : 0.0f) : from_bits(bits + stride);
  }
  xs.push_back(88.0f);
  while (xs.size() % simd::kLanes) xs.push_back(0.0f);
  for (size_t i = 0; i < xs.size(); i += simd::kLanes) {
    const simd::vfloat e = simd::exp(simd::load(xs.data() + i));
    for (int lane = 0; lane < simd::kLanes; ++lane) {
      const long double exact = std::exp(static_cast<long double>(xs[i + lane]));
      const float nearest = static_cast<float>(exact);
      const double ulp = std::nextafter(nearest, std::numeric_limits<float>::infinity()) - nearest;
      const double error = std::fabs(static_cast<double>(e[lane] - exact)) / ulp;
      if (error > worst) worst = error, worst_x = xs[i + lane];
    }
  }
  std::printf("exp: %zu points, worst %.3f ulp at %.9g\n", xs.size(), worst, worst_x);
  check(worst <= 3.0, "exp within 3 ulp", worst, worst_x);
  check(simd::exp(0.0f) == 1.0f, "exp(0) == 1", simd::exp(0.0f));
  check(std::isnan(simd::exp(std::numeric_limits<float>::quiet_NaN())), "exp(NaN) is NaN");
  const float tiny = simd::exp(-1e30f), huge = simd::exp(1e30f);
  check(tiny > 0 && tiny < 1e-37f, "exp(-1e30) clamped to a tiny positive value", tiny);
  check(std::isfinite(huge) && huge > 1e38f, "exp(1e30) clamped to a large finite value", huge);
}

void check_bf16_stores() {
  std::vector<float> xs = {0.0f, -0.0f, 1.0f, -1.0f, std::numeric_limits<float>::infinity(),
                           -std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN(),
                           std::numeric_limits<float>::max(), std::numeric_limits<float>::denorm_min(),
                           -std::numeric_limits<float>::denorm_min(), from_bits(0x007FFFFFu),  // subnormals
                           std::numeric_limits<float>::min(), from_bits(0x00FFFFFFu),  // the smallest normals
                           from_bits(0x3F808000u), from_bits(0x3F818000u),  // ties: to even, down and up
                           from_bits(0x3F808001u), from_bits(0x3F807FFFu)};
  uint32_t state = 12345;
  while (xs.size() < 4096) {
    state = state * 1664525u + 1013904223u;
    const float x = from_bits(state);
    if (!std::isnan(x)) xs.push_back(x);
  }
  std::vector<uint16_t> vector_out(xs.size());
  for (size_t i = 0; i + simd::kLanes <= xs.size(); i += simd::kLanes)
    simd::store(vector_out.data() + i, simd::load(xs.data() + i));
  for (size_t i = 0; i < xs.size(); ++i) {
    uint16_t scalar_out;
    simd::store_one(&scalar_out, xs[i]);
    check(vector_out[i] == scalar_out, "vector and scalar bfloat16 stores agree", xs[i]);
    if (std::isnan(xs[i]))
      check((scalar_out & 0x7F80) == 0x7F80 && (scalar_out & 0x7F), "NaN stays NaN", xs[i]);
    else
      check(scalar_out == bf16_reference(xs[i]), "bfloat16 rounds to nearest even", xs[i],
            from_bits(uint32_t(scalar_out) << 16));
  }
}

void check_rows() {
  for (int n = 1; n <= 3 * simd::kLanes + 1; ++n) {
    std::vector<float> scores(n), dots(n);
    for (int j = 0; j < n; ++j) scores[j] = std::sin(0.7f * j) * 4, dots[j] = std::cos(1.3f * j);
    const float scale = 0.37f, shift = 1.1f, lse = 2.3f, delta = 0.2f;
    std::vector<float> in_place = scores;
    const float sum_float = exp_rows_and_sum(in_place.data(), n, scale, shift);
    std::vector<uint16_t> as_bf16(n);
    const float sum_bf16 = exp_rows_and_sum(scores.data(), n, scale, shift, as_bf16.data());
    double expected_sum = 0;
    for (int j = 0; j < n; ++j) {
      const double expected = std::exp(double(scores[j]) * scale - shift);
      expected_sum += expected;
      check(std::fabs(in_place[j] - expected) <= 4e-7 * expected, "exp_rows_and_sum value", in_place[j], expected);
      uint16_t rounded;
      simd::store_one(&rounded, in_place[j]);
      check(as_bf16[j] == rounded, "exp_rows_and_sum: bfloat16 output is the float one rounded", n, j);
    }
    check(sum_float == sum_bf16, "exp_rows_and_sum: the same sum either way", sum_float, sum_bf16);
    check(std::fabs(sum_float - expected_sum) <= 1e-6 * expected_sum, "exp_rows_and_sum sum", sum_float, expected_sum);

    std::vector<float> probs = scores, dscores = dots;
    softmax_backward_row(probs.data(), dscores.data(), n, scale, lse, delta);
    std::vector<uint16_t> probs_bf16(n), dscores_bf16(n);
    softmax_backward_row(scores.data(), dots.data(), n, scale, lse, delta, probs_bf16.data(), dscores_bf16.data());
    for (int j = 0; j < n; ++j) {
      const double p = std::exp(double(scores[j]) * scale - lse), ds = p * (dots[j] - delta) * scale;
      check(std::fabs(probs[j] - p) <= 4e-7 * p, "softmax_backward_row probability", probs[j], p);
      check(std::fabs(dscores[j] - ds) <= 1e-6 * (std::fabs(ds) + p), "softmax_backward_row dscore", dscores[j], ds);
      uint16_t p_rounded, ds_rounded;
      simd::store_one(&p_rounded, probs[j]);
      simd::store_one(&ds_rounded, dscores[j]);
      check(probs_bf16[j] == p_rounded && dscores_bf16[j] == ds_rounded,
            "softmax_backward_row: bfloat16 outputs are the float ones rounded", n, j);
    }
  }
}

// Every bfloat16 (and, where the build converts float16 in vectors, every float16) loads as the
// float it stands for; float16 stores round as a cast does; the partial loads fill the lanes past
// n with zeros and the partial stores write the first n elements and nothing after them.
void check_half_loads_and_stores() {
  std::vector<uint16_t> bits(1 << 16);
  for (uint32_t i = 0; i < bits.size(); ++i) bits[i] = static_cast<uint16_t>(i);
  for (size_t i = 0; i < bits.size(); i += simd::kLanes) {
    const simd::vfloat loaded = simd::load(bits.data() + i);
    for (int lane = 0; lane < simd::kLanes; ++lane)
      check(to_bits(loaded[lane]) == uint32_t(bits[i + lane]) << 16, "bfloat16 loads as its float", bits[i + lane]);
  }
  for (int n = 0; n <= simd::kLanes; ++n) {
    const std::vector<uint16_t> row(bits.begin() + 0x3F80, bits.begin() + 0x3F80 + n);  // exactly n elements
    const simd::vfloat loaded = simd::load_first(row.data(), n);
    for (int lane = 0; lane < simd::kLanes; ++lane)
      check(lane < n ? loaded[lane] == from_bits(uint32_t(row[lane]) << 16) : loaded[lane] == 0.0f,
            "bfloat16 partial load", n, lane);
    std::vector<float> out(simd::kLanes + 1, -7.0f), in(simd::kLanes);
    for (int lane = 0; lane < simd::kLanes; ++lane) in[lane] = 0.5f * lane + 1;
    simd::store_first(out.data(), simd::load(in.data()), n);
    for (int lane = 0; lane <= simd::kLanes; ++lane)
      check(out[lane] == (lane < n ? in[lane] : -7.0f), "float partial store writes the first n alone", n, lane);
    const simd::vfloat first = simd::load_first(in.data(), n);
    for (int lane = 0; lane < simd::kLanes; ++lane)
      check(first[lane] == (lane < n ? in[lane] : 0.0f), "float partial load", n, lane);
  }
#if LC4_SIMD_FLOAT16
  std::vector<_Float16> halves(1 << 16);
  std::memcpy(halves.data(), bits.data(), bits.size() * sizeof(uint16_t));
  for (size_t i = 0; i < halves.size(); i += simd::kLanes) {
    const simd::vfloat loaded = simd::load(halves.data() + i);
    for (int lane = 0; lane < simd::kLanes; ++lane) {
      const float expected = static_cast<float>(halves[i + lane]);
      check(std::isnan(expected) ? std::isnan(loaded[lane]) : to_bits(loaded[lane]) == to_bits(expected),
            "float16 loads as its float", bits[i + lane]);
    }
  }
  std::vector<float> xs = {0.0f, -0.0f, 1.0f, 65504.0f, 65519.0f, 65520.0f, -65520.0f, 1e-8f, 3e-8f, 6.1e-5f,
                           std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN(),
                           1.0f + 0x1p-11f, 1.0f + 3 * 0x1p-11f};  // ties: to even, down and up
  uint32_t state = 777;
  while (xs.size() % simd::kLanes || xs.size() < 4096) {
    state = state * 1664525u + 1013904223u;
    xs.push_back(from_bits((state & 0x8FFFFFFFu) | 0x30000000u));  // magnitudes around float16's range
  }
  std::vector<_Float16> stored(xs.size());
  for (size_t i = 0; i < xs.size(); i += simd::kLanes) simd::store(stored.data() + i, simd::load(xs.data() + i));
  for (size_t i = 0; i < xs.size(); ++i) {
    const _Float16 expected = static_cast<_Float16>(xs[i]);
    uint16_t got_bits, expected_bits;
    std::memcpy(&got_bits, &stored[i], 2);
    std::memcpy(&expected_bits, &expected, 2);
    check(std::isnan(xs[i]) ? std::isnan(static_cast<float>(stored[i])) : got_bits == expected_bits,
          "float16 stores round as a cast does", xs[i], static_cast<float>(stored[i]));
  }
  for (int n = 0; n <= simd::kLanes; ++n) {
    const std::vector<_Float16> row(halves.begin() + 0x3C00, halves.begin() + 0x3C00 + n);
    const simd::vfloat loaded = simd::load_first(row.data(), n);
    for (int lane = 0; lane < simd::kLanes; ++lane)
      check(loaded[lane] == (lane < n ? static_cast<float>(row[lane]) : 0.0f), "float16 partial load", n, lane);
    std::vector<float> in(simd::kLanes);
    for (int lane = 0; lane < simd::kLanes; ++lane) in[lane] = 0.5f * lane + 1;
    std::vector<_Float16> out(simd::kLanes + 1, static_cast<_Float16>(-7.0f));
    simd::store_first(out.data(), simd::load(in.data()), n);
    for (int lane = 0; lane <= simd::kLanes; ++lane)
      check(static_cast<float>(out[lane]) == (lane < n ? in[lane] : -7.0f),
            "float16 partial store writes the first n alone", n, lane);
  }
  std::printf("float16 and bfloat16 loads and stores: vectors of %d\n", simd::kLanes);
#else
  std::printf("bfloat16 loads and stores checked; this build converts float16 element by element\n");
#endif
}

}  // namespace

int main(int argc, char** argv) {
  const uint32_t exp_stride = argc > 1 ? static_cast<uint32_t>(std::strtoul(argv[1], nullptr, 10)) : 61;
  std::printf("vec_math driver: %d lanes\n", simd::kLanes);
  check_exp(exp_stride < 1 ? 1 : exp_stride);
  check_bf16_stores();
  check_rows();
  check_half_loads_and_stores();
  if (failures) {
    std::printf("vec_math driver: %d failures\n", failures);
    return 1;
  }
  std::printf("vec_math driver: ok\n");
  return 0;
}
