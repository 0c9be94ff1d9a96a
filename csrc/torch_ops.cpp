// Torch glue for the lc4 ops: schemas (registered once), checks, allocation, dtype dispatch,
// and the per-backend registrations. Kernels live in csrc/cpu and csrc/cuda and see only the
// plain params structs of common/params.h. The CUDA kernels register under lc4 for CUDA tensors
// (when built with CUDA) and, through their host emulation, under lc4_emu for CPU tensors.
#include <torch/extension.h>
#include <torch/library.h>

#include <cstdlib>
#include <initializer_list>
#include <string>

#include "common/params.h"
#include "cpu/bf16_matrix_tiles.h"
#include "cpu/cpu_kernels.h"
#include "cuda/launchers.h"

#ifdef LC4_WITH_CUDA
// c10's CUDA headers only (not ATen/cuda/CUDAContext.h, which pulls in cuBLAS, cuSPARSE and
// cuSOLVER): the CUDA build of this file then compiles wherever the CUDA runtime headers are.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include <mutex>
#include <unordered_map>
#endif

namespace lc4 {
namespace {

at::ScalarType accumulation_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

void check_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(at::isFloatingType(t.scalar_type()), name, " must be a floating tensor, got ", t.scalar_type());
}

void check_sample(const at::Tensor& value, const at::Tensor& points) {
  check_float(value, "value");
  check_float(points, "points");
  TORCH_CHECK_VALUE(value.dim() == 6, "value must be (B, T, H, W, G, C), got ", value.sizes());
  TORCH_CHECK_VALUE(points.dim() == 4 && points.size(3) == 3 && points.size(0) == value.size(0) &&
                        points.size(2) == value.size(4),
                    "points must be (B, P, G, 3) matching value ", value.sizes(), ", got ", points.sizes());
  TORCH_CHECK_VALUE(value.size(1) > 0 && value.size(2) > 0 && value.size(3) > 0,
                    "value must have non-empty T, H, W axes, got ", value.sizes());
  TORCH_CHECK_VALUE(value.device() == points.device(), "value and points must be on one device");
}

void check_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& points) {
  for (auto [t, name] : {std::pair{&q, "q"}, {&k, "k"}, {&v, "v"}, {&points, "points"}}) check_float(*t, name);
  TORCH_CHECK_VALUE(q.dim() == 4, "q must be (B, Nq, heads, d), got ", q.sizes());
  TORCH_CHECK_VALUE(k.dim() == 6 && k.size(0) == q.size(0) && k.size(4) == q.size(2) && k.size(5) == q.size(3),
                    "k must be (B, T, H, W, heads, d) matching q ", q.sizes(), ", got ", k.sizes());
  TORCH_CHECK_VALUE(v.sizes() == k.sizes(), "v must have the shape of k ", k.sizes(), ", got ", v.sizes());
  TORCH_CHECK_VALUE(k.size(1) > 0 && k.size(2) > 0 && k.size(3) > 0,
                    "k must have non-empty T, H, W axes, got ", k.sizes());
  TORCH_CHECK_VALUE(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
                    "q, k and v must share one dtype");
  TORCH_CHECK_VALUE(points.dim() == 4 && points.size(3) == 3 && points.size(0) == q.size(0) && points.size(1) > 0,
                    "points must be (B, Nk, G, 3) with Nk > 0, got ", points.sizes());
  TORCH_CHECK_VALUE(points.size(2) > 0 && q.size(2) % points.size(2) == 0,
                    "points must be (B, Nk, G, 3) with G dividing heads=", q.size(2), ", got ", points.sizes());
  for (const at::Tensor* t : {&k, &v, &points})
    TORCH_CHECK_VALUE(t->device() == q.device(), "q, k, v and points must be on one device");
}

SampleParams sample_params(const at::Tensor& value, const at::Tensor& points) {
  SampleParams p;
  p.value = value.data_ptr();
  p.points = points.data_ptr();
  p.B = value.size(0);
  p.T = value.size(1);
  p.H = value.size(2);
  p.W = value.size(3);
  p.G = value.size(4);
  p.C = value.size(5);
  p.P = points.size(1);
  return p;
}

AttentionParams attention_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const at::Tensor& points, double scale) {
  AttentionParams p;
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.points = points.data_ptr();
  p.B = q.size(0);
  p.Nq = q.size(1);
  p.heads = q.size(2);
  p.d = q.size(3);
  p.T = k.size(1);
  p.H = k.size(2);
  p.W = k.size(3);
  p.G = points.size(2);
  p.Nk = points.size(1);
  p.scale = scale;
  p.deterministic = at::globalContext().deterministicAlgorithms();
  return p;
}

// Checked before anything is allocated.
void check_cpu_dtype(at::ScalarType dtype, const char* name) {
  TORCH_CHECK_VALUE(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16, name,
                    ": the cpu backend supports float32, float64, float16 and bfloat16, got ", dtype);
}

// A zeroed buffer of t's shape in the accumulation type, for the kernels to scatter into.
at::Tensor zeroed_accumulator_for(const at::Tensor& t) {
  return at::zeros(t.sizes(), t.options().dtype(accumulation_type(t.scalar_type())));
}

#define LC4_DISPATCH_CPU(dtype, NAME, ...)                                                      \
  [&] {                                                                                         \
    if ((dtype) == at::kFloat) {                                                                \
      using scalar_t = float;                                                                   \
      __VA_ARGS__();                                                                            \
    } else if ((dtype) == at::kDouble) {                                                        \
      using scalar_t = double;                                                                  \
      __VA_ARGS__();                                                                            \
    } else if ((dtype) == at::kHalf) {                                                          \
      using scalar_t = cpu::float16_t;                                                          \
      __VA_ARGS__();                                                                            \
    } else if ((dtype) == at::kBFloat16) {                                                      \
      using scalar_t = c10::BFloat16;                                                           \
      __VA_ARGS__();                                                                            \
    } else {                                                                                    \
      TORCH_INTERNAL_ASSERT(false, NAME, ": dtype not checked by check_cpu_dtype");           \
    }                                                                                           \
  }()

at::Tensor trilinear_sample_cpu(const at::Tensor& value_in, const at::Tensor& points_in) {
  check_sample(value_in, points_in);
  check_cpu_dtype(value_in.scalar_type(), "trilinear_sample");
  const auto value = value_in.contiguous();
  const auto points = points_in.to(accumulation_type(value.scalar_type())).contiguous();
  auto out = at::empty({value.size(0), points.size(1), value.size(4), value.size(5)}, value.options());
  SampleParams p = sample_params(value, points);
  p.out = out.data_ptr();
  LC4_DISPATCH_CPU(value.scalar_type(), "trilinear_sample", [&] { cpu::trilinear_sample_forward<scalar_t>(p); });
  return out;
}

std::tuple<at::Tensor, at::Tensor> trilinear_sample_backward_cpu(const at::Tensor& grad_out, const at::Tensor& value_in,
                                                                 const at::Tensor& points_in) {
  check_sample(value_in, points_in);
  check_cpu_dtype(value_in.scalar_type(), "trilinear_sample_backward");
  const auto value = value_in.contiguous();
  const auto points = points_in.to(accumulation_type(value.scalar_type())).contiguous();
  const auto go = grad_out.to(value.scalar_type()).contiguous();
  TORCH_CHECK_VALUE(go.dim() == 4 && go.size(0) == value.size(0) && go.size(1) == points.size(1) &&
                        go.size(2) == value.size(4) && go.size(3) == value.size(5),
                    "grad_out must be (B, P, G, C), got ", grad_out.sizes());
  auto grad_value = zeroed_accumulator_for(value);
  auto grad_points = at::empty_like(points);
  SampleParams p = sample_params(value, points);
  p.grad_out = go.data_ptr();
  p.grad_value = grad_value.data_ptr();
  p.grad_points = grad_points.data_ptr();
  LC4_DISPATCH_CPU(value.scalar_type(), "trilinear_sample_backward",
                   [&] { cpu::trilinear_sample_backward<scalar_t>(p); });
  return {grad_value.to(value.scalar_type()), grad_points.to(points_in.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor> tda_attention_cpu(const at::Tensor& q_in, const at::Tensor& k_in,
                                                     const at::Tensor& v_in, const at::Tensor& points_in,
                                                     double scale) {
  check_attention(q_in, k_in, v_in, points_in);
  check_cpu_dtype(q_in.scalar_type(), "tda_attention");
  const auto q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  const auto acc = accumulation_type(q.scalar_type());
  const auto points = points_in.to(acc).contiguous();
  auto out = at::empty_like(q);
  auto lse = at::empty({q.size(0), q.size(2), q.size(1)}, q.options().dtype(acc));
  AttentionParams p = attention_params(q, k, v, points, scale);
  p.out = out.data_ptr();
  p.lse = lse.data_ptr();
  LC4_DISPATCH_CPU(q.scalar_type(), "tda_attention", [&] { cpu::tda_attention_forward<scalar_t>(p); });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> tda_attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const at::Tensor& points_in, const at::Tensor& out_in, const at::Tensor& lse_in, double scale) {
  check_attention(q_in, k_in, v_in, points_in);
  check_cpu_dtype(q_in.scalar_type(), "tda_attention_backward");
  const auto q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  const auto acc = accumulation_type(q.scalar_type());
  const auto points = points_in.to(acc).contiguous();
  const auto out = out_in.to(q.scalar_type()).contiguous();
  const auto lse = lse_in.to(acc).contiguous();
  const auto go = grad_out.to(q.scalar_type()).contiguous();
  TORCH_CHECK_VALUE(go.sizes() == q.sizes() && out.sizes() == q.sizes(), "grad_out and out must have q's shape ",
                    q.sizes());
  TORCH_CHECK_VALUE(lse.dim() == 3 && lse.size(0) == q.size(0) && lse.size(1) == q.size(2) && lse.size(2) == q.size(1),
                    "lse must be (B, heads, Nq), got ", lse.sizes());
  auto grad_q = at::empty_like(q);
  auto grad_k = zeroed_accumulator_for(k);
  auto grad_v = zeroed_accumulator_for(v);
  auto grad_points = at::empty_like(points);
  AttentionParams p = attention_params(q, k, v, points, scale);
  p.out = const_cast<void*>(out.data_ptr());
  p.lse = const_cast<void*>(lse.data_ptr());
  p.grad_out = go.data_ptr();
  p.grad_q = grad_q.data_ptr();
  p.grad_k = grad_k.data_ptr();
  p.grad_v = grad_v.data_ptr();
  p.grad_points = grad_points.data_ptr();
  LC4_DISPATCH_CPU(q.scalar_type(), "tda_attention_backward", [&] { cpu::tda_attention_backward<scalar_t>(p); });
  const auto dtype = q.scalar_type();
  return {grad_q, grad_k.to(dtype), grad_v.to(dtype), grad_points.to(points_in.scalar_type())};
}

// ---- CUDA kernels (real, or emulated on the host) ----------------------------------------

// The kernels of one build of csrc/cuda (its Launchers) on one device: the real ones on the
// current CUDA stream, or the host emulation (cuda_emu) on CPU tensors.
template <typename Launchers, typename Device>
struct KernelsOn {
  static constexpr const char* name = Device::name;
  static int arch(const at::Tensor& t) { return Device::arch(t); }
  static void sample_forward(const SampleParams& p, ScalarKind k) {
    Launchers::sample_forward(p, k, Device::stream());
    Device::check_launch();
  }
  static void sample_backward(const SampleParams& p, ScalarKind k, bool det) {
    Launchers::sample_backward(p, k, det, Device::stream());
    Device::check_launch();
  }
  static void attention_forward(const AttentionParams& p, ScalarKind k) {
    Launchers::attention_forward(p, k, Device::stream());
    Device::check_launch();
  }
  static void attention_backward_sampled(const AttentionParams& p, const AttentionScratch& s, ScalarKind k) {
    Launchers::attention_backward_sampled(p, s, k, Device::stream());
    Device::check_launch();
  }
  static void attention_backward_scatter(const AttentionParams& p, const AttentionScratch& s, ScalarKind k) {
    Launchers::attention_backward_scatter(p, s, k, Device::stream());
    Device::check_launch();
  }
  static void attention_corner_table(const AttentionParams& p, int64_t* keys, float* weights) {
    Launchers::attention_corner_table(p, keys, weights, Device::stream());
    Device::check_launch();
  }
};

// LC4_CUDA_FORCE_SM70=1 makes a newer GPU (and the emulation) take the paths a V100 takes (no
// bfloat16), so that they can be tested there.
bool forced_sm70() {
  const char* forced = std::getenv("LC4_CUDA_FORCE_SM70");
  return forced && std::string(forced) == "1";
}

struct HostEmulation {
  static constexpr const char* name = "cuda_emu";
  static int arch(const at::Tensor&) { return forced_sm70() ? 70 : 90; }
  static cudaStream_t stream() { return nullptr; }
  static void check_launch() {}  // the emulation aborts on a bad launch itself
};
using EmulatedKernels = KernelsOn<cuda_emu::Launchers, HostEmulation>;

#ifdef LC4_WITH_CUDA
// The compute capability of a device as major * 10 + minor, asked of the driver once per device.
int device_arch(c10::DeviceIndex device) {
  static std::mutex mutex;
  static std::unordered_map<c10::DeviceIndex, int> archs;
  const std::lock_guard<std::mutex> lock(mutex);
  if (const auto found = archs.find(device); found != archs.end()) return found->second;
  int major = 0, minor = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  return archs[device] = major * 10 + minor;
}

struct CudaDevice {
  static constexpr const char* name = "cuda";
  static int arch(const at::Tensor& t) { return forced_sm70() ? 70 : device_arch(t.get_device()); }
  static cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream().stream(); }
  static void check_launch() { C10_CUDA_KERNEL_LAUNCH_CHECK(); }
};
using CudaKernels = KernelsOn<cuda::Launchers, CudaDevice>;
#endif

template <typename Kernels>
ScalarKind cuda_scalar_kind(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return ScalarKind::f32;
    case at::kHalf: return ScalarKind::f16;
    case at::kBFloat16:
      TORCH_CHECK_VALUE(Kernels::arch(t) >= 80, "the ", Kernels::name,
                        " backend runs bfloat16 on sm_80 and newer only (this device runs the sm_70 paths)");
      return ScalarKind::bf16;
    default:
      TORCH_CHECK_VALUE(false, "the ", Kernels::name, " backend supports float32, float16 and bfloat16, got ",
                        t.scalar_type());
  }
}

// Gradients come back from the kernels in float32; they take the input's dtype here.
at::Tensor float_buffer_for(const at::Tensor& t, bool zeroed) {
  const auto options = t.options().dtype(at::kFloat);
  return zeroed ? at::zeros(t.sizes(), options) : at::empty(t.sizes(), options);
}

struct DeviceGuard {
#ifdef LC4_WITH_CUDA
  explicit DeviceGuard(const at::Tensor& t) {
    if (t.is_cuda()) guard.set_device(t.device());
  }
  c10::cuda::OptionalCUDAGuard guard;
#else
  explicit DeviceGuard(const at::Tensor&) {}
#endif
};

template <typename Kernels>
at::Tensor trilinear_sample_gpu(const at::Tensor& value_in, const at::Tensor& points_in) {
  check_sample(value_in, points_in);
  const DeviceGuard guard(value_in);
  const ScalarKind kind = cuda_scalar_kind<Kernels>(value_in);
  const auto value = value_in.contiguous();
  const auto points = points_in.to(at::kFloat).contiguous();
  auto out = at::empty({value.size(0), points.size(1), value.size(4), value.size(5)}, value.options());
  SampleParams p = sample_params(value, points);
  p.out = out.data_ptr();
  Kernels::sample_forward(p, kind);
  return out;
}

template <typename Kernels>
std::tuple<at::Tensor, at::Tensor> trilinear_sample_backward_gpu(const at::Tensor& grad_out, const at::Tensor& value_in,
                                                                 const at::Tensor& points_in) {
  check_sample(value_in, points_in);
  const DeviceGuard guard(value_in);
  const ScalarKind kind = cuda_scalar_kind<Kernels>(value_in);
  const auto value = value_in.contiguous();
  const auto points = points_in.to(at::kFloat).contiguous();
  const auto go = grad_out.to(value.scalar_type()).contiguous();
  TORCH_CHECK_VALUE(go.dim() == 4 && go.size(0) == value.size(0) && go.size(1) == points.size(1) &&
                        go.size(2) == value.size(4) && go.size(3) == value.size(5),
                    "grad_out must be (B, P, G, C), got ", grad_out.sizes());
  auto grad_value = float_buffer_for(value, /*zeroed=*/true);
  auto grad_points = float_buffer_for(points, /*zeroed=*/false);
  SampleParams p = sample_params(value, points);
  p.grad_out = go.data_ptr();
  p.grad_value = grad_value.data_ptr();
  p.grad_points = grad_points.data_ptr();
  Kernels::sample_backward(p, kind, at::globalContext().deterministicAlgorithms());
  return {grad_value.to(value.scalar_type()), grad_points.to(points_in.scalar_type())};
}

template <typename Kernels>
void check_cuda_head_dim(const at::Tensor& q) {
  TORCH_CHECK_VALUE(q.size(3) <= kCudaMaxHeadDim, "q must have a head dim d <= ", kCudaMaxHeadDim, " for the ",
                    Kernels::name, " backend, got ", q.sizes());
}

// A path switch read on every call: on unless the variable is "0".
bool switched_on(const char* variable) {
  const char* flag = std::getenv(variable);
  return !(flag && std::string(flag) == "0");
}

// The forward samples k~ and v~ once, (B, Nk, heads, d), with the trilinear_sample kernel, and the
// attention kernel reads its key tiles from them; LC4_CUDA_PRESAMPLE=0 keeps the fused kernel
// that samples the keys again for every query block (less memory, far more gathers at large Nq).
bool presample_keys() { return switched_on("LC4_CUDA_PRESAMPLE"); }

// LC4_CUDA_QUERY_SPLITS=n fixes how many blocks share a key block's queries in the backward's
// dk~/dv~ kernel (1: one block per key block, the path the first H200 run measured); unset or 0,
// the launcher chooses. Deterministic mode always uses one.
int64_t forced_query_splits() {
  const char* value = std::getenv("LC4_CUDA_QUERY_SPLITS");
  if (value == nullptr || *value == '\0') return 0;
  char* end = nullptr;
  const long long splits = std::strtoll(value, &end, 10);
  TORCH_CHECK_VALUE(*end == '\0' && splits >= 0, "LC4_CUDA_QUERY_SPLITS must be a non-negative integer, got '",
                    value, "'");
  return splits;
}

// The index in `names` of a path switch's value, read on every call; unset or empty is the first.
int path_choice(const char* variable, std::initializer_list<const char*> names) {
  const char* value = std::getenv(variable);
  const std::string name = value ? value : "";
  if (name.empty()) return 0;
  std::string expected;
  int index = 0;
  for (const char* candidate : names) {
    if (name == candidate) return index;
    const char* separator = index == 0 ? "" : index + 1 == static_cast<int>(names.size()) ? " or " : ", ";
    expected += separator + std::string(candidate);
    ++index;
  }
  TORCH_CHECK_VALUE(false, variable, " must be ", expected, ", got '", name, "'");
}

// LC4_CUDA_FORWARD=registers (the default), two_pass or shared picks the float16/bfloat16 forward
// for d <= 128 (params.h: HalfForward); shared is the path the first H200 run measured, two_pass
// the second's.
HalfForward half_forward() {
  return static_cast<HalfForward>(path_choice("LC4_CUDA_FORWARD", {"registers", "two_pass", "shared"}));
}

// LC4_CUDA_DQ=separate (the default) or fused picks where the float16/bfloat16 backward takes dq
// for d <= 128 (params.h: HalfDq); fused is the path the second H200 run measured.
HalfDq half_dq() { return static_cast<HalfDq>(path_choice("LC4_CUDA_DQ", {"separate", "fused"})); }

// LC4_CUDA_DKV=registers (the default) or shared picks the float16/bfloat16 dk~/dv~ kernel where
// dq has its own, up to d = 80 (params.h: HalfDkv); shared is the kernel the H200 runs measured.
HalfDkv half_dkv() { return static_cast<HalfDkv>(path_choice("LC4_CUDA_DKV", {"registers", "shared"})); }

// LC4_CUDA_SCATTER=segments (the default) or atomic picks how the backward scatters dk~, dv~ into
// dk, dv (params.h: Scatter); atomic is the path the H200 runs measured, refused when deterministic.
Scatter scatter_path(bool deterministic) {
  const auto scatter = static_cast<Scatter>(path_choice("LC4_CUDA_SCATTER", {"segments", "atomic"}));
  TORCH_CHECK(!(deterministic && scatter == Scatter::kAtomic), "LC4_CUDA_SCATTER=atomic: the atomic scatter is not ",
              "deterministic, but torch.use_deterministic_algorithms(True) is set; unset one of them");
  return scatter;
}

// LC4_CUDA_PREFETCH=on (the default) or off: whether the float16/bfloat16 tile kernels load the
// next tile during the current one's products (params.h: prefetch); off is the path before it.
bool prefetch_tiles() { return path_choice("LC4_CUDA_PREFETCH", {"on", "off"}) == 0; }

template <typename Kernels>
at::Tensor sample_keys(const at::Tensor& map, const at::Tensor& points, ScalarKind kind) {
  // map (B, T, H, W, heads, d), contiguous, seen as (B, T, H, W, G, heads / G * d).
  auto sampled = at::empty({map.size(0), points.size(1), map.size(4), map.size(5)}, map.options());
  if (sampled.numel() == 0) return sampled;
  const int64_t groups = points.size(2);
  const auto grouped = map.view({map.size(0), map.size(1), map.size(2), map.size(3), groups,
                                 map.size(4) / groups * map.size(5)});
  SampleParams p = sample_params(grouped, points);
  p.out = sampled.data_ptr();
  Kernels::sample_forward(p, kind);
  return sampled;
}

template <typename Kernels>
std::tuple<at::Tensor, at::Tensor> tda_attention_gpu(const at::Tensor& q_in, const at::Tensor& k_in,
                                                     const at::Tensor& v_in, const at::Tensor& points_in,
                                                     double scale) {
  check_attention(q_in, k_in, v_in, points_in);
  check_cuda_head_dim<Kernels>(q_in);
  const DeviceGuard guard(q_in);
  const ScalarKind kind = cuda_scalar_kind<Kernels>(q_in);
  const auto q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  const auto points = points_in.to(at::kFloat).contiguous();
  auto out = at::empty_like(q);
  auto lse = at::empty({q.size(0), q.size(2), q.size(1)}, q.options().dtype(at::kFloat));
  AttentionParams p = attention_params(q, k, v, points, scale);
  p.out = out.data_ptr();
  p.lse = lse.data_ptr();
  p.half_forward = half_forward();
  p.prefetch = prefetch_tiles();
  at::Tensor k_sampled, v_sampled;
  if (presample_keys() && q.size(1) > 0) {
    k_sampled = sample_keys<Kernels>(k, points, kind);
    v_sampled = sample_keys<Kernels>(v, points, kind);
    p.k_sampled = k_sampled.data_ptr();
    p.v_sampled = v_sampled.data_ptr();
  }
  Kernels::attention_forward(p, kind);
  return {out, lse};
}

template <typename Kernels>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> tda_attention_backward_gpu(
    const at::Tensor& grad_out, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const at::Tensor& points_in, const at::Tensor& out_in, const at::Tensor& lse_in, double scale) {
  check_attention(q_in, k_in, v_in, points_in);
  check_cuda_head_dim<Kernels>(q_in);
  const DeviceGuard guard(q_in);
  const ScalarKind kind = cuda_scalar_kind<Kernels>(q_in);
  const auto q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  const auto points = points_in.to(at::kFloat).contiguous();
  const auto out = out_in.to(q.scalar_type()).contiguous();
  const auto lse = lse_in.to(at::kFloat).contiguous();
  const auto go = grad_out.to(q.scalar_type()).contiguous();
  TORCH_CHECK_VALUE(go.sizes() == q.sizes() && out.sizes() == q.sizes(), "grad_out and out must have q's shape ",
                    q.sizes());
  TORCH_CHECK_VALUE(lse.dim() == 3 && lse.size(0) == q.size(0) && lse.size(1) == q.size(2) && lse.size(2) == q.size(1),
                    "lse must be (B, heads, Nq), got ", lse.sizes());
  AttentionParams p = attention_params(q, k, v, points, scale);
  p.query_splits = forced_query_splits();
  p.half_dq = half_dq();
  p.half_dkv = half_dkv();
  p.prefetch = prefetch_tiles();
  p.scatter = scatter_path(p.deterministic);
  // The separate dq kernel reads k~ and v~ sampled beforehand and writes each dq element once.
  const bool separate_dq = kind != ScalarKind::f32 && separate_half_dq(p) && q.size(1) > 0;
  at::Tensor k_sampled, v_sampled;
  if (separate_dq) {
    k_sampled = sample_keys<Kernels>(k, points, kind);
    v_sampled = sample_keys<Kernels>(v, points, kind);
    p.k_sampled = k_sampled.data_ptr();
    p.v_sampled = v_sampled.data_ptr();
  }
  // The separate dq kernel writes dq once, in q's dtype; elsewhere atomics or the float kernels add into float32.
  auto grad_q = separate_dq ? at::empty_like(q) : float_buffer_for(q, /*zeroed=*/!p.deterministic);
  const auto float_options = q.options().dtype(at::kFloat);
  auto delta = at::empty({q.size(0), q.size(2), q.size(1)}, float_options);
  // dk~ and dv~ in one zeroed buffer: the dk~/dv~ kernel's blocks add their shares of the queries.
  auto grad_kv_sampled = at::zeros({2, q.size(0), q.size(2), points.size(1), q.size(3)}, float_options);
  AttentionScratch s;
  s.delta = delta.data_ptr<float>();
  s.grad_k_sampled = grad_kv_sampled[0].data_ptr<float>();
  s.grad_v_sampled = grad_kv_sampled[1].data_ptr<float>();
  p.out = const_cast<void*>(out.data_ptr());
  p.lse = const_cast<void*>(lse.data_ptr());
  p.grad_out = go.data_ptr();
  p.grad_q = grad_q.data_ptr();
  Kernels::attention_backward_sampled(p, s, kind);
  // k~, v~ and delta are done with: freed before dk and dv, the backward's largest buffers, are
  // allocated (the allocator's stream order keeps the kernels that read them safe).
  k_sampled.reset(), v_sampled.reset(), delta.reset();
  p.k_sampled = p.v_sampled = nullptr, s.delta = nullptr;
  // The segment scatter writes each voxel once, in the inputs' dtype; atomics add into float32.
  const bool segments = scatters_by_segments(p);
  // With segments, dk~ and dv~ go on in the inputs' dtype (as SDPA returns them), replacing the
  // float32 accumulators: at d = 160 (the 16x16 layer) these weigh as much as dk and dv.
  if (segments && kind != ScalarKind::f32) {
    grad_kv_sampled = grad_kv_sampled.to(q.scalar_type());
    s.grad_k_sampled = s.grad_v_sampled = nullptr;
    s.sampled_grads_in_input_dtype = true;
  }
  s.scatter_grad_k_sampled = grad_kv_sampled[0].data_ptr();
  s.scatter_grad_v_sampled = grad_kv_sampled[1].data_ptr();
  auto grad_k = segments ? at::zeros_like(k) : float_buffer_for(k, /*zeroed=*/true);
  auto grad_v = segments ? at::zeros_like(v) : float_buffer_for(v, /*zeroed=*/true);
  // Without heads the launchers return at once, leaving dpoints to this zero fill.
  auto grad_points = float_buffer_for(points, /*zeroed=*/p.heads == 0);
  at::Tensor corner_weights, sorted_corner_keys, sorted_corner_entries;
  if (segments) {
    const int64_t entries = points.size(0) * points.size(1) * points.size(2) * 8;
    auto corner_keys = at::empty({entries}, q.options().dtype(at::kLong));
    corner_weights = at::empty({entries}, float_options);
    Kernels::attention_corner_table(p, corner_keys.data_ptr<int64_t>(), corner_weights.data_ptr<float>());
    std::tie(sorted_corner_keys, sorted_corner_entries) =
        at::sort(corner_keys, /*stable=*/std::optional<bool>(true), /*dim=*/0);
    s.corner_weights = corner_weights.data_ptr<float>();
    s.sorted_corner_keys = sorted_corner_keys.data_ptr<int64_t>();
    s.sorted_corner_entries = sorted_corner_entries.data_ptr<int64_t>();
  }
  p.grad_k = grad_k.data_ptr();
  p.grad_v = grad_v.data_ptr();
  p.grad_points = grad_points.data_ptr();
  Kernels::attention_backward_scatter(p, s, kind);
  const auto dtype = q.scalar_type();
  return {grad_q.to(dtype), grad_k.to(dtype), grad_v.to(dtype), grad_points.to(points_in.scalar_type())};
}

#define LC4_DEFINE_OP_SCHEMAS(m)                                                                            \
  m.def("trilinear_sample(Tensor value, Tensor points) -> Tensor");                                         \
  m.def("trilinear_sample_backward(Tensor grad_out, Tensor value, Tensor points) -> (Tensor, Tensor)");     \
  m.def("tda_attention(Tensor q, Tensor k, Tensor v, Tensor points, float scale) -> (Tensor, Tensor)");     \
  m.def(                                                                                                    \
      "tda_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor points, Tensor out, "   \
      "Tensor lse, float scale) -> (Tensor, Tensor, Tensor, Tensor)")

#define LC4_IMPL_GPU_OPS(m, Kernels)                                                  \
  m.impl("trilinear_sample", &trilinear_sample_gpu<Kernels>);                          \
  m.impl("trilinear_sample_backward", &trilinear_sample_backward_gpu<Kernels>);        \
  m.impl("tda_attention", &tda_attention_gpu<Kernels>);                                \
  m.impl("tda_attention_backward", &tda_attention_backward_gpu<Kernels>)

}  // namespace

TORCH_LIBRARY(lc4, m) { LC4_DEFINE_OP_SCHEMAS(m); }

// The host emulation of the CUDA kernels runs on CPU tensors, so it needs ops of its own.
TORCH_LIBRARY(lc4_emu, m) { LC4_DEFINE_OP_SCHEMAS(m); }

TORCH_LIBRARY_IMPL(lc4, CPU, m) {
  m.impl("trilinear_sample", &trilinear_sample_cpu);
  m.impl("trilinear_sample_backward", &trilinear_sample_backward_cpu);
  m.impl("tda_attention", &tda_attention_cpu);
  m.impl("tda_attention_backward", &tda_attention_backward_cpu);
}

TORCH_LIBRARY_IMPL(lc4_emu, CPU, m) { LC4_IMPL_GPU_OPS(m, EmulatedKernels); }

#ifdef LC4_WITH_CUDA
TORCH_LIBRARY_IMPL(lc4, CUDA, m) { LC4_IMPL_GPU_OPS(m, CudaKernels); }
#endif

}  // namespace lc4

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "lc4 compiled ops (torch.ops.lc4; the emulated CUDA kernels under torch.ops.lc4_emu)";
#ifdef LC4_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
  m.def("cpu_bf16_matrix_tiles", &lc4::cpu::bf16_brgemm_enabled,
        "Whether the cpu backend's bfloat16 forward multiplies its tiles in bfloat16 on the CPU's matrix units "
        "(torch's oneDNN brgemm microkernel) here, given LC4_CPU_BRGEMM");
}
