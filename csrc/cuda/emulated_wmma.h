// Warp-collective host implementation of the nvcuda::wmma calls the kernels use (16x16x16 tiles
// of __half or __nv_bfloat16 inputs with float accumulators). WMMA leaves the fragments' layout
// unspecified; this file uses the sm_80 mma.m16n8k16 one (lane L = 4g + t holds, of an A or
// accumulator tile, rows g and g + 8 at columns 2t, 2t + 1, 2t + 8, 2t + 9; of a B tile, those
// rows of k at columns n = g and g + 8), so that a kernel that assumed a simpler one (a lane's
// elements in one row, say) fails here as it would on the GPU. A product exchanges the tiles
// through the warp's scratch between two barriers of the warp.
#pragma once

namespace lc4::emu::wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

constexpr int kTile = 16;
constexpr int kPerLane = kTile * kTile / kWarpSize;

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static_assert(M == kTile && N == kTile && K == kTile, "only m16n16k16 is emulated");
  static constexpr int num_elements = kPerLane;
  T x[kPerLane];
};

inline float as_float(float v) { return v; }
inline float as_float(__half v) { return __half2float(v); }
inline float as_float(__nv_bfloat16 v) { return __bfloat162float(v); }

// Logical (row, column) of element i of this lane, in a fragment of Use.
template <typename Use>
int element_row(int i) {
  const int g = lane_id() / 4, t = lane_id() % 4;
  if constexpr (std::is_same_v<Use, matrix_b>) return 2 * t + (i & 1) + 8 * ((i >> 1) & 1);
  return g + 8 * ((i >> 1) & 1);
}

template <typename Use>
int element_col(int i) {
  const int g = lane_id() / 4, t = lane_id() % 4;
  if constexpr (std::is_same_v<Use, matrix_b>) return g + 8 * (i >> 2);
  return 2 * t + (i & 1) + 8 * (i >> 2);
}

// Position of element i of this lane in a row-major 16x16 tile.
template <typename Use>
int element_index(int i) { return element_row<Use>(i) * kTile + element_col<Use>(i); }

// What the hardware requires of a load or store (CUDA C++ Programming Guide, WMMA): a 256-bit
// aligned pointer and ldm a multiple of 16 bytes. The GPU faults or misreads otherwise; the
// emulation stops with a message, so that CI catches a tile layout the GPU would reject.
inline void check_matrix_address(const void* p, unsigned ldm, size_t element_bytes, const char* call) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0 || ldm * element_bytes % 16 != 0) {
    std::fprintf(stderr, "emulated %s: pointer %p must be 32-byte aligned and ldm %u x %zu bytes a multiple of 16\n",
                 call, p, ldm, element_bytes);
    std::abort();
  }
}

template <typename Use, typename T, typename Layout, typename V>
void fill_fragment(fragment<Use, kTile, kTile, kTile, T, Layout>& f, const V& value) {
  for (int i = 0; i < kPerLane; ++i) f.x[i] = T(value);
}

template <typename Use, typename T, typename Layout>
void load_matrix_sync(fragment<Use, kTile, kTile, kTile, T, Layout>& f, const T* p, unsigned ldm) {
  check_matrix_address(p, ldm, sizeof(T), "load_matrix_sync");
  constexpr bool row = std::is_same_v<Layout, row_major>;
  for (int i = 0; i < kPerLane; ++i) {
    const int r = element_row<Use>(i), c = element_col<Use>(i);
    f.x[i] = row ? p[r * ldm + c] : p[c * ldm + r];
  }
}

inline void load_matrix_sync(fragment<accumulator, kTile, kTile, kTile, float>& f, const float* p, unsigned ldm,
                             layout_t layout) {
  check_matrix_address(p, ldm, sizeof(float), "load_matrix_sync");
  for (int i = 0; i < kPerLane; ++i) {
    const int r = element_row<accumulator>(i), c = element_col<accumulator>(i);
    f.x[i] = layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r];
  }
}

inline void store_matrix_sync(float* p, const fragment<accumulator, kTile, kTile, kTile, float>& f, unsigned ldm,
                              layout_t layout) {
  check_matrix_address(p, ldm, sizeof(float), "store_matrix_sync");
  for (int i = 0; i < kPerLane; ++i) {
    const int r = element_row<accumulator>(i), c = element_col<accumulator>(i);
    (layout == mem_row_major ? p[r * ldm + c] : p[c * ldm + r]) = f.x[i];
  }
}

template <typename T, typename LayoutA, typename LayoutB>
void mma_sync(fragment<accumulator, kTile, kTile, kTile, float>& d,
              const fragment<matrix_a, kTile, kTile, kTile, T, LayoutA>& a,
              const fragment<matrix_b, kTile, kTile, kTile, T, LayoutB>& b,
              const fragment<accumulator, kTile, kTile, kTile, float>& c) {
  Warp& warp = this_warp();
  float(&tiles)[3][256] = warp.mma_scratch;
  for (int i = 0; i < kPerLane; ++i) {
    tiles[0][element_index<matrix_a>(i)] = as_float(a.x[i]);
    tiles[1][element_index<matrix_b>(i)] = as_float(b.x[i]);
    tiles[2][element_index<accumulator>(i)] = c.x[i];
  }
  warp.barrier.arrive_and_wait();
  for (int i = 0; i < kPerLane; ++i) {
    const int r = element_row<accumulator>(i), col = element_col<accumulator>(i);
    float sum = tiles[2][r * kTile + col];
    for (int k = 0; k < kTile; ++k) sum += tiles[0][r * kTile + k] * tiles[1][k * kTile + col];
    d.x[i] = sum;
  }
  warp.barrier.arrive_and_wait();
}

}  // namespace lc4::emu::wmma
