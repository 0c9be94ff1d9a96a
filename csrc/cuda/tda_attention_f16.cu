// __half instantiations of the attention kernels, every head-dim bucket (head_dims.h).
#include "cuda/tda_attention_dtype.cuh"

namespace lc4::LC4_CUDA_NS {
LC4_INSTANTIATE_ATTENTION(__half)
}  // namespace lc4::LC4_CUDA_NS
