// tunelab's CPU operators for the recorded decode step (engine/decode_graphs.py): each replaces a run of small torch
// operators per layer, which on a 30-layer model decoding one token cost more than the arithmetic they do (each
// dispatch ~1-3 us; see docs/serving.md, "Recorded decode steps").
//   decode_attention: split a fused q/k/v projection, rotate q and k (RoPE), append k and v to the dense float32
//     cache rows, and attend each row to its own cached positions (grouped-query heads, optional sliding window):
//     ~25 operators and a masked attention over the whole capacity become one pass over each row's own length;
//   rms_norm: a 16-bit RMSNorm in Llama's order (normalise in float32, round, scale by the weight): ~6 operators.
// (A SwiGLU operator was tried and taken out: with scalar exp it made a bfloat16 decode step 15.8 -> 17.0 ms.)
// Registered as torch.ops.tunelab.* next to bf16_linear (engine/native.py builds both).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

// The loops below are plain C++; target_clones compiles them for AVX-512, AVX2 and baseline x86-64 and picks one at
// load time, so the library runs on any x86-64 CPU and vectorises where it can.
#define TUNELAB_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

TUNELAB_CLONES float dot(const float* a, const float* b, int64_t n) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

TUNELAB_CLONES void axpy(float* y, float a, const float* x, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

// out[i] = x[i] cos[i] + x[(i + D/2) mod D] sin[i], with sin's first half negated (models/transformer.py apply_rope)
void rotate(float* out, const float* x, const float* cos, const float* sin, int64_t D) {
  const int64_t half = D / 2;
  for (int64_t i = 0; i < D; ++i) out[i] = x[i] * cos[i] + x[(i + half) % D] * sin[i];
}

// One (row, kv head): append its new k and v at the row's length, then attend each query head of the group.
// `row` is the row's q/k/v projection in float32; `out` gets the group's heads, in the projection's dtype.
template <typename T>
void attend_group(const float* row, int64_t H, int64_t KV, int64_t D, const float* cos, const float* sin,
                  float* kbuf, float* vbuf, int64_t cap, int64_t len, int64_t window, float scale, int64_t g,
                  T* out, std::vector<float>& scratch) {
  const float* k_new = row + (H + g) * D;
  const float* v_new = row + (H + KV + g) * D;
  float* krow = kbuf + g * cap * D;
  float* vrow = vbuf + g * cap * D;
  if (cos != nullptr) {
    rotate(krow + len * D, k_new, cos, sin, D);
  } else {
    std::copy(k_new, k_new + D, krow + len * D);
  }
  std::copy(v_new, v_new + D, vrow + len * D);
  const int64_t lo = window > 0 ? std::max<int64_t>(0, len - window + 1) : 0;
  const int64_t n = len - lo + 1;
  scratch.resize(n + 2 * D);
  float* scores = scratch.data();
  float* q = scores + n;
  float* acc = q + D;
  const int64_t group = H / KV;
  for (int64_t h = g * group; h < (g + 1) * group; ++h) {
    const float* qh = row + h * D;
    if (cos != nullptr) {
      rotate(q, qh, cos, sin, D);
      qh = q;
    }
    float top = -INFINITY;
    for (int64_t t = 0; t < n; ++t) {
      scores[t] = dot(qh, krow + (lo + t) * D, D) * scale;
      top = std::max(top, scores[t]);
    }
    float total = 0.f;
    for (int64_t t = 0; t < n; ++t) total += (scores[t] = std::exp(scores[t] - top));
    std::fill(acc, acc + D, 0.f);
    for (int64_t t = 0; t < n; ++t) axpy(acc, scores[t] / total, vrow + (lo + t) * D, D);
    for (int64_t d = 0; d < D; ++d) out[h * D + d] = static_cast<T>(acc[d]);
  }
}

template <typename T>
void attend_rows(const T* qkv, int64_t rows, int64_t H, int64_t KV, int64_t D, const float* cp, const float* sp,
                 float* kp, float* vp, int64_t cap, const int64_t* lp, int64_t window, float scale, T* op) {
  const int64_t C = (H + 2 * KV) * D;
  int64_t work = 0;  // multiply-adds: below ~64k, waking the second thread costs more than it saves
  for (int64_t r = 0; r < rows; ++r) work += (lp[r] + 1) * H * D * 2;
  const int64_t grain = work < (1 << 16) ? rows * KV : 1;
  at::parallel_for(0, rows * KV, grain, [&](int64_t a, int64_t b) {
    std::vector<float> row(C), scratch;
    int64_t converted = -1;
    for (int64_t i = a; i < b; ++i) {
      const int64_t r = i / KV, g = i % KV;
      if (r != converted) {
        for (int64_t c = 0; c < C; ++c) row[c] = static_cast<float>(qkv[r * C + c]);
        converted = r;
      }
      attend_group(row.data(), H, KV, D, cp ? cp + r * D : nullptr, sp ? sp + r * D : nullptr,
                   kp + r * KV * cap * D, vp + r * KV * cap * D, cap, lp[r], window, scale, g, op + r * H * D,
                   scratch);
    }
  });
}

at::Tensor decode_attention(const at::Tensor& qkv, const std::optional<at::Tensor>& cos,
                            const std::optional<at::Tensor>& sin, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& lengths, int64_t heads, int64_t window, double scale) {
  TORCH_CHECK(k.dim() == 4 && k.sizes() == v.sizes() && k.scalar_type() == at::kFloat &&
                  v.scalar_type() == at::kFloat && k.is_contiguous() && v.is_contiguous(),
              "tunelab::decode_attention: k and v must be contiguous float32 [rows, kv_heads, capacity, dim]");
  const int64_t KV = k.size(1), cap = k.size(2), D = k.size(3), H = heads;
  TORCH_CHECK(H > 0 && H % KV == 0, "tunelab::decode_attention: ", H, " heads cannot share ", KV, " kv heads");
  TORCH_CHECK(qkv.size(-1) == (H + 2 * KV) * D, "tunelab::decode_attention: qkv's last dimension must be ",
              (H + 2 * KV) * D);
  const at::Tensor x = qkv.reshape({-1, (H + 2 * KV) * D}).contiguous();
  const int64_t rows = x.size(0);
  TORCH_CHECK(rows <= k.size(0), "tunelab::decode_attention: ", rows, " rows, the cache has ", k.size(0));
  TORCH_CHECK(lengths.numel() == rows && lengths.scalar_type() == at::kLong,
              "tunelab::decode_attention: lengths must be int64 with one entry per row");
  TORCH_CHECK(cos.has_value() == sin.has_value(), "tunelab::decode_attention: cos and sin go together");
  at::Tensor c, s;
  if (cos.has_value()) {
    c = cos->to(at::kFloat).reshape({-1, D}).contiguous();
    s = sin->to(at::kFloat).reshape({-1, D}).contiguous();
    TORCH_CHECK(c.size(0) == rows && s.size(0) == rows, "tunelab::decode_attention: one cos/sin row per row");
  }
  const at::Tensor len = lengths.contiguous();
  const int64_t* lp = len.const_data_ptr<int64_t>();
  for (int64_t r = 0; r < rows; ++r)
    TORCH_CHECK(lp[r] >= 0 && lp[r] < cap, "tunelab::decode_attention: row ", r, " length ", lp[r],
                " is outside the cache's ", cap, " columns");
  at::Tensor out = at::empty({rows, H * D}, x.options());
  float* kp = k.mutable_data_ptr<float>();
  float* vp = v.mutable_data_ptr<float>();
  const float* cp = c.defined() ? c.const_data_ptr<float>() : nullptr;
  const float* sp = s.defined() ? s.const_data_ptr<float>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "decode_attention", [&] {
    attend_rows(x.const_data_ptr<scalar_t>(), rows, H, KV, D, cp, sp, kp, vp, cap, lp, window,
                static_cast<float>(scale), out.mutable_data_ptr<scalar_t>());
  });
  std::vector<int64_t> shape = qkv.sizes().vec();
  shape.back() = H * D;
  return out.view(shape);
}

template <typename T>
void rms_rows(const T* x, const T* w, T* y, int64_t rows, int64_t n, double eps) {
  at::parallel_for(0, rows, 16, [&](int64_t a, int64_t b) {
    for (int64_t r = a; r < b; ++r) {
      const T* xr = x + r * n;
      float sum = 0.f;
      for (int64_t i = 0; i < n; ++i) sum += static_cast<float>(xr[i]) * static_cast<float>(xr[i]);
      const float inv = 1.f / std::sqrt(sum / static_cast<float>(n) + static_cast<float>(eps));
      for (int64_t i = 0; i < n; ++i)  // round the normalised value first, then scale: Llama's order
        y[r * n + i] = static_cast<T>(static_cast<float>(static_cast<T>(static_cast<float>(xr[i]) * inv)) *
                                      static_cast<float>(w[i]));
    }
  });
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  TORCH_CHECK(x.scalar_type() == weight.scalar_type() &&
                  (x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf),
              "tunelab::rms_norm: x and weight must both be bfloat16 or both float16");
  const int64_t n = weight.numel();
  TORCH_CHECK(x.size(-1) == n, "tunelab::rms_norm: x's last dimension must be ", n);
  const at::Tensor xc = x.contiguous(), wc = weight.contiguous();
  at::Tensor y = at::empty_like(xc);
  const int64_t rows = xc.numel() / n;
  if (x.scalar_type() == at::kBFloat16) {
    rms_rows(xc.const_data_ptr<c10::BFloat16>(), wc.const_data_ptr<c10::BFloat16>(),
             y.mutable_data_ptr<c10::BFloat16>(), rows, n, eps);
  } else {
    rms_rows(xc.const_data_ptr<c10::Half>(), wc.const_data_ptr<c10::Half>(), y.mutable_data_ptr<c10::Half>(), rows,
             n, eps);
  }
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(tunelab, m) {
  m.def("decode_attention(Tensor qkv, Tensor? cos, Tensor? sin, Tensor(a!) k, Tensor(b!) v, Tensor lengths, "
        "int heads, int window, float scale) -> Tensor");
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
}

TORCH_LIBRARY_IMPL(tunelab, CPU, m) {
  m.impl("decode_attention", decode_attention);
  m.impl("rms_norm", rms_norm);
}
