// Keeps the BLAS behind at::mm single-threaded on the calling thread while tile products run
// inside at::parallel_for. Without it MKL may split a tile product over threads when the
// process called torch.set_num_threads, which changes the summation order and so the bits of
// the result. The MKL symbol is looked up weakly: torch builds without MKL (other BLAS, other
// CPUs) simply skip it.
#pragma once

// MKL's C entry point (the lower-case name is the Fortran one, which takes a pointer).
extern "C" int MKL_Set_Num_Threads_Local(int) __attribute__((weak));

namespace lc4::cpu {

class SequentialBlasScope {
 public:
  SequentialBlasScope() : previous_(MKL_Set_Num_Threads_Local ? MKL_Set_Num_Threads_Local(1) : 0) {}
  ~SequentialBlasScope() {
    // 0 restores the global setting, which is what "previous == 0" means too.
    if (MKL_Set_Num_Threads_Local) MKL_Set_Num_Threads_Local(previous_);
  }
  SequentialBlasScope(const SequentialBlasScope&) = delete;
  SequentialBlasScope& operator=(const SequentialBlasScope&) = delete;

 private:
  int previous_;
};

}  // namespace lc4::cpu
