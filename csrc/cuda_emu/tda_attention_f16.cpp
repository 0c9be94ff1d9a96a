// The kernels of cuda/tda_attention_f16.cu built by the host compiler into the cuda_emu backend.
#include "cuda/tda_attention_f16.cu"
