// Plain parameter structs passed from the torch glue to the kernels of every backend.
// Tensors are contiguous in the layouts below; sizes are 64-bit so that offsets never overflow.
#pragma once

#include <cstdint>

namespace lc4 {

// value (B, T, H, W, G, C), points (B, P, G, 3) -> out (B, P, G, C)
struct SampleParams {
  const void* value = nullptr;
  const void* points = nullptr;  // in the accumulation type (float, or double for double)
  void* out = nullptr;
  const void* grad_out = nullptr;
  void* grad_value = nullptr;   // zero-initialised by the caller
  void* grad_points = nullptr;  // accumulation type
  int64_t B = 0, T = 0, H = 0, W = 0, G = 0, C = 0, P = 0;
};

// q (B, Nq, heads, d); k, v (B, T, H, W, heads, d); points (B, Nk, G, 3);
// out (B, Nq, heads, d); lse (B, heads, Nq) in the accumulation type.
// The float16/bfloat16 attention forwards: O in accumulator fragments with one pass over the keys
// (rescaled by rows) or two (max and sum first, no rescale), or O in shared memory.
enum class HalfForward : int { kRegisters = 0, kTwoPass = 1, kShared = 2 };
// Where the float16/bfloat16 backward takes dq for d <= 128: a tensor-core kernel of its own over
// k~ and v~ sampled beforehand (no atomics, so deterministic too), or inside the dk~/dv~ kernel
// through float atomics (the float32 path and larger head dims always do that; deterministic mode
// then runs the float dq kernel).
enum class HalfDq : int { kSeparate = 0, kFused = 1 };
// Which tensor-core dk~/dv~ kernel float16/bfloat16 take where dq has its own kernel, up to
// d = 80: 16 keys per warp with dk~/dv~ in its fragments and two barriers per query tile, or the
// kernel of 32 x 32 tiles in shared memory (larger head dims, and dq fused, always take that).
enum class HalfDkv : int { kRegisters = 0, kShared = 1 };
// How the backward scatters dk~, dv~ into dk, dv: by segments of a sorted corner table (each
// voxel summed once, in a fixed order, written in the inputs' dtype; always when deterministic),
// or by float32 atomics into float32 maps.
enum class Scatter : int { kSegments = 0, kAtomic = 1 };

struct AttentionParams {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  const void* points = nullptr;  // accumulation type
  void* out = nullptr;
  void* lse = nullptr;
  const void* grad_out = nullptr;
  void* grad_q = nullptr;
  void* grad_k = nullptr;       // zero-initialised by the caller
  void* grad_v = nullptr;       // zero-initialised by the caller
  void* grad_points = nullptr;  // accumulation type
  int64_t B = 0, Nq = 0, Nk = 0, T = 0, H = 0, W = 0, heads = 0, G = 0, d = 0;
  double scale = 1.0;
  bool deterministic = true;
  // Optional k~ and v~ sampled beforehand, (B, Nk, heads, d) in q's dtype: the CUDA forward then
  // reads its key tiles from them instead of sampling k and v again for every query block.
  const void* k_sampled = nullptr;
  const void* v_sampled = nullptr;
  // Blocks that share the queries of one key block in the backward's dk~/dv~ kernel; 0 lets the
  // launcher choose (enough blocks to fill the GPU). Ignored, as 1, when deterministic.
  int64_t query_splits = 0;
  // Which tensor-core forward float16/bfloat16 take for d <= 128 (larger head dims always take
  // kShared; float32 has its own kernel).
  HalfForward half_forward = HalfForward::kRegisters;
  // Which dq the float16/bfloat16 backward takes; kSeparate needs k_sampled and v_sampled.
  HalfDq half_dq = HalfDq::kSeparate;
  HalfDkv half_dkv = HalfDkv::kRegisters;
  Scatter scatter = Scatter::kSegments;
  // Whether the float16/bfloat16 kernels that read whole tiles from memory (the register forward
  // over pre-sampled keys, the separate dq, the register dk~/dv~) load the next tile into
  // registers while the current one's products run (tile_copy.cuh: RowTileFetch).
  bool prefetch = true;
};

}  // namespace lc4
