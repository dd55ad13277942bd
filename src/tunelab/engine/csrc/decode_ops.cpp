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
#include <immintrin.h>

#include <algorithm>
#include <utility>
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

// One query's kv head `g`: attend each query head of the group over columns [lo, len] of the head's cached keys
// and values (the query's own k and v already appended at `len`). `q` is the query's rotated heads in float32; `out`
// gets the group's heads, in the projection's dtype.
template <typename T>
void attend_group(const float* q, int64_t H, int64_t KV, int64_t D, const float* krow, const float* vrow,
                  int64_t len, int64_t window, float scale, int64_t g, T* out, std::vector<float>& scratch) {
  const int64_t lo = window > 0 ? std::max<int64_t>(0, len - window + 1) : 0;
  const int64_t n = len - lo + 1;
  scratch.resize(n + D);
  float* scores = scratch.data();
  float* acc = scores + n;
  const int64_t group = H / KV;
  for (int64_t h = g * group; h < (g + 1) * group; ++h) {
    const float* qh = q + h * D;
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

// ---------------------------------------------------------------------------------------------------------- chunks
// A run of queries on one row (a prompt chunk in a recorded mixed step) with AVX-512: the queries' vectors (query
// heads of one kv head x chunk tokens) ride in the 16 lanes of a register, so each key is read once for 16 of them
// and scores need no horizontal sums; keys stream through in tiles of 16 with an online softmax. ATen's SDPA did the
// same work ~2.5x slower here (4 queries at 1,900 cached tokens: 12 ms a step; it parallelises over heads, 3 tasks
// on 2 threads, and its small-query GEMMs are mostly padding). Work is split over (kv head, lane group, key range),
// and the key ranges' partial softmaxes are merged.
constexpr int64_t kLanes = 16;
constexpr int64_t kLongRow = 512;  // a decoding row this long takes the block kernel (see attend_queries)

struct Partial {  // one task's online-softmax state: running max, sum and weighted values per lane
  alignas(64) float top[kLanes];
  alignas(64) float total[kLanes];
  std::vector<float> acc;  // [kLanes, D]
};

// e^x for x <= 0 lanes (softmax arguments): Cephes' range reduction and degree-6 polynomial, 2^n by VSCALEFPS.
__attribute__((target("avx512f"))) inline __m512 exp512(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-88.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_scalef_ps(p, n);
}

// acc[l][w] (rows of D floats, L lanes x W registers) = acc * rescale[l] + sum_j p[j][l] * V[j][w]; p rows are
// kLanes apart (the tile's [key][lane] table), V rows D apart.
template <int L, int W>
__attribute__((target("avx512f"), always_inline)) inline void pv_block(float* acc, int64_t D, const float* rescale,
                                                                       const float* p, const float* V, int64_t nt) {
  __m512 x[L][W];
  for (int l = 0; l < L; ++l) {
    const __m512 c = _mm512_set1_ps(rescale[l]);
    for (int w = 0; w < W; ++w) x[l][w] = _mm512_mul_ps(_mm512_loadu_ps(acc + l * D + w * kLanes), c);
  }
  for (int64_t j = 0; j < nt; ++j) {
    __m512 v[W];
    for (int w = 0; w < W; ++w) v[w] = _mm512_loadu_ps(V + j * D + w * kLanes);
    for (int l = 0; l < L; ++l) {
      const __m512 pl = _mm512_set1_ps(p[j * kLanes + l]);
      for (int w = 0; w < W; ++w) x[l][w] = _mm512_fmadd_ps(pl, v[w], x[l][w]);
    }
  }
  for (int l = 0; l < L; ++l)
    for (int w = 0; w < W; ++w) _mm512_storeu_ps(acc + l * D + w * kLanes, x[l][w]);
}

// Lanes q < nv: query vectors qt[d * 16 + q] (transposed, scaled); lane q sees key columns lo[q]..hi[q]. Keys t0..t1
// of K/V [cols, D] (D a multiple of 16). Fills `part`.
__attribute__((target("avx512f"))) void chunk_tile_loop(const float* qt, const int32_t* lo, const int32_t* hi,
                                                        int64_t groups, int64_t vectors, const float* K,
                                                        const float* V, int64_t D, int64_t t0, int64_t t1,
                                                        Partial* parts) {
  for (int64_t i = 0; i < groups; ++i) {
    parts[i].acc.assign(kLanes * D, 0.f);
    _mm512_storeu_ps(parts[i].top, _mm512_set1_ps(-INFINITY));
    _mm512_storeu_ps(parts[i].total, _mm512_setzero_ps());
  }
  alignas(64) float p[kLanes][kLanes];  // [key in tile][lane]
  for (int64_t t = t0; t < t1; t += kLanes) {
    const int64_t nt = std::min(kLanes, t1 - t);
    const float* key[kLanes];  // past the tile's end: a repeat of its last key, masked below
    for (int64_t j = 0; j < kLanes; ++j) key[j] = K + (t + std::min(j, nt - 1)) * D;
    for (int64_t i = 0; i < groups; ++i) {  // every lane group while the tile is in L1
      const float* q_i = qt + i * D * kLanes;
      const int64_t nv = std::min(kLanes, vectors - i * kLanes);
      __m512 s[kLanes];
      for (int64_t j = 0; j < kLanes; ++j) s[j] = _mm512_setzero_ps();
      for (int64_t d = 0; d < D; ++d) {
        const __m512 q = _mm512_loadu_ps(q_i + d * kLanes);
        for (int64_t j = 0; j < kLanes; ++j) s[j] = _mm512_fmadd_ps(_mm512_set1_ps(key[j][d]), q, s[j]);
      }
      const __m512i lo_v = _mm512_loadu_si512(lo + i * kLanes), hi_v = _mm512_loadu_si512(hi + i * kLanes);
      __m512 top = _mm512_loadu_ps(parts[i].top);
      __mmask16 seen[kLanes];
      __m512 tile_top = top;
      for (int64_t j = 0; j < kLanes; ++j) {
        const __m512i col = _mm512_set1_epi32(static_cast<int32_t>(t + j));
        seen[j] = j < nt ? _mm512_cmple_epi32_mask(lo_v, col) & _mm512_cmple_epi32_mask(col, hi_v) : 0;
        tile_top = _mm512_mask_max_ps(tile_top, seen[j], tile_top, s[j]);
      }
      const __mmask16 live = _mm512_cmp_ps_mask(tile_top, _mm512_set1_ps(-INFINITY), _CMP_NEQ_OQ);
      const __m512 scale = _mm512_maskz_mov_ps(live, exp512(_mm512_sub_ps(top, tile_top)));
      __m512 total = _mm512_mul_ps(_mm512_loadu_ps(parts[i].total), scale);
      for (int64_t j = 0; j < kLanes; ++j) {
        const __m512 pj = _mm512_maskz_mov_ps(seen[j], exp512(_mm512_sub_ps(s[j], tile_top)));
        total = _mm512_add_ps(total, pj);
        _mm512_store_ps(p[j], pj);
      }
      _mm512_storeu_ps(parts[i].top, tile_top);
      _mm512_storeu_ps(parts[i].total, total);
      alignas(64) float rescale[kLanes];
      _mm512_store_ps(rescale, scale);
      float* acc = parts[i].acc.data();
      for (int64_t q = 0; q < nv; q += 4)  // 4 lanes x 4 registers of D at a time: each value row loaded once for 4
        for (int64_t d = 0; d < D; d += 4 * kLanes) {
          const int64_t lanes = std::min<int64_t>(4, nv - q), width = std::min<int64_t>(4, (D - d) / kLanes);
          switch (lanes * 4 + width) {
#define TUNELAB_PV(L, W) \
  case L * 4 + W: pv_block<L, W>(acc + q * D + d, D, rescale + q, &p[0][q], V + t * D + d, nt); break;
            TUNELAB_PV(1, 1) TUNELAB_PV(1, 2) TUNELAB_PV(1, 3) TUNELAB_PV(1, 4)
            TUNELAB_PV(2, 1) TUNELAB_PV(2, 2) TUNELAB_PV(2, 3) TUNELAB_PV(2, 4)
            TUNELAB_PV(3, 1) TUNELAB_PV(3, 2) TUNELAB_PV(3, 3) TUNELAB_PV(3, 4)
            TUNELAB_PV(4, 1) TUNELAB_PV(4, 2) TUNELAB_PV(4, 3) TUNELAB_PV(4, 4)
#undef TUNELAB_PV
          }
        }
    }
  }
}

// The run's queries s..e-1 (rotated, in qf [query, H, D]) on the row at kp/vp [KV, cap, D]; writes their output
// rows of `op`. `lp`: each query's length; lo from the window.
template <typename T>
void attend_run_avx512(const float* qf, int64_t s, int64_t e, int64_t H, int64_t KV, int64_t D, const float* kp,
                       const float* vp, int64_t cap, const int64_t* lp, int64_t window, float scale, T* op) {
  const int64_t group = H / KV, vectors = (e - s) * group, lane_groups = (vectors + kLanes - 1) / kLanes;
  int64_t first = lp[s], last = lp[s];
  for (int64_t i = s; i < e; ++i) {
    first = std::min(first, window > 0 ? std::max<int64_t>(0, lp[i] - window + 1) : 0);
    last = std::max(last, lp[i]);
  }
  const int64_t span = last + 1 - first;
  // Tasks: (kv head, key range), each over all lane groups; enough ranges to give every thread two tasks, ranges of
  // at least 256 keys (tiles of 16).
  const int64_t threads = at::get_num_threads();
  int64_t ranges = std::max<int64_t>(1, std::min((2 * threads + KV - 1) / KV, span / 256));
  const int64_t step = ((span + ranges - 1) / ranges + kLanes - 1) / kLanes * kLanes;
  ranges = (span + step - 1) / step;
  const int64_t tasks = KV * ranges;
  std::vector<Partial> parts(KV * lane_groups * ranges);  // [kv head, range, lane group]
  // Per (kv head, lane group): the transposed queries and each lane's visible columns.
  std::vector<float> qts(KV * lane_groups * D * kLanes, 0.f);
  std::vector<int32_t> los(KV * lane_groups * kLanes, 0), his(KV * lane_groups * kLanes, -1);
  for (int64_t g = 0; g < KV; ++g)
    for (int64_t v = 0; v < vectors; ++v) {
      const int64_t i = s + v / group, h = g * group + v % group, lg = g * lane_groups + v / kLanes, lane = v % kLanes;
      for (int64_t d = 0; d < D; ++d) qts[(lg * D + d) * kLanes + lane] = qf[(i * H + h) * D + d] * scale;
      his[lg * kLanes + lane] = static_cast<int32_t>(lp[i]);
      los[lg * kLanes + lane] = static_cast<int32_t>(window > 0 ? std::max<int64_t>(0, lp[i] - window + 1) : 0);
    }
  at::parallel_for(0, tasks, 1, [&](int64_t a, int64_t b) {
    for (int64_t t = a; t < b; ++t) {
      const int64_t g = t / ranges, r = t % ranges, lg = g * lane_groups;
      const int64_t t0 = first + r * step, t1 = std::min(last + 1, t0 + step);
      chunk_tile_loop(qts.data() + lg * D * kLanes, los.data() + lg * kLanes, his.data() + lg * kLanes, lane_groups,
                      vectors, kp + g * cap * D, vp + g * cap * D, D, t0, t1, parts.data() + t * lane_groups);
    }
  });
  std::vector<float> out(D);
  for (int64_t g = 0; g < KV; ++g)  // merge the key ranges' softmaxes, per lane
    for (int64_t v = 0; v < vectors; ++v) {
      const int64_t i = s + v / group, h = g * group + v % group, lane = v % kLanes;
      const int64_t first_part = g * ranges * lane_groups + v / kLanes;  // + r * lane_groups: range r
      float top = -INFINITY;
      for (int64_t r = 0; r < ranges; ++r) top = std::max(top, parts[first_part + r * lane_groups].top[lane]);
      float total = 0.f;
      std::fill(out.begin(), out.end(), 0.f);
      for (int64_t r = 0; r < ranges; ++r) {
        const Partial& part = parts[first_part + r * lane_groups];
        if (part.top[lane] == -INFINITY) continue;
        const float w = std::exp(part.top[lane] - top);
        total += w * part.total[lane];
        for (int64_t d = 0; d < D; ++d) out[d] += w * part.acc[lane * D + d];
      }
      T* dst = op + i * H * D + h * D;
      for (int64_t d = 0; d < D; ++d) dst[d] = static_cast<T>(out[d] / total);
    }
}

// Query i lives in dense row rp[i] at column lp[i]. First every query's rotated k and its v are appended at its
// column; then each query attends over its row's columns up to its own. So the queries of one row in one call (a
// prompt chunk: consecutive columns) see each other causally. A query alone in its row (a decoding sequence) is
// attended by the loop above, one (query, kv head) per task; a run of queries on one row goes to SDPA as one causal
// block (its keys read once for all of them, by ATen's fused CPU kernel).
template <typename T>
void attend_queries(const T* qkv, int64_t Q, int64_t H, int64_t KV, int64_t D, const float* cp, const float* sp,
                    float* kp, float* vp, int64_t cap, const int64_t* lp, const int64_t* rp, int64_t window,
                    float scale, T* op) {
  const int64_t C = (H + 2 * KV) * D, row_stride = KV * cap * D;
  std::vector<float> qf(Q * H * D);
  std::vector<std::pair<int64_t, int64_t>> singles, runs;  // [first, end) query ranges
  int64_t work = 0;  // multiply-adds: below ~64k, waking the second thread costs more than it saves
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  const bool blocks = avx512 && D % kLanes == 0;  // runs of queries on one row: the AVX-512 block kernel
  // A query alone in its row goes there too when it is long and the (query, kv head) tasks of the loop above would
  // leave a thread idle (one sequence decoding: 3 kv heads on 2 threads), so that its keys split over the threads:
  // batch 1 of the built-in model at 1,000 / 2,000 cached tokens, 4.4 -> 3.0 / 12.4 -> 8.5 ms of attention a step.
  // With more rows the loop above keeps them (the block kernel, 4 rows at 1,000 tokens: 17.7 -> 19.3 ms).
  int64_t alone = 0;
  for (int64_t i = 0; i < Q; ++i) alone += (i == 0 || rp[i] != rp[i - 1]) && (i + 1 == Q || rp[i + 1] != rp[i]);
  const bool split_long = blocks && alone * KV < 2 * at::get_num_threads();
  for (int64_t s = 0; s < Q;) {
    int64_t e = s + 1;
    while (e < Q && rp[e] == rp[s]) ++e;
    (e - s == 1 && !(split_long && lp[s] >= kLongRow) ? singles : runs).emplace_back(s, e);
    for (int64_t i = s; i < e; ++i) work += (lp[i] + 1) * H * D * 2;
    s = e;
  }
  const bool small = work < (1 << 16);
  at::parallel_for(0, Q, small ? Q : 1, [&](int64_t a, int64_t b) {
    std::vector<float> row(C);
    for (int64_t i = a; i < b; ++i) {
      for (int64_t c = 0; c < C; ++c) row[c] = static_cast<float>(qkv[i * C + c]);
      const float* cos = cp ? cp + i * D : nullptr;
      const float* sin = sp ? sp + i * D : nullptr;
      for (int64_t g = 0; g < KV; ++g) {
        float* kdst = kp + rp[i] * row_stride + (g * cap + lp[i]) * D;
        const float* k_new = row.data() + (H + g) * D;
        if (cos != nullptr) {
          rotate(kdst, k_new, cos, sin, D);
        } else {
          std::copy(k_new, k_new + D, kdst);
        }
        const float* v_new = row.data() + (H + KV + g) * D;
        std::copy(v_new, v_new + D, vp + rp[i] * row_stride + (g * cap + lp[i]) * D);
      }
      for (int64_t h = 0; h < H; ++h) {
        if (cos != nullptr) {
          rotate(qf.data() + (i * H + h) * D, row.data() + h * D, cos, sin, D);
        } else {
          std::copy(row.data() + h * D, row.data() + (h + 1) * D, qf.data() + (i * H + h) * D);
        }
      }
    }
  });
  const int64_t n_single = static_cast<int64_t>(singles.size());
  at::parallel_for(0, n_single * KV, small ? n_single * KV : 1, [&](int64_t a, int64_t b) {
    std::vector<float> scratch;
    for (int64_t t = a; t < b; ++t) {
      const int64_t i = singles[t / KV].first, g = t % KV;
      const int64_t base = rp[i] * row_stride + g * cap * D;
      attend_group(qf.data() + i * H * D, H, KV, D, kp + base, vp + base, lp[i], window, scale, g, op + i * H * D,
                   scratch);
    }
  });
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  for (const auto& [s, e] : runs) {
    if (blocks) {
      attend_run_avx512(qf.data(), s, e, H, KV, D, kp + rp[s] * row_stride, vp + rp[s] * row_stride, cap, lp, window,
                        scale, op);
      continue;
    }
    const int64_t n = e - s;
    int64_t last = 0;
    for (int64_t i = s; i < e; ++i) last = std::max(last, lp[i]);
    const int64_t cols = last + 1;
    // Queries [1, KV, group * n, D]: each kv head's group of query heads, stacked along the query length, so that
    // SDPA sees one query head per kv head (with `enable_gqa` ATen's CPU kernels copy the keys to every query head,
    // which for 4 queries at 2,000 cached tokens cost more than the attention). The row's keys and values
    // [1, KV, cols, D] are read in place, a view of the dense buffer.
    const int64_t group = H / KV;
    const at::Tensor q =
        at::from_blob(qf.data() + s * H * D, {n, H, D}, f32).permute({1, 0, 2}).reshape({1, KV, group * n, D});
    const std::vector<int64_t> kv_shape = {1, KV, cols, D}, kv_strides = {row_stride, cap * D, D, 1};
    const at::Tensor keys = at::from_blob(kp + rp[s] * row_stride, kv_shape, kv_strides, f32);
    const at::Tensor values = at::from_blob(vp + rp[s] * row_stride, kv_shape, kv_strides, f32);
    at::Tensor mask = at::empty({group, n, cols}, at::TensorOptions().dtype(at::kBool));
    bool* m = mask.mutable_data_ptr<bool>();
    for (int64_t i = 0; i < n; ++i) {
      const int64_t len = lp[s + i], lo = window > 0 ? std::max<int64_t>(0, len - window + 1) : 0;
      for (int64_t c = 0; c < cols; ++c) m[i * cols + c] = c >= lo && c <= len;
    }
    for (int64_t h = 1; h < group; ++h) std::copy(m, m + n * cols, m + h * n * cols);
    const at::Tensor o = at::scaled_dot_product_attention(q, keys, values, mask.view({1, 1, group * n, cols}), 0.0,
                                                          false, static_cast<double>(scale));
    // [1, KV, group * n, D] = [H, n, D] -> the queries' output rows [n, H * D]
    const at::Tensor rows =
        o.reshape({H, n, D}).permute({1, 0, 2}).reshape({n, H * D}).to(c10::CppTypeToScalarType<T>::value);
    std::copy(rows.const_data_ptr<T>(), rows.const_data_ptr<T>() + n * H * D, op + s * H * D);
  }
}

at::Tensor decode_attention(const at::Tensor& qkv, const std::optional<at::Tensor>& cos,
                            const std::optional<at::Tensor>& sin, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& lengths, int64_t heads, int64_t window, double scale,
                            const std::optional<at::Tensor>& rows_of) {
  TORCH_CHECK(k.dim() == 4 && k.sizes() == v.sizes() && k.scalar_type() == at::kFloat &&
                  v.scalar_type() == at::kFloat && k.is_contiguous() && v.is_contiguous(),
              "tunelab::decode_attention: k and v must be contiguous float32 [rows, kv_heads, capacity, dim]");
  const int64_t KV = k.size(1), cap = k.size(2), D = k.size(3), H = heads;
  TORCH_CHECK(H > 0 && H % KV == 0, "tunelab::decode_attention: ", H, " heads cannot share ", KV, " kv heads");
  TORCH_CHECK(qkv.size(-1) == (H + 2 * KV) * D, "tunelab::decode_attention: qkv's last dimension must be ",
              (H + 2 * KV) * D);
  const at::Tensor x = qkv.reshape({-1, (H + 2 * KV) * D}).contiguous();
  const int64_t rows = x.size(0);
  TORCH_CHECK(lengths.numel() == rows && lengths.scalar_type() == at::kLong,
              "tunelab::decode_attention: lengths must be int64 with one entry per query");
  at::Tensor row_index;
  if (rows_of.has_value()) {
    TORCH_CHECK(rows_of->numel() == rows && rows_of->scalar_type() == at::kLong,
                "tunelab::decode_attention: rows must be int64 with one entry per query");
    row_index = rows_of->contiguous();
  } else {
    row_index = at::arange(rows, lengths.options());
  }
  const int64_t* rp = row_index.const_data_ptr<int64_t>();
  for (int64_t r = 0; r < rows; ++r)
    TORCH_CHECK(rp[r] >= 0 && rp[r] < k.size(0), "tunelab::decode_attention: query ", r, " is in row ", rp[r],
                ", the cache has ", k.size(0));
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
    TORCH_CHECK(lp[r] >= 0 && lp[r] < cap, "tunelab::decode_attention: query ", r, " length ", lp[r],
                " is outside the cache's ", cap, " columns");
  at::Tensor out = at::empty({rows, H * D}, x.options());
  float* kp = k.mutable_data_ptr<float>();
  float* vp = v.mutable_data_ptr<float>();
  const float* cp = c.defined() ? c.const_data_ptr<float>() : nullptr;
  const float* sp = s.defined() ? s.const_data_ptr<float>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "decode_attention", [&] {
    attend_queries(x.const_data_ptr<scalar_t>(), rows, H, KV, D, cp, sp, kp, vp, cap, lp, rp, window,
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
        "int heads, int window, float scale, Tensor? rows=None) -> Tensor");
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
}

TORCH_LIBRARY_IMPL(tunelab, CPU, m) {
  m.impl("decode_attention", decode_attention);
  m.impl("rms_norm", rms_norm);
}
