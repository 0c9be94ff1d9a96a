// The threads of an emulated block as fibers of one host thread (emulation.h's default): a
// thread runs until it waits at a barrier, then the next one runs. One host thread per CUDA
// thread is the faithful model for ThreadSanitizer, but there every barrier costs a kernel
// context switch per thread (hundreds of threads on a few cores); a fiber switch stays in user
// space. A barrier that some threads never reach is reported as a deadlock, not a hang.
//
// The switch is a few instructions of inline assembly on x86-64 and aarch64 (glibc's
// swapcontext saves the signal mask with a system call and the x87 environment on every switch,
// which made it cost more than the kernels it switched between); elsewhere, or with
// LC4_EMU_UCONTEXT defined, it is swapcontext.
#pragma once

#include <sys/mman.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>

#if !defined(LC4_EMU_UCONTEXT) && !defined(__x86_64__) && !defined(__aarch64__)
#define LC4_EMU_UCONTEXT 1
#endif
#ifdef LC4_EMU_UCONTEXT
#include <ucontext.h>
#endif

namespace lc4::emu {

[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "cuda_emu: %s\n", what);
  std::abort();
}

}  // namespace lc4::emu

namespace lc4::emu::fibers {

#ifndef LC4_EMU_UCONTEXT
// Saves the running fiber's stack pointer in *save and continues the fiber whose stack pointer
// is target. Every register the ABI lets a call clobber is declared clobbered, so the compiler
// keeps nothing in them across the switch; the callee-saved ones it must then save itself, except
// the frame pointer, which is pushed here with the address to resume at. A fiber that has not
// run yet has the two pushed words made up (see Scheduler::start).
inline void switch_to(void** save, void* target) {
#if defined(__x86_64__)
  register void** save_register asm("rdi") = save;
  register void* target_register asm("rsi") = target;
  asm volatile(
      "subq $128, %%rsp\n\t"  // past the red zone, which the surrounding function may use
      "leaq 1f(%%rip), %%rax\n\t"
      "pushq %%rax\n\t"
      "pushq %%rbp\n\t"
      "movq %%rsp, (%%rdi)\n\t"
      "movq %%rsi, %%rsp\n\t"
      "popq %%rbp\n\t"
      "popq %%rax\n\t"
      "jmpq *%%rax\n"
      "1:\n\t"
      "addq $128, %%rsp\n\t"
      : "+r"(save_register), "+r"(target_register)
      :
      : "rax", "rbx", "rcx", "rdx", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "xmm0", "xmm1", "xmm2",
        "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15",
#ifdef __AVX512F__
        "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23", "xmm24", "xmm25", "xmm26", "xmm27",
        "xmm28", "xmm29", "xmm30", "xmm31", "k1", "k2", "k3", "k4", "k5", "k6", "k7",
#endif
        "memory", "cc");
#elif defined(__aarch64__)
  register void** save_register asm("x0") = save;
  register void* target_register asm("x1") = target;
  asm volatile(
      "adr x16, 1f\n\t"
      "sub sp, sp, #16\n\t"
      "stp x29, x16, [sp]\n\t"
      "mov x16, sp\n\t"
      "str x16, [x0]\n\t"
      "mov sp, x1\n\t"
      "ldp x29, x16, [sp]\n\t"
      "add sp, sp, #16\n\t"
      "br x16\n"  // x16: a branch that a function's `bti c` landing pad accepts
      "1:\n\t"
      "hint #36\n\t"  // bti j: the landing pad of the branch above
      : "+r"(save_register), "+r"(target_register)
      :
      : "x2", "x3", "x4", "x5", "x6", "x7", "x8", "x9", "x10", "x11", "x12", "x13", "x14", "x15", "x16", "x17", "x18",
        "x19", "x20", "x21", "x22", "x23", "x24", "x25", "x26", "x27", "x28", "x30", "v0", "v1", "v2", "v3", "v4",
        "v5", "v6", "v7", "v8", "v9", "v10", "v11", "v12", "v13", "v14", "v15", "v16", "v17", "v18", "v19", "v20",
        "v21", "v22", "v23", "v24", "v25", "v26", "v27", "v28", "v29", "v30", "v31",
#ifdef __ARM_FEATURE_SVE
        "p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8", "p9", "p10", "p11", "p12", "p13", "p14", "p15", "ffr",
#endif
        "memory", "cc");
#endif
}
#endif

class Scheduler;
inline thread_local Scheduler* running_scheduler = nullptr;

// The fibers of one block. run() resumes the unfinished fibers in turn; a fiber gives control
// back with yield() when it has to wait. Progress counts the arrivals at barriers and the
// fibers that finished: a whole round of resumes without progress is a deadlock.
class Scheduler {
 public:
  explicit Scheduler(int threads) : threads_(threads), fibers_(new Fiber[threads]), stacks_(stacks_for(threads)) {}
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Runs body(t) for every thread t as a fiber until all have returned; enter(t) is called
  // before each resume of thread t (to set the thread's emulated registers).
  template <typename Body, typename Enter>
  void run(Body& body, Enter& enter) {
    body_ = &body;
    call_body_ = [](void* b, int t) { (*static_cast<Body*>(b))(t); };
    Scheduler* outer = running_scheduler;
    running_scheduler = this;
    for (int t = 0; t < threads_; ++t) start(t);
    int live = threads_;
    while (live > 0) {
      const std::uint64_t progress_before_round = progress_;
      for (int t = 0; t < threads_; ++t) {
        if (fibers_[t].finished) continue;
        current_ = t;
        enter(t);
        resume(t);
        if (fibers_[t].finished) --live;
      }
      if (live > 0 && progress_ == progress_before_round)
        fail("deadlock: the threads of a block wait at barriers that the others never reach");
    }
    running_scheduler = outer;
  }

  void yield() {
#ifdef LC4_EMU_UCONTEXT
    if (swapcontext(&fibers_[current_].context, &scheduler_context_) != 0) fail("swapcontext failed");
#else
    switch_to(&fibers_[current_].stack_pointer, scheduler_stack_pointer_);
#endif
  }
  void note_progress() { ++progress_; }

 private:
  struct Fiber {
#ifdef LC4_EMU_UCONTEXT
    ucontext_t context;
#else
    void* stack_pointer = nullptr;
#endif
    bool finished = true;
  };

  // Large enough for the kernels' per-thread arrays; only the pages a fiber touches are backed.
  static constexpr std::size_t kStackBytes = std::size_t(1) << 20;
  static constexpr std::size_t kGuardBytes = 1 << 16;  // no access below each stack: an overflow faults
  static constexpr std::size_t kSlotBytes = kStackBytes + kGuardBytes;

  // The stacks of `threads` fibers. They stay mapped for the host thread's next launches (a
  // mapping with a guard page per stack costs a system call per thread, as much as a small
  // kernel's launch), and grow when a launch has more threads than any before it.
  static char* stacks_for(int threads) {
    struct Stacks {
      char* memory = nullptr;
      int threads = 0;
      ~Stacks() {
        if (memory) munmap(memory, static_cast<std::size_t>(threads) * kSlotBytes);
      }
    };
    static thread_local Stacks stacks;
    if (threads <= stacks.threads) return stacks.memory;
    if (stacks.memory) munmap(stacks.memory, static_cast<std::size_t>(stacks.threads) * kSlotBytes);
    stacks.memory = nullptr, stacks.threads = 0;
    void* memory = mmap(nullptr, static_cast<std::size_t>(threads) * kSlotBytes, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (memory == MAP_FAILED) fail("could not map the stacks of the block's threads");
    for (int t = 0; t < threads; ++t)
      if (mprotect(static_cast<char*>(memory) + t * kSlotBytes, kGuardBytes, PROT_NONE) != 0)
        fail("could not guard a stack");
    stacks.memory = static_cast<char*>(memory), stacks.threads = threads;
    return stacks.memory;
  }
  char* stack_bottom(int t) const { return stacks_ + static_cast<std::size_t>(t) * kSlotBytes + kGuardBytes; }

  // Where a fiber begins: the body, then back to the scheduler for good (nothing can unwind
  // past this frame, hence noexcept: an exception ends the process here).
  static void entry() noexcept {
    Scheduler& s = *running_scheduler;
    s.call_body_(s.body_, s.current_);
    s.fibers_[s.current_].finished = true;
    ++s.progress_;
#ifndef LC4_EMU_UCONTEXT
    void* unused;
    switch_to(&unused, s.scheduler_stack_pointer_);
    fail("a finished thread was resumed");
#endif
  }  // ucontext: returns to uc_link, the scheduler

  void start(int t) {
    Fiber& fiber = fibers_[t];
    fiber.finished = false;
#ifdef LC4_EMU_UCONTEXT
    if (getcontext(&fiber.context) != 0) fail("getcontext failed");
    fiber.context.uc_stack.ss_sp = stack_bottom(t);
    fiber.context.uc_stack.ss_size = kStackBytes;
    fiber.context.uc_link = &scheduler_context_;
    makecontext(&fiber.context, &entry, 0);
#else
    // The two words switch_to pops: a null frame pointer and entry as the address to go on at,
    // placed so that entry starts with the stack aligned as after a call (x86-64: 8 past a
    // multiple of 16, at a null return address; aarch64: a multiple of 16).
    char* top = stack_bottom(t) + kStackBytes;
#if defined(__x86_64__)
    void** words = reinterpret_cast<void**>(top - 24);
    words[2] = nullptr;
#else
    void** words = reinterpret_cast<void**>(top - 16);
#endif
    words[0] = nullptr;
    words[1] = reinterpret_cast<void*>(&entry);
    fiber.stack_pointer = words;
#endif
  }

  void resume(int t) {
#ifdef LC4_EMU_UCONTEXT
    if (swapcontext(&scheduler_context_, &fibers_[t].context) != 0) fail("swapcontext failed");
#else
    switch_to(&scheduler_stack_pointer_, fibers_[t].stack_pointer);
#endif
  }

  int threads_;
  std::unique_ptr<Fiber[]> fibers_;
  char* stacks_;  // owned by stacks_for
#ifdef LC4_EMU_UCONTEXT
  ucontext_t scheduler_context_;
#else
  void* scheduler_stack_pointer_ = nullptr;
#endif
  void* body_ = nullptr;
  void (*call_body_)(void*, int) = nullptr;
  int current_ = 0;
  std::uint64_t progress_ = 0;
};

// A barrier of `count` fibers of the running scheduler: the last to arrive opens it and goes
// on; the others yield until the phase they arrived in has ended.
class Barrier {
 public:
  explicit Barrier(int count) : count_(count) {}

  void arrive_and_wait() {
    Scheduler& scheduler = *running_scheduler;
    scheduler.note_progress();
    if (++arrived_ == count_) {
      arrived_ = 0;
      ++phase_;
      return;
    }
    const std::uint64_t phase = phase_;
    while (phase_ == phase) scheduler.yield();
  }

 private:
  int count_;
  int arrived_ = 0;
  std::uint64_t phase_ = 0;
};

}  // namespace lc4::emu::fibers
