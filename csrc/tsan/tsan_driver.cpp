// Standalone driver (no torch) that runs the emulated CUDA kernels on small problems, for the
// ThreadSanitizer build of tests/kernels/test_cuda_tsan.py: a missing barrier between threads of a
// block shows as a data race. It also checks the forward against a direct float64 computation and
// the atomic backward against the deterministic one, in float32 and in float16 (both register
// tensor-core forwards, both WMMA dk~/dv~ kernels with their queries split between two blocks,
// the separate WMMA dq kernel, the atomic and the segment scatter), and exits non-zero on a
// mismatch.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <vector>

#include "common/trilinear_math.h"
#include "cuda/emulated_half.h"
#include "cuda/launchers.h"

namespace {

struct Random {
  uint64_t state = 12345;
  float next() {  // uniform in [-1, 1)
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<float>((state >> 40) & 0xffffff) / 8388608.0f - 1.0f;
  }
};

std::vector<uint16_t> to_half(const std::vector<float>& x) {
  std::vector<uint16_t> h(x.size());
  for (size_t i = 0; i < x.size(); ++i) h[i] = lc4::emu::float_to_half_bits(x[i]);
  return h;
}

std::vector<float> from_half(const std::vector<uint16_t>& h) {
  std::vector<float> x(h.size());
  for (size_t i = 0; i < h.size(); ++i) x[i] = lc4::emu::half_bits_to_float(h[i]);
  return x;
}

bool close(const std::vector<float>& a, const std::vector<float>& b, float tolerance, const char* what) {
  for (size_t i = 0; i < a.size(); ++i) {
    if (!(std::fabs(a[i] - b[i]) <= tolerance * (1.f + std::fabs(b[i])))) {
      std::fprintf(stderr, "%s differs at %zu: %g vs %g\n", what, i, a[i], b[i]);
      return false;
    }
  }
  return true;
}

}  // namespace

int main() {
  using namespace lc4;
  const int64_t B = 1, Nq = 37, Nk = 45, heads = 2, d = 40, G = 1, T = 2, H = 3, W = 4;
  const int64_t voxels = T * H * W;
  Random rng;
  auto fill = [&](int64_t n, float scale, float shift) {
    std::vector<float> v(n);
    for (float& x : v) x = rng.next() * scale + shift;
    return v;
  };
  std::vector<float> q = fill(B * Nq * heads * d, 1.f, 0.f), k = fill(B * voxels * heads * d, 1.f, 0.f),
                     v = fill(B * voxels * heads * d, 1.f, 0.f), points(B * Nk * G * 3);
  for (int64_t n = 0; n < B * Nk * G; ++n) {  // inside and up to a pixel outside each axis
    points[n * 3] = (rng.next() + 1.f) * 0.5f * (W + 1) - 1.f;
    points[n * 3 + 1] = (rng.next() + 1.f) * 0.5f * (H + 1) - 1.f;
    points[n * 3 + 2] = (rng.next() + 1.f) * 0.5f * (T + 1) - 1.f;
  }
  std::vector<float> out(q.size()), lse(B * heads * Nq), grad_out = fill(q.size(), 1.f, 0.f);

  AttentionParams p;
  p.q = q.data(), p.k = k.data(), p.v = v.data(), p.points = points.data(), p.out = out.data(), p.lse = lse.data();
  p.B = B, p.Nq = Nq, p.Nk = Nk, p.heads = heads, p.G = G, p.d = d, p.T = T, p.H = H, p.W = W;
  p.scale = 1.0 / std::sqrt(static_cast<double>(d));
  cuda_emu::tda_attention_forward(p, ScalarKind::f32, nullptr);

  // Direct float64 forward.
  std::vector<float> expected(out.size());
  for (int64_t h = 0; h < heads; ++h) {
    std::vector<double> ks(Nk * d, 0.0), vs(Nk * d, 0.0);
    for (int64_t n = 0; n < Nk; ++n) {
      TrilinearPoint<float> tp;
      trilinear_point(points[n * 3], points[n * 3 + 1], points[n * 3 + 2], T, H, W, tp);
      for (int c = 0; c < 8; ++c)
        for (int64_t e = 0; tp.valid[c] && e < d; ++e) {
          ks[n * d + e] += tp.weight[c] * k[(tp.voxel[c] * heads + h) * d + e];
          vs[n * d + e] += tp.weight[c] * v[(tp.voxel[c] * heads + h) * d + e];
        }
    }
    for (int64_t i = 0; i < Nq; ++i) {
      std::vector<double> s(Nk);
      double top = -1e300, sum = 0;
      for (int64_t n = 0; n < Nk; ++n) {
        s[n] = 0;
        for (int64_t e = 0; e < d; ++e) s[n] += q[(i * heads + h) * d + e] * ks[n * d + e] * p.scale;
        top = std::max(top, s[n]);
      }
      for (double& x : s) sum += x = std::exp(x - top);
      for (int64_t e = 0; e < d; ++e) {
        double o = 0;
        for (int64_t n = 0; n < Nk; ++n) o += s[n] / sum * vs[n * d + e];
        expected[(i * heads + h) * d + e] = static_cast<float>(o);
      }
    }
  }
  bool ok = close(out, expected, 1e-5f, "forward");

  // All gradients of one backward from the forward's params (grad_out in the inputs' dtype); the
  // atomic path splits the queries of each key block between two dk~/dv~ blocks. The corner table
  // of the segment scatter is sorted here, as the glue sorts it with torch.
  auto backward = [&](const AttentionParams& forward, const void* grad_out_data, ScalarKind kind, bool deterministic) {
    std::vector<float> dq(q.size(), 0.f), dk(k.size(), 0.f), dv(v.size(), 0.f), dpoints(points.size());
    std::vector<float> delta(B * heads * Nq), dk_s(B * heads * Nk * d, 0.f), dv_s(B * heads * Nk * d, 0.f);
    AttentionParams pb = forward;
    pb.grad_out = grad_out_data, pb.grad_q = dq.data(), pb.grad_k = dk.data(), pb.grad_v = dv.data();
    pb.grad_points = dpoints.data(), pb.deterministic = deterministic, pb.query_splits = 2;
    AttentionScratch s{delta.data(), dk_s.data(), dv_s.data()};
    s.scatter_grad_k_sampled = dk_s.data(), s.scatter_grad_v_sampled = dv_s.data();  // dk~, dv~ kept in float32
    // float16 gradients the kernels write in the inputs' dtype: dq (separate dq kernel), dk and dv (segments).
    std::vector<uint16_t> dq16(q.size()), dk16(k.size()), dv16(v.size());
    const bool dq_in_half = kind == ScalarKind::f16 && separate_half_dq(pb);
    const bool maps_in_half = kind == ScalarKind::f16 && scatters_by_segments(pb);
    if (dq_in_half) pb.grad_q = dq16.data();
    if (maps_in_half) pb.grad_k = dk16.data(), pb.grad_v = dv16.data();
    const int64_t entries = B * Nk * G * 8;
    std::vector<int64_t> keys(entries), sorted_keys(entries), order(entries);
    std::vector<float> weights(entries);
    if (scatters_by_segments(pb)) {
      cuda_emu::tda_attention_corner_table(pb, keys.data(), weights.data(), nullptr);
      std::iota(order.begin(), order.end(), int64_t{0});
      std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return keys[a] < keys[b]; });
      for (int64_t e = 0; e < entries; ++e) sorted_keys[e] = keys[order[e]];
      s.corner_weights = weights.data(), s.sorted_corner_keys = sorted_keys.data(),
      s.sorted_corner_entries = order.data();
    }
    cuda_emu::tda_attention_backward_sampled(pb, s, kind, nullptr);
    cuda_emu::tda_attention_backward_scatter(pb, s, kind, nullptr);
    if (dq_in_half) dq = from_half(dq16);
    if (maps_in_half) dk = from_half(dk16), dv = from_half(dv16);
    std::vector<float> all;
    for (const auto* g : {&dq, &dk, &dv, &dpoints}) all.insert(all.end(), g->begin(), g->end());
    return all;
  };
  AttentionParams atomic = p;
  atomic.scatter = Scatter::kAtomic;
  const std::vector<float> deterministic32 = backward(p, grad_out.data(), ScalarKind::f32, true);
  ok = close(backward(atomic, grad_out.data(), ScalarKind::f32, false), deterministic32, 1e-4f,
             "atomic vs deterministic backward") && ok;
  ok = close(backward(p, grad_out.data(), ScalarKind::f32, false), deterministic32, 1e-4f,
             "segment scatter (split queries) vs deterministic backward") && ok;

  // float16: the register forwards, one pass (O rescaled by rows across Nk = 45, two key tiles)
  // and two (keys sampled in the kernel), and the WMMA backward.
  std::vector<uint16_t> q16 = to_half(q), k16 = to_half(k), v16 = to_half(v), grad_out16 = to_half(grad_out);
  std::vector<uint16_t> out16(out.size());
  AttentionParams ph = p;
  ph.q = q16.data(), ph.k = k16.data(), ph.v = v16.data(), ph.out = out16.data();
  ph.half_forward = HalfForward::kTwoPass;
  cuda_emu::tda_attention_forward(ph, ScalarKind::f16, nullptr);
  ok = close(from_half(out16), expected, 1e-2f, "float16 two-pass forward") && ok;
  ph.half_forward = HalfForward::kRegisters;
  cuda_emu::tda_attention_forward(ph, ScalarKind::f16, nullptr);
  ok = close(from_half(out16), expected, 1e-2f, "float16 one-pass forward") && ok;
  ph.half_dq = HalfDq::kFused;
  const std::vector<float> fused_deterministic = backward(ph, grad_out16.data(), ScalarKind::f16, true);
  AttentionParams ph_atomic = ph;
  ph_atomic.scatter = Scatter::kAtomic;
  ok = close(backward(ph_atomic, grad_out16.data(), ScalarKind::f16, false), fused_deterministic, 1e-3f,
             "float16 atomic vs deterministic backward") && ok;

  // float16 with the separate tensor-core dq kernel (it writes delta too), over k~ and v~ sampled
  // beforehand as the glue does.
  auto sample_half = [&](const std::vector<uint16_t>& map) {
    std::vector<uint16_t> sampled(B * Nk * heads * d);
    SampleParams sp;
    sp.value = map.data(), sp.points = points.data(), sp.out = sampled.data();
    sp.B = B, sp.T = T, sp.H = H, sp.W = W, sp.G = G, sp.C = heads / G * d, sp.P = Nk;
    cuda_emu::trilinear_sample_forward(sp, ScalarKind::f16, nullptr);
    return sampled;
  };
  const std::vector<uint16_t> k_sampled16 = sample_half(k16), v_sampled16 = sample_half(v16);
  AttentionParams separate = ph;
  separate.half_dq = HalfDq::kSeparate;
  separate.k_sampled = k_sampled16.data(), separate.v_sampled = v_sampled16.data();
  ok = close(backward(separate, grad_out16.data(), ScalarKind::f16, false), fused_deterministic, 1e-3f,
             "float16 separate dq, register dk~/dv~ vs deterministic fused backward") && ok;
  separate.half_dkv = HalfDkv::kShared;
  ok = close(backward(separate, grad_out16.data(), ScalarKind::f16, false), fused_deterministic, 1e-3f,
             "float16 separate dq, shared dk~/dv~ vs deterministic fused backward") && ok;
  // The tile kernels with and without the next tile loaded during the current one's products.
  AttentionParams loaded_in_turn = separate;
  loaded_in_turn.half_dkv = HalfDkv::kRegisters;
  loaded_in_turn.prefetch = false;
  ok = close(backward(loaded_in_turn, grad_out16.data(), ScalarKind::f16, false), fused_deterministic, 1e-3f,
             "float16 separate dq, register dk~/dv~, no prefetch vs deterministic fused backward") && ok;
  for (const bool prefetch : {true, false}) {
    AttentionParams presampled = separate;
    presampled.prefetch = prefetch;
    cuda_emu::tda_attention_forward(presampled, ScalarKind::f16, nullptr);
    ok = close(from_half(out16), expected, 1e-2f,
               prefetch ? "float16 one-pass forward over pre-sampled keys, prefetched"
                        : "float16 one-pass forward over pre-sampled keys, loaded in turn") && ok;
  }

  SampleParams sp;
  std::vector<float> sampled(B * Nk * G * d), grad_value(k.size()), grad_points(points.size());
  sp.value = k.data(), sp.points = points.data(), sp.out = sampled.data(), sp.grad_out = sampled.data();
  sp.grad_value = grad_value.data(), sp.grad_points = grad_points.data();
  sp.B = B, sp.T = T, sp.H = H, sp.W = W, sp.G = heads, sp.C = d, sp.P = Nk;
  std::vector<float> points_per_head(B * Nk * heads * 3);
  for (int64_t n = 0; n < Nk; ++n)
    for (int64_t h = 0; h < heads; ++h)
      for (int a = 0; a < 3; ++a) points_per_head[(n * heads + h) * 3 + a] = points[n * 3 + a];
  sp.points = points_per_head.data();
  sampled.resize(B * Nk * heads * d);
  sp.out = sampled.data(), sp.grad_out = sampled.data();
  grad_points.resize(points_per_head.size());
  sp.grad_points = grad_points.data();
  cuda_emu::trilinear_sample_forward(sp, ScalarKind::f32, nullptr);
  cuda_emu::trilinear_sample_backward(sp, ScalarKind::f32, false, nullptr);
  std::puts(ok ? "tsan driver: ok" : "tsan driver: MISMATCH");
  return ok ? 0 : 1;
}
