// Head-dim buckets of the attention kernels: a head dim d runs on the smallest bucket >= d
// (padding columns are zero). The instantiations are generated from this list; 40, 64, 80, 128
// and 160 are the SD1.5 head dims, the others fill the range up to 256.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <type_traits>

#define LC4_FOR_EACH_HEAD_DIM(X) X(32) X(40) X(64) X(80) X(96) X(128) X(160) X(192) X(256)

namespace lc4 {

// Calls f(std::integral_constant<int, bucket>{}) for the bucket that holds d.
template <typename F>
void with_head_dim_bucket(int64_t d, F&& f) {
#define LC4_HEAD_DIM_CASE(D) \
  if (d <= D) return f(std::integral_constant<int, D>{});
  LC4_FOR_EACH_HEAD_DIM(LC4_HEAD_DIM_CASE)
#undef LC4_HEAD_DIM_CASE
  std::fprintf(stderr, "lc4: head dim %lld above the largest CUDA bucket\n", static_cast<long long>(d));
  std::abort();
}

}  // namespace lc4
