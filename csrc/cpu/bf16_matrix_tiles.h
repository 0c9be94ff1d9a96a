// bfloat16 tile products on the CPU's matrix units, through torch's oneDNN brgemm microkernel
// (at::native::cpublas::brgemm: AMX, or AVX512-BF16), for the cpu backend's bfloat16 attention.
// bfloat16 x bfloat16 -> float32 accumulation; the right-hand operand is repacked once into the
// microkernel's VNNI layout (pairs of rows interleaved), so its reduction dimension is padded to
// an even size with zeros.
//
// Available where torch's build has the microkernel and the CPU can run it (could_pack); the
// call is also checked at compile time, so a torch whose brgemm has another signature builds
// the float32 tiles only, as does a torch older than 2.13. LC4_CPU_BRGEMM=0 turns it off (the
// float32 tiles then run, as on CPUs without it).
#pragma once

#include <c10/util/BFloat16.h>
#include <torch/version.h>

// Written and tested against torch 2.13's cpublas (brgemm, pack, could_pack, brgemm_release);
// an older torch builds the float32 tiles only.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 13)
#define LC4_CPUBLAS_BRGEMM 1
#include <ATen/native/CPUBlas.h>
#else
#define LC4_CPUBLAS_BRGEMM 0
#endif

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace lc4::cpu {

namespace detail {
#if LC4_CPUBLAS_BRGEMM
template <typename... Args>
inline constexpr bool has_brgemm = requires(Args... args) { at::native::cpublas::brgemm(args...); };
template <typename... Args>
inline constexpr bool has_pack = requires(Args... args) { at::native::cpublas::pack(args...); };
template <typename Flag>
inline constexpr bool has_release = requires(Flag is_vnni) { at::native::cpublas::brgemm_release(is_vnni); };

template <typename BF16 = c10::BFloat16>
inline constexpr bool brgemm_api =
    has_brgemm<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, bool, const BF16*, const BF16*, float*, bool> &&
    has_pack<int64_t, int64_t, int64_t, int64_t, at::ScalarType, at::ScalarType, const void*, void*> &&
    has_release<bool>;
#else
template <typename BF16 = c10::BFloat16>
inline constexpr bool brgemm_api = false;
#endif
}  // namespace detail

inline int64_t even(int64_t n) { return n + (n & 1); }

// Whether the bfloat16 forward takes the brgemm tiles here.
inline bool bf16_brgemm_enabled() {
#if LC4_CPUBLAS_BRGEMM
  if constexpr (detail::brgemm_api<>) {
    const char* setting = std::getenv("LC4_CPU_BRGEMM");
    if (setting && std::strcmp(setting, "0") == 0) return false;
    return at::native::cpublas::could_pack(at::kBFloat16);
  }
#endif
  return false;
}

// The packing writes column chunks of at most 64, each padded to a multiple of 16: its only
// output leading dimensions are 16, 32, 48 and 64.
constexpr int64_t kPackChunk = 64;
inline int64_t padded_width(int64_t n) { return (n + 15) / 16 * 16; }

// Elements pack_rows writes for a (k x n) matrix.
inline int64_t packed_size(int64_t k, int64_t n) { return k * padded_width(n); }

// Packs a (k x n) bfloat16 matrix, k even, rows `ld` apart, into the layout bf16_tile_product
// reads.
template <typename BF16 = c10::BFloat16>
void pack_rows(int64_t k, int64_t n, const BF16* rows, BF16* packed, int64_t ld = -1) {
#if LC4_CPUBLAS_BRGEMM
  if constexpr (detail::brgemm_api<BF16>) {
    for (int64_t col = 0; col < n; col += kPackChunk) {
      const int64_t width = std::min(kPackChunk, n - col);
      at::native::cpublas::pack(k, width, /*ld_in=*/ld < 0 ? n : ld, /*ld_out=*/padded_width(width), at::kBFloat16,
                                at::kBFloat16, rows + col, packed + k * col);
    }
  }
#endif
}

// C (m x n, row stride ldc, float) = A (m x k, row stride lda) B (+ C when accumulate), B a
// (k x n) matrix packed by pack_rows.
template <typename BF16 = c10::BFloat16>
void bf16_tile_product(int64_t m, int64_t n, int64_t k, const BF16* a, int64_t lda, const BF16* b_packed, float* c,
                       int64_t ldc, bool accumulate) {
#if LC4_CPUBLAS_BRGEMM
  if constexpr (detail::brgemm_api<BF16>) {
    for (int64_t col = 0; col < n; col += kPackChunk) {
      const int64_t width = std::min(kPackChunk, n - col);
      at::native::cpublas::brgemm(m, width, k, lda, /*ld_b=*/padded_width(width), ldc, accumulate, a,
                                  b_packed + k * col, c + col, /*is_vnni=*/true);
    }
  }
#endif
}

// float -> bfloat16, rounded to nearest even with integer arithmetic, which vectorises
// (c10::BFloat16's conversion does not: it took 40% of the bfloat16 forward's time). Infinities
// stay, and so do the quiet NaNs arithmetic produces.
template <typename BF16 = c10::BFloat16>
void round_to_bf16(const float* in, int64_t n, BF16* out) {
  auto* out_bits = reinterpret_cast<uint16_t*>(out);
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const uint32_t bits = std::bit_cast<uint32_t>(in[j]);
    out_bits[j] = static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
  }
}

// Gives the microkernel's hardware state (AMX tile configuration) back; once per thread, after
// its last product.
template <typename BF16 = c10::BFloat16>
void release_bf16_tiles() {
#if LC4_CPUBLAS_BRGEMM
  if constexpr (detail::brgemm_api<BF16>) at::native::cpublas::brgemm_release(/*is_vnni=*/true);
#endif
}

}  // namespace lc4::cpu
