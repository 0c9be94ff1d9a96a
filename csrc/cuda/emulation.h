// Host emulation of the CUDA features the kernels use, so that the kernel sources of csrc/cuda
// build with a host compiler into the test-only `cuda_emu` backend.
//
// A launch runs the blocks one after another, so __shared__ storage can be static (one block
// uses it at a time). The threads of a block are fibers of the launching host thread
// (emulated_fibers.h); in a ThreadSanitizer build they are host threads, so that a race between
// them is seen. __syncthreads is a barrier of the block's threads, warp shuffles/votes and
// __syncwarp exchange through a per-warp slot array between two barriers of the warp's threads,
// atomics are std::atomic_ref, and the WMMA calls are warp-collective host implementations
// (emulated_wmma.h). Blocks must be whole warps and masks full; a kernel whose threads disagree
// on the number of barriers stops with a deadlock message (host threads: hangs) where it would
// hang (or worse) on a GPU.
#pragma once

#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <tuple>
#include <type_traits>
#include <vector>

#include "cuda/emulated_fibers.h"
#include "cuda/emulated_half.h"

#if defined(__SANITIZE_THREAD__)
#define LC4_EMU_HOST_THREADS 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define LC4_EMU_HOST_THREADS 1
#endif
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)

struct CUstream_st;
typedef CUstream_st* cudaStream_t;

// Everything below lives in lc4::emu (the kernels of lc4::cuda_emu see it through a using
// directive), so that a build that also links the real CUDA headers has no clashing globals.
namespace lc4::emu {

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
  unsigned x, y, z;
};

inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;

constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xffffffffu;

#ifdef LC4_EMU_HOST_THREADS
using Barrier = std::barrier<>;
#else
using Barrier = fibers::Barrier;
#endif

struct Warp {
  Barrier barrier{kWarpSize};
  uint64_t slots[kWarpSize];
  float mma_scratch[3][256];  // the A, B, C tiles of an emulated 16x16x16 WMMA product
};

struct Block {
  explicit Block(int threads) : barrier(threads), warps(new Warp[threads / kWarpSize]) {}
  Barrier barrier;
  std::unique_ptr<Warp[]> warps;
};

inline thread_local Block* current_block = nullptr;
inline thread_local int current_thread = 0;  // linear thread index within the block

inline Warp& this_warp() { return current_block->warps[current_thread / kWarpSize]; }
inline int lane_id() { return current_thread % kWarpSize; }

inline void check_mask(unsigned mask) {
  if (mask != kFullMask) fail("only full-warp masks are emulated");
}

// Every lane publishes a value, then reads the one of `source_lane`; the second barrier keeps
// the slots alive until every lane has read.
template <typename T>
T warp_exchange(T value, int source_lane) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "warp exchange of a type wider than 64 bits");
  Warp& warp = this_warp();
  std::memcpy(&warp.slots[lane_id()], &value, sizeof(T));
  warp.barrier.arrive_and_wait();
  T out;
  std::memcpy(&out, &warp.slots[source_lane], sizeof(T));
  warp.barrier.arrive_and_wait();
  return out;
}

inline unsigned warp_ballot(bool predicate) {
  Warp& warp = this_warp();
  warp.slots[lane_id()] = predicate ? 1 : 0;
  warp.barrier.arrive_and_wait();
  unsigned bits = 0;
  for (int lane = 0; lane < kWarpSize; ++lane) bits |= static_cast<unsigned>(warp.slots[lane]) << lane;
  warp.barrier.arrive_and_wait();
  return bits;
}

inline std::mutex& launch_mutex() {
  static std::mutex mutex;
  return mutex;
}

// kernel<<<grid, block, 0, stream>>>(args...): the stream is ignored (launches are synchronous).
template <typename... KernelArgs, typename... Args>
void launch(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, cudaStream_t, Args&&... args) {
  const int threads = static_cast<int>(block.x * block.y * block.z);
  if (threads <= 0 || threads % kWarpSize != 0) fail("block size must be a positive multiple of 32");
  // As on the device, where a zero-sized grid is "invalid configuration argument".
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) fail("grid size must be positive in every dimension");
  const std::tuple<KernelArgs...> arguments(static_cast<KernelArgs>(args)...);
  std::lock_guard<std::mutex> one_launch_at_a_time(launch_mutex());  // static __shared__ storage
  Block ctx(threads);
  auto enter = [&](int tid) {  // the registers of thread tid, as the kernel reads them
    current_block = &ctx;
    current_thread = tid;
    threadIdx = {tid % block.x, (tid / block.x) % block.y, tid / (block.x * block.y)};
    blockDim = block;
    gridDim = grid;
  };
#ifndef LC4_EMU_HOST_THREADS
  fibers::Scheduler scheduler(threads);
  auto body = [&](int) { std::apply(kernel, arguments); };
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        blockIdx = {x, y, z};
        scheduler.run(body, enter);
      }
  current_block = nullptr;
#else
  auto run_thread = [&](int tid) {
    enter(tid);
    for (unsigned z = 0; z < grid.z; ++z)
      for (unsigned y = 0; y < grid.y; ++y)
        for (unsigned x = 0; x < grid.x; ++x) {
          blockIdx = {x, y, z};
          std::apply(kernel, arguments);
          ctx.barrier.arrive_and_wait();  // the next block may reuse the __shared__ storage
        }
    current_block = nullptr;
  };
  std::vector<std::thread> pool;
  pool.reserve(threads - 1);
  for (int tid = 1; tid < threads; ++tid) pool.emplace_back(run_thread, tid);
  run_thread(0);
  for (std::thread& t : pool) t.join();
#endif
}

inline void __syncthreads() { current_block->barrier.arrive_and_wait(); }
inline void __syncwarp(unsigned mask = kFullMask) {
  check_mask(mask);
  this_warp().barrier.arrive_and_wait();
}

template <typename T>
T __shfl_sync(unsigned mask, T value, int source, int width = kWarpSize) {
  check_mask(mask);
  const int lane = lane_id();
  return warp_exchange(value, (lane / width) * width + ((source % width + width) % width));
}

template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = kWarpSize) {
  check_mask(mask);
  const int lane = lane_id();
  const int source = lane ^ lane_mask;
  return warp_exchange(value, source / width == lane / width ? source : lane);
}

template <typename T>
T __shfl_down_sync(unsigned mask, T value, unsigned delta, int width = kWarpSize) {
  check_mask(mask);
  const int lane = lane_id();
  const int source = lane + static_cast<int>(delta);
  return warp_exchange(value, source / width == lane / width ? source : lane);
}

inline unsigned __ballot_sync(unsigned mask, int predicate) {
  check_mask(mask);
  return warp_ballot(predicate != 0);
}
inline int __any_sync(unsigned mask, int predicate) { return __ballot_sync(mask, predicate) != 0; }
inline int __all_sync(unsigned mask, int predicate) { return __ballot_sync(mask, predicate) == kFullMask; }

template <typename T>
T atomicAdd(T* address, T value) {
  return std::atomic_ref<T>(*address).fetch_add(value, std::memory_order_relaxed);
}

}  // namespace lc4::emu

#include "cuda/emulated_wmma.h"
