// Per-point math of Eq. 2, shared by every compiled backend (CPU now, CUDA later).
//
// phi(h; p) = sum_r g(px, rx) g(py, ry) g(pt, rt) h[rt, ry, rx],  g(a, b) = max(0, 1 - |a - b|)
//
// Only the two integer neighbours of each coordinate can weigh anything, so a point touches at
// most 8 voxels. Neighbours outside the volume weigh zero (zeros padding). A coordinate that is
// not finite or lies where no neighbour is inside ([-1, n) fails) weighs zero on every corner
// and gets zero gradient; it never produces an index, so no input can address out of bounds.
// floor() makes the derivative at an exact integer the right-hand one, as grid_sample does.
//
// Nothing here knows about torch: plain scalars, fixed-size arrays, __host__ __device__ ready.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define LC4_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define LC4_HOST_DEVICE inline
#endif

namespace lc4 {

// Linear voxel index t*H*W + y*W + x of a corner, its Eq. 2 weight and the weight's partial
// derivatives with respect to (x, y, t). Invalid corners carry weight 0 and valid == false.
template <typename acc_t>
struct TrilinearPoint {
  int64_t voxel[8];
  acc_t weight[8];
  acc_t dweight[8][3];
  bool valid[8];
};

template <typename acc_t>
struct AxisNeighbours {
  int64_t lower;    // floor(p); only meaningful when usable
  acc_t weight[2];  // g(p, lower), g(p, lower + 1)
  bool inside[2];   // neighbour index within [0, n)
};

template <typename acc_t>
LC4_HOST_DEVICE AxisNeighbours<acc_t> axis_neighbours(acc_t p, int64_t n) {
  AxisNeighbours<acc_t> a;
  // Written as a negated conjunction so that NaN (all comparisons false) is rejected too.
  if (!(p >= acc_t(-1) && p < acc_t(n))) {
    a.lower = 0;
    a.weight[0] = a.weight[1] = acc_t(0);
    a.inside[0] = a.inside[1] = false;
    return a;
  }
  const acc_t lower = floor(p);
  const acc_t frac = p - lower;
  a.lower = static_cast<int64_t>(lower);
  a.weight[0] = acc_t(1) - frac;
  a.weight[1] = frac;
  a.inside[0] = a.lower >= 0;
  a.inside[1] = a.lower + 1 < n;
  return a;
}

// Corner c has bits (t, y, x) = (c >> 2 & 1, c >> 1 & 1, c & 1) relative to the lower neighbours.
template <typename acc_t>
LC4_HOST_DEVICE void trilinear_point(acc_t x, acc_t y, acc_t t, int64_t T, int64_t H, int64_t W,
                                     TrilinearPoint<acc_t>& out) {
  const AxisNeighbours<acc_t> ax = axis_neighbours(x, W);
  const AxisNeighbours<acc_t> ay = axis_neighbours(y, H);
  const AxisNeighbours<acc_t> at = axis_neighbours(t, T);
#pragma unroll
  for (int c = 0; c < 8; ++c) {
    const int cx = c & 1, cy = (c >> 1) & 1, ct = (c >> 2) & 1;
    const bool valid = ax.inside[cx] && ay.inside[cy] && at.inside[ct];
    out.valid[c] = valid;
    if (!valid) {
      out.voxel[c] = 0;
      out.weight[c] = acc_t(0);
      out.dweight[c][0] = out.dweight[c][1] = out.dweight[c][2] = acc_t(0);
      continue;
    }
    const acc_t wx = ax.weight[cx], wy = ay.weight[cy], wt = at.weight[ct];
    // d g(p, lower) / dp = -1 and d g(p, lower + 1) / dp = +1 between the neighbours.
    const acc_t sx = cx ? acc_t(1) : acc_t(-1);
    const acc_t sy = cy ? acc_t(1) : acc_t(-1);
    const acc_t st = ct ? acc_t(1) : acc_t(-1);
    out.voxel[c] = ((at.lower + ct) * H + (ay.lower + cy)) * W + (ax.lower + cx);
    out.weight[c] = wx * wy * wt;
    out.dweight[c][0] = sx * wy * wt;
    out.dweight[c][1] = wx * sy * wt;
    out.dweight[c][2] = wx * wy * st;
  }
}

}  // namespace lc4
