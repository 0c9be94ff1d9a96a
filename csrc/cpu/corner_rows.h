// The eight corner rows of a trilinear point, summed with their weights: the gather of both ops'
// forward (trilinear_sample's output, tda_attention's sampled keys and values).
#pragma once

#include <c10/util/BFloat16.h>

#include <cstdint>
#include <type_traits>
#include <vector>

#include "common/trilinear_math.h"
#include "cpu/bf16_matrix_tiles.h"

namespace lc4::cpu {

// Where each corner's row of channels starts, and its weight. A corner outside the map reads a
// row of zeros at weight 0 instead of being skipped, so that the sum runs over all eight in
// registers; not the map at weight 0, whose inf or NaN would make NaN.
template <typename T, typename A>
struct CornerRows {
  const T* row[8];
  A weight[8];
};

// `first` is voxel 0's row of the batch element (channel offset included), rows `voxel_stride`
// apart; `zeros` at least as long as a row.
template <typename T, typename A>
CornerRows<T, A> corner_rows(const TrilinearPoint<A>& tp, const T* first, int64_t voxel_stride, const T* zeros) {
  CornerRows<T, A> rows;
  for (int corner = 0; corner < 8; ++corner) {
    rows.row[corner] = tp.valid[corner] ? first + tp.voxel[corner] * voxel_stride : zeros;
    rows.weight[corner] = tp.valid[corner] ? tp.weight[corner] : A(0);
  }
  return rows;
}

// out[c] = sum over the corners of weight * row[c], in the accumulation type. Each output is
// written once (a corner at a time, an output row was loaded and stored eight times).
template <typename T, typename A>
void weighted_corner_sum(const CornerRows<T, A>& rows, int64_t n, A* out) {
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) {
    A sum = 0;
#pragma GCC unroll 8
    for (int corner = 0; corner < 8; ++corner) sum += rows.weight[corner] * static_cast<A>(rows.row[corner][c]);
    out[c] = sum;
  }
}

// out[c] = row[c] in the storage type; bfloat16 through the vectorised rounding (c10::BFloat16's
// conversion is scalar).
template <typename T, typename A>
void store_row(const A* row, int64_t n, T* out) {
  if constexpr (std::is_same_v<T, c10::BFloat16> && std::is_same_v<A, float>) {
    round_to_bf16(row, n, out);
  } else {
#pragma omp simd
    for (int64_t c = 0; c < n; ++c) out[c] = static_cast<T>(row[c]);
  }
}

}  // namespace lc4::cpu
