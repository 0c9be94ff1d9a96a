// The eight corner rows of a trilinear point, summed with their weights: the gather of both ops'
// forward (trilinear_sample's output, tda_attention's sampled keys and values).
#pragma once

#include <cstdint>

#include "common/trilinear_math.h"
#include "cpu/float_rows.h"

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
  if constexpr (kVectorPath<A, T>) {
    const CornerRows<T, A> local = rows;  // a vector store may alias `rows`: keep it in registers
    for (int64_t c = 0; c < n; c += simd::kLanes) {
      const int width = lanes_from(c, n);
      simd::vfloat sum = local.weight[0] * load_as_float(local.row[0] + c, width);
#pragma GCC unroll 7
      for (int corner = 1; corner < 8; ++corner)
        sum += local.weight[corner] * load_as_float(local.row[corner] + c, width);
      store_from_float(out + c, sum, width);
    }
  } else {
#pragma omp simd
    for (int64_t c = 0; c < n; ++c) {
      A sum = 0;
#pragma GCC unroll 8
      for (int corner = 0; corner < 8; ++corner) sum += rows.weight[corner] * static_cast<A>(rows.row[corner][c]);
      out[c] = sum;
    }
  }
}

}  // namespace lc4::cpu
