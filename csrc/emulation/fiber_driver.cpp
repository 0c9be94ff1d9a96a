// Standalone checks (no torch) of the emulator's fibers (csrc/cuda/emulated_fibers.h), through
// emulation.h as the cuda_emu kernels use them: barriers order the threads' shared-memory writes
// and reads over many rounds and blocks, warp shuffles and votes exchange the right values, a
// thread may use a large stack, and launches from several host threads at once stay apart. With
// the argument `deadlock` one thread skips a barrier, and the run must stop with a message.
// Built natively (inline-assembly switch, and swapcontext with -DLC4_EMU_UCONTEXT) and for
// aarch64 under qemu by tests/kernels/test_emulated_fibers.py and test_aarch64_build.py.
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

#include "cuda/emulation.h"

using namespace lc4::emu;

namespace {

constexpr int kThreads = 256;
constexpr int kRounds = 40;

// Each round every thread publishes its value and takes its right neighbour's.
__global__ void rotate_kernel(int* out, int rounds) {
  __shared__ int slots[kThreads];
  const int t = static_cast<int>(threadIdx.x);
  int value = t + 1000 * static_cast<int>(blockIdx.x);
  for (int r = 0; r < rounds; ++r) {
    slots[t] = value;
    __syncthreads();
    value = slots[(t + 1) % kThreads];
    __syncthreads();
  }
  out[blockIdx.x * kThreads + t] = value;
}

__global__ void warp_kernel(int* out) {
  const int lane = static_cast<int>(threadIdx.x) % 32;
  int sum = lane;
  for (int offset = 16; offset > 0; offset >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  const int below = __shfl_down_sync(0xffffffffu, lane * 10, 1);
  const int first = __shfl_sync(0xffffffffu, lane + 7, 0);
  const unsigned ballot = __ballot_sync(0xffffffffu, lane % 3 == 0);
  int* row = out + threadIdx.x * 4;
  row[0] = sum, row[1] = below, row[2] = first, row[3] = static_cast<int>(ballot);
}

// Half a fiber's stack in one frame, with a barrier while it is in use.
__global__ void deep_stack_kernel(int* out) {
  volatile char buffer[512 * 1024];
  buffer[0] = static_cast<char>(threadIdx.x % 100);
  buffer[sizeof(buffer) - 1] = 1;
  __syncthreads();
  out[threadIdx.x] = buffer[0] + buffer[sizeof(buffer) - 1];
}

__global__ void missed_barrier_kernel() {
  if (threadIdx.x != 5) __syncthreads();
}

int failures = 0;

void expect(bool ok, const char* what, int index, int got, int wanted) {
  if (ok) return;
  if (++failures <= 10) std::fprintf(stderr, "%s at %d: got %d, wanted %d\n", what, index, got, wanted);
}

void check_rotation(int blocks) {
  std::vector<int> out(blocks * kThreads, -1);
  launch(rotate_kernel, dim3(blocks), dim3(kThreads), nullptr, out.data(), kRounds);
  for (int b = 0; b < blocks; ++b)
    for (int t = 0; t < kThreads; ++t) {
      const int wanted = (t + kRounds) % kThreads + 1000 * b;
      expect(out[b * kThreads + t] == wanted, "rotation", b * kThreads + t, out[b * kThreads + t], wanted);
    }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "deadlock") == 0) {
    launch(missed_barrier_kernel, dim3(1), dim3(kThreads), nullptr);
    std::printf("fiber driver: the missed barrier went unnoticed\n");
    return 0;
  }
  check_rotation(3);

  std::vector<int> warp(2 * 32 * 4);
  launch(warp_kernel, dim3(1), dim3(64), nullptr, warp.data());
  unsigned every_third = 0;
  for (int lane = 0; lane < 32; lane += 3) every_third |= 1u << lane;
  for (int t = 0; t < 64; ++t) {
    const int lane = t % 32, *row = &warp[t * 4];
    expect(row[0] == 496, "xor-shuffle sum", t, row[0], 496);
    expect(row[1] == (lane < 31 ? lane + 1 : lane) * 10, "shuffle down", t, row[1], (lane < 31 ? lane + 1 : lane) * 10);
    expect(row[2] == 7, "shuffle from lane 0", t, row[2], 7);
    expect(static_cast<unsigned>(row[3]) == every_third, "ballot", t, row[3], static_cast<int>(every_third));
  }

  std::vector<int> deep(kThreads);
  launch(deep_stack_kernel, dim3(1), dim3(kThreads), nullptr, deep.data());
  for (int t = 0; t < kThreads; ++t) expect(deep[t] == t % 100 + 1, "deep stack", t, deep[t], t % 100 + 1);

  std::vector<std::thread> hosts;
  for (int h = 0; h < 3; ++h)
    hosts.emplace_back([] {
      for (int i = 0; i < 4; ++i) check_rotation(2);
    });
  for (std::thread& host : hosts) host.join();

  if (failures) {
    std::printf("fiber driver: %d mismatches\n", failures);
    return 1;
  }
  std::printf("fiber driver: ok\n");
  return 0;
}
