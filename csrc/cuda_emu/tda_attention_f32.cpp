// The kernels of cuda/tda_attention_f32.cu built by the host compiler into the cuda_emu backend.
#include "cuda/tda_attention_f32.cu"
