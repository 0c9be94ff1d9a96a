// The kernels of cuda/trilinear_sample.cu built by the host compiler into the cuda_emu backend.
#include "cuda/trilinear_sample.cu"
