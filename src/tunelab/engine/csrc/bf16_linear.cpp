// tunelab's CPU kernels for decoding with 16-bit weights: y = x @ W^T (+ bias) for one to eight rows of x, with
// float32 accumulation: bfloat16 through AVX512-BF16 dot products (VDPBF16PS), float16 through AVX-512 conversions
// and float32 FMAs. Built and loaded by tunelab/engine/native.py,
// registered as torch.ops.tunelab.bf16_linear and fp16_linear; callers check the CPU flags first.
//
// Why it exists: a decode step of a small model is a few hundred matrix-vector products, bound by how fast the
// weights stream from memory. torch's bfloat16 matrix-vector kernels read them at ~60% of what the same two cores
// reach for float32 through MKL, so bfloat16 halved the bytes but not the time. This loop keeps several rows'
// accumulators in registers, reuses each loaded x chunk for all of them, and prefetches the weight stream into L2
// well ahead of use (measured on an Intel Xeon with AVX512-BF16: docs/serving.md, "Choosing a dtype").
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

namespace {

// How far ahead of the row being read the weight stream is prefetched into L2. Measured on SmolLM2-135M's
// products, 2 threads: no prefetch 11.9 GB/s, 4 KiB ahead 15.8, 16 KiB ahead 16.5-18.5 (a plain read 23-26).
constexpr int64_t kPrefetchBytes = 16384;

// The most rows of x one call takes. Past four rows each further four cost about one more pass of arithmetic, and
// the loop turns compute-bound: a recorded decode step of SmolLM2-135M (bfloat16, 2 threads, Xeon) with 8 streams
// went 29 -> 23 ms through this kernel rather than oneDNN, with 16 streams 35 -> 41 ms, with 32 42 -> 68-87.
constexpr int64_t kMaxRows = 8;

// Shared by both kernels: prefetch `lines` cache lines of each of R weight rows, kPrefetchBytes ahead of column k...
template <int R>
__attribute__((always_inline, target("avx512f"))) inline void prefetch_rows(const uint16_t* w0, int64_t K, int64_t k,
                                                                              int lines, const char* w_end) {
  for (int r = 0; r < R; ++r) {
    const char* ahead = reinterpret_cast<const char*>(w0 + r * K + k) + kPrefetchBytes;
    if (ahead < w_end)
      for (int i = 0; i < lines; ++i) _mm_prefetch(ahead + 64 * i, _MM_HINT_T1);
  }
}

// ...and sum each (x row, weight row)'s two accumulators, add the bias, and round to the output type (to nearest
// even, as torch's own 16-bit outputs).
template <int M, int R, typename Out>
__attribute__((always_inline, target("avx512f"))) inline void store_rows(__m512 (&acc)[M][R][2], const float* bias,
                                                                          Out* y, int64_t N, int64_t n) {
  for (int m = 0; m < M; ++m)
    for (int r = 0; r < R; ++r) {
      float v = _mm512_reduce_add_ps(_mm512_add_ps(acc[m][r][0], acc[m][r][1]));
      if (bias != nullptr) v += bias[n + r];
      y[m * N + n + r] = static_cast<Out>(v);
    }
}

// Rows [n, n + R) of y for M rows of x: each loaded 32-element chunk of x serves R weight rows, each weight chunk
// serves M rows of x. Two accumulators per (row, x row) keep the dependent VDPBF16PS chains short.
template <int M, int R, typename Y>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) void rows_block(
    const uint16_t* w, int64_t K, const uint16_t* x, const float* bias, Y* y, int64_t N, int64_t n,
    const char* w_end) {
  __m512 acc[M][R][2];
  for (int m = 0; m < M; ++m)
    for (int r = 0; r < R; ++r) acc[m][r][0] = acc[m][r][1] = _mm512_setzero_ps();
  const uint16_t* w0 = w + n * K;
  int64_t k = 0;
  for (; k + 64 <= K; k += 64) {
    prefetch_rows<R>(w0, K, k, 2, w_end);  // 64 columns: two lines a row
    for (int h = 0; h < 2; ++h) {
      __m512i wv[R];
      for (int r = 0; r < R; ++r) wv[r] = _mm512_loadu_si512(w0 + r * K + k + 32 * h);
      for (int m = 0; m < M; ++m) {
        const __m512bh xv = (__m512bh)_mm512_loadu_si512(x + m * K + k + 32 * h);
        for (int r = 0; r < R; ++r) acc[m][r][h] = _mm512_dpbf16_ps(acc[m][r][h], (__m512bh)wv[r], xv);
      }
    }
  }
  for (; k < K; k += 32) {  // the last 1..63 columns, 32 at a time, masked past the end of the row
    const __mmask32 mask = K - k >= 32 ? ~0u : static_cast<__mmask32>((1u << (K - k)) - 1);
    __m512i wv[R];
    for (int r = 0; r < R; ++r) wv[r] = _mm512_maskz_loadu_epi16(mask, w0 + r * K + k);
    for (int m = 0; m < M; ++m) {
      const __m512bh xv = (__m512bh)_mm512_maskz_loadu_epi16(mask, x + m * K + k);
      for (int r = 0; r < R; ++r) acc[m][r][0] = _mm512_dpbf16_ps(acc[m][r][0], (__m512bh)wv[r], xv);
    }
  }
  store_rows<M, R>(acc, bias, y, N, n);
}

// The same loop for float16 weights (AVX-512 F16C conversions, float32 FMAs): x is converted to float32 once (exact),
// each weight chunk of 16 is widened to float32 (exact), and the products accumulate in float32, as torch's own
// float16 kernels do on CPU.
template <int M, int R, typename Y>
__attribute__((target("avx512f,avx512bw,avx512vl,f16c,fma"))) void rows_block_f16(
    const uint16_t* w, int64_t K, const float* x, const float* bias, Y* y, int64_t N, int64_t n,
    const char* w_end) {
  __m512 acc[M][R][2];
  for (int m = 0; m < M; ++m)
    for (int r = 0; r < R; ++r) acc[m][r][0] = acc[m][r][1] = _mm512_setzero_ps();
  const uint16_t* w0 = w + n * K;
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    prefetch_rows<R>(w0, K, k, 1, w_end);  // 32 columns: one line a row
    for (int h = 0; h < 2; ++h) {
      __m512 wv[R];
      for (int r = 0; r < R; ++r)
        wv[r] = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w0 + r * K + k + 16 * h)));
      for (int m = 0; m < M; ++m) {
        const __m512 xv = _mm512_loadu_ps(x + m * K + k + 16 * h);
        for (int r = 0; r < R; ++r) acc[m][r][h] = _mm512_fmadd_ps(wv[r], xv, acc[m][r][h]);
      }
    }
  }
  for (; k < K; k += 16) {  // the last 1..31 columns, 16 at a time, masked past the end of the row
    const __mmask16 mask = K - k >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (K - k)) - 1);
    __m512 wv[R];
    for (int r = 0; r < R; ++r)
      wv[r] = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, w0 + r * K + k));
    for (int m = 0; m < M; ++m) {
      const __m512 xv = _mm512_maskz_loadu_ps(mask, x + m * K + k);
      for (int r = 0; r < R; ++r) acc[m][r][0] = _mm512_fmadd_ps(wv[r], xv, acc[m][r][0]);
    }
  }
  store_rows<M, R>(acc, bias, y, N, n);
}

// What differs between the two weight types: the kernel, the type x is handed to it in, and the names.
struct Bf16Weights {
  using X = uint16_t;  // bfloat16 bits, paired for VDPBF16PS
  using Y = c10::BFloat16;
  static constexpr at::ScalarType kWeight = at::kBFloat16, kRows = at::kBFloat16;
  static constexpr const char* kOp = "tunelab::bf16_linear";
  static constexpr const char* kTypeName = "bfloat16";
  template <int M, int R, typename Out>
  static void block(const uint16_t* w, int64_t K, const X* x, const float* bias, Out* y, int64_t N, int64_t n,
                    const char* w_end) {
    rows_block<M, R>(w, K, x, bias, y, N, n, w_end);
  }
};

struct Fp16Weights {
  using X = float;  // float16 x widened once, exactly
  using Y = c10::Half;
  static constexpr at::ScalarType kWeight = at::kHalf, kRows = at::kFloat;
  static constexpr const char* kOp = "tunelab::fp16_linear";
  static constexpr const char* kTypeName = "float16";
  template <int M, int R, typename Out>
  static void block(const uint16_t* w, int64_t K, const X* x, const float* bias, Out* y, int64_t N, int64_t n,
                    const char* w_end) {
    rows_block_f16<M, R>(w, K, x, bias, y, N, n, w_end);
  }
};

template <typename W, int M, int R, typename Out>
void rows_range(const uint16_t* w, int64_t K, const typename W::X* x, const float* bias, Out* y, int64_t N,
                int64_t n0, int64_t n1) {
  const char* w_end = reinterpret_cast<const char*>(w + n1 * K);
  int64_t n = n0;
  for (; n + R <= n1; n += R) W::template block<M, R>(w, K, x, bias, y, N, n, w_end);
  for (; n < n1; ++n) W::template block<M, 1>(w, K, x, bias, y, N, n, w_end);
}

// More than four rows of x: each block of R weight rows is read from memory once, for x's first four rows, and
// again from L1 (a few KiB, just loaded) for each further group of up to four: one pass over the weights, as for four
// rows, where registers hold the accumulators of at most four x rows.
template <typename W, int R, typename Out>
void rows_group(const uint16_t* w, int64_t K, const typename W::X* x, const float* bias, Out* y, int64_t N,
                int64_t M, int64_t n, const char* w_end) {
  int64_t m = 0;
  for (; m + 4 <= M; m += 4) W::template block<4, R>(w, K, x + m * K, bias, y + m * N, N, n, w_end);
  switch (M - m) {
    case 1: W::template block<1, R>(w, K, x + m * K, bias, y + m * N, N, n, w_end); break;
    case 2: W::template block<2, R>(w, K, x + m * K, bias, y + m * N, N, n, w_end); break;
    case 3: W::template block<3, R>(w, K, x + m * K, bias, y + m * N, N, n, w_end); break;
    default: break;
  }
}

template <typename W, typename Out>
void rows_range_wide(const uint16_t* w, int64_t K, const typename W::X* x, const float* bias, Out* y,
                     int64_t N, int64_t M, int64_t n0, int64_t n1) {
  const char* w_end = reinterpret_cast<const char*>(w + n1 * K);
  int64_t n = n0;
  for (; n + 2 <= n1; n += 2) rows_group<W, 2>(w, K, x, bias, y, N, M, n, w_end);
  for (; n < n1; ++n) rows_group<W, 1>(w, K, x, bias, y, N, M, n, w_end);
}

template <typename W, typename Out>
void run_rows(const uint16_t* wp, int64_t K, const typename W::X* xp, const float* bp, Out* yp, int64_t N,
              int64_t M) {
  // Work is split in blocks of 8 output rows; small products (a 576-row projection) still use both threads.
  constexpr int64_t kBlock = 8;
  at::parallel_for(0, (N + kBlock - 1) / kBlock, 8, [&](int64_t b0, int64_t b1) {
    const int64_t n0 = b0 * kBlock, n1 = std::min(N, b1 * kBlock);
    switch (M) {
      case 1: rows_range<W, 1, 8>(wp, K, xp, bp, yp, N, n0, n1); break;
      case 2: rows_range<W, 2, 4>(wp, K, xp, bp, yp, N, n0, n1); break;
      case 3: rows_range<W, 3, 2>(wp, K, xp, bp, yp, N, n0, n1); break;
      case 4: rows_range<W, 4, 2>(wp, K, xp, bp, yp, N, n0, n1); break;
      default: rows_range_wide<W>(wp, K, xp, bp, yp, N, M, n0, n1); break;
    }
  });
}

// `float_out`: the float32 sums themselves, not rounded to the weights' type. For the model's head: a bfloat16 logit
// keeps 8 significant bits, so near ties between tokens become exact ties or swap (on the demo's few-shot rung, 2.0
// points below float32 with bfloat16 logits, 1.0 with float32 ones). Then any number of rows (the head runs once per
// step for every sequence): past eight, each block of weights is read again from L1 for every four rows.
template <typename W>
at::Tensor few_row_linear(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                          bool float_out) {
  TORCH_CHECK(weight.dim() == 2 && weight.is_contiguous() && weight.scalar_type() == W::kWeight, W::kOp,
              ": weight must be a contiguous 2-d ", W::kTypeName, " tensor");
  const int64_t N = weight.size(0), K = weight.size(1);
  TORCH_CHECK(x.scalar_type() == W::kWeight && x.dim() >= 1 && x.size(-1) == K, W::kOp, ": x must be ",
              W::kTypeName, " with last dimension ", K);
  TORCH_CHECK(x.device().is_cpu() && weight.device().is_cpu(), W::kOp, ": CPU tensors only");
  const at::Tensor rows = x.reshape({-1, K}).to(W::kRows).contiguous();
  const int64_t M = rows.size(0);
  TORCH_CHECK(M >= 1 && (M <= kMaxRows || float_out), W::kOp, ": one to ", kMaxRows, " rows, got ", M);
  at::Tensor bias32;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->numel() == N, W::kOp, ": bias must have ", N, " elements");
    bias32 = bias->to(at::kFloat).contiguous();
  }
  at::Tensor y = at::empty({M, N}, x.options().dtype(float_out ? at::kFloat : W::kWeight));
  const auto* wp = reinterpret_cast<const uint16_t*>(weight.const_data_ptr());
  const auto* xp = reinterpret_cast<const typename W::X*>(rows.const_data_ptr());
  const float* bp = bias32.defined() ? bias32.const_data_ptr<float>() : nullptr;
  if (float_out) {
    run_rows<W>(wp, K, xp, bp, y.mutable_data_ptr<float>(), N, M);
  } else {
    run_rows<W>(wp, K, xp, bp, reinterpret_cast<typename W::Y*>(y.mutable_data_ptr()), N, M);
  }
  std::vector<int64_t> shape = x.sizes().vec();
  shape.back() = N;
  return y.view(shape);
}

at::Tensor bf16_linear(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                       bool float_out) {
  return few_row_linear<Bf16Weights>(x, weight, bias, float_out);
}

at::Tensor fp16_linear(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                       bool float_out) {
  return few_row_linear<Fp16Weights>(x, weight, bias, float_out);
}

// y = x @ W^T (+ bias) with W in oneDNN's blocked layout (`torch.ops.mkldnn._reorder_linear_weight`), through
// oneDNN's own linear. The same call as `torch.ops.mkldnn._linear_pointwise(x, W, bias, "none", [], "")`, but one
// that a TorchScript trace can record: the tracer cannot record that operator's `Scalar?[]` argument, and it holds
// a blocked tensor only as an input (which this operator, registered for MkldnnCPU, takes), never as a constant.
// Recorded decode steps that carry a prompt chunk (more than eight rows) use it (engine/cpu_kernels.py).
at::Tensor packed_linear(const at::Tensor& x, const at::Tensor& packed, const std::optional<at::Tensor>& bias) {
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
  torch::jit::Stack stack;
  stack.emplace_back(x);
  stack.emplace_back(packed);
  stack.emplace_back(bias);
  stack.emplace_back(std::string("none"));
  stack.emplace_back(c10::List<std::optional<at::Scalar>>());
  stack.emplace_back(c10::IValue());
  op.callBoxed(&stack);
  return stack.back().toTensor();
}

}  // namespace

TORCH_LIBRARY(tunelab, m) {
  m.def("bf16_linear(Tensor x, Tensor weight, Tensor? bias=None, bool float_out=False) -> Tensor");
  m.def("fp16_linear(Tensor x, Tensor weight, Tensor? bias=None, bool float_out=False) -> Tensor");
  m.def("packed_linear(Tensor x, Tensor packed, Tensor? bias=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(tunelab, CPU, m) {
  m.impl("bf16_linear", bf16_linear);
  m.impl("fp16_linear", fp16_linear);
  m.impl("packed_linear", packed_linear);
}

TORCH_LIBRARY_IMPL(tunelab, MkldnnCPU, m) { m.impl("packed_linear", packed_linear); }
