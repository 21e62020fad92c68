// Softmax, log-softmax, layer norm, RMS norm and inference batch norm. Each reads its input from
// memory once and writes its output once: a row (a softmax row, a layer-norm token) is brought
// into L1 by the first pass and the remaining passes (max, exp-sum, normalise; or mean, variance,
// scale) run on the cached row.
#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>

#include "core/normalization.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define PHI_NORM_X86 1
#include <immintrin.h>
#endif

#include "core/cpu_features.h"
#include "core/elementwise.h"
#include "core/math.h"
#include "core/op_registry.h"

namespace phi {

namespace {

constexpr int64_t kGrain = 1 << 16;  // elements below which one thread does the whole op
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr int64_t kSumBlock = 1024;  // floats summed in one vectorised reduction before joining

// e^d for d <= 0 (a softmax exponent), exactly 0 below -80 so masked -inf entries get
// probability 0: e^-80 ≈ 2e-35 is far below the resolution of a row sum, which is >= 1.
PHI_ALWAYS_INLINE float exp_nonpos(float d) { return d < -80.0f ? 0.0f : math::exp(d); }

// numpy gives a row of NaN when its maximum is not finite (all -inf, a +inf, or a NaN).
PHI_ALWAYS_INLINE float usable_max(float m) { return std::isfinite(m) ? m : kNaN; }

// Sum of term(j) over [0, n): multi-lane float sums over blocks, joined in double, so a long row
// keeps ~1e-7 relative accuracy where one running float sum would drift.
template <class F>
PHI_ALWAYS_INLINE double block_sum(int64_t n, F term) {
  double total = 0.0;
  for (int64_t b = 0; b < n; b += kSumBlock)
    total += lane_reduce<LaneOp::sum>(b, std::min(n, b + kSumBlock), 0.0f, term);
  return total;
}

// The same with one vector accumulator, for terms that cost far more than an add (an exp), where
// more lanes gain nothing and their setup costs a short row.
template <class F>
PHI_ALWAYS_INLINE double block_sum_plain(int64_t n, F term) {
  double total = 0.0;
  for (int64_t b = 0; b < n; b += kSumBlock) {
    const int64_t e = std::min(n, b + kSumBlock);
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t j = b; j < e; ++j) s += term(j);
    total += s;
  }
  return total;
}

// ---- softmax ----------------------------------------------------------------------------------

// Every exp term is at most 1, so an exp-sum is at most n (2n leaves room for rounding). A NaN in
// the row, or a NaN maximum, reaches math::exp as a NaN exponent, which it saturates at e^88: the
// bound breaks, and the row becomes NaN as in numpy, with no NaN test inside the hot loop.
PHI_ALWAYS_INLINE bool sum_is_valid(double s, int64_t n) { return s <= 2.0 * static_cast<double>(n); }

}  // namespace

#if defined(PHI_NORM_X86)
namespace {

// math::exp_reduced_of<__m512> is always inlined: the vector never crosses a call, so the ABI GCC
// warns about for vector returns compiled without AVX-512 never applies (as in packed_gemm.cpp).
#pragma GCC diagnostic ignored "-Wpsabi"
// e^d for d <= 0, as exp_nonpos: exactly 0 below -80, NaN stays NaN (max keeps its second operand
// when one is NaN), clamped at -80.5 so nothing is subnormal; the exponent applied by vscalefps.
__attribute__((target("avx512f,avx2,fma"), always_inline)) inline __m512 exp_nonpos_avx512(__m512 d) {
  const __m512 dx = _mm512_maskz_max_ps(0xFFFF, _mm512_set1_ps(-80.5f), d);
  const __m512 nn =
      _mm512_maskz_roundscale_ps(0xFFFF, dx * math::kExpLog2e, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = dx - nn * math::kExpLn2Hi;
  r = r - nn * math::kExpLn2Lo;
  const __m512 ev = _mm512_maskz_scalef_ps(0xFFFF, math::exp_reduced_of(r), nn);
  return _mm512_mask_mov_ps(ev, _mm512_cmp_ps_mask(d, _mm512_set1_ps(-80.0f), _CMP_LT_OQ), _mm512_setzero_ps());
}

// The largest of v's lanes, in every lane (v holds no NaN). (maskz_ forms throughout: GCC 12's
// plain ones warn of an uninitialised operand.)
__attribute__((target("avx512f,avx2,fma"), always_inline)) inline __m512 all_lanes_max(__m512 v) {
  constexpr __mmask16 all = 0xFFFF;
  v = _mm512_maskz_max_ps(all, v, _mm512_maskz_shuffle_f32x4(all, v, v, 0x4E));  // 256-bit halves
  v = _mm512_maskz_max_ps(all, v, _mm512_maskz_shuffle_f32x4(all, v, v, 0xB1));  // 128-bit quarters
  v = _mm512_maskz_max_ps(all, v, _mm512_maskz_permute_ps(all, v, 0x4E));        // 64-bit pairs
  return _mm512_maskz_max_ps(all, v, _mm512_maskz_permute_ps(all, v, 0xB1));
}

__attribute__((target("avx512f,avx2,fma"), always_inline)) inline float lanes_sum(__m512 v) {
  constexpr __mmask16 all = 0xFFFF;
  v = _mm512_maskz_add_ps(all, v, _mm512_maskz_shuffle_f32x4(all, v, v, 0x4E));
  v = _mm512_maskz_add_ps(all, v, _mm512_maskz_shuffle_f32x4(all, v, v, 0xB1));
  v = _mm512_maskz_add_ps(all, v, _mm512_maskz_permute_ps(all, v, 0x4E));
  v = _mm512_maskz_add_ps(all, v, _mm512_maskz_permute_ps(all, v, 0xB1));
  return _mm512_cvtss_f32(v);
}

// softmax_numerators for R rows at once: the rows' passes interleaved, so that the short
// dependency chains of one row (its running maximum and sum, the horizontal reductions at its
// end) overlap the others' work. Two passes: the maximum of t = scale * x + mask, then
// e = exp(t - max) (t recomputed: one FMA, where storing t would cost a store and a load).
template <int R, bool MASKS>
__attribute__((target("avx512f,avx2,fma"))) void numerators_avx512(const float* x, int64_t ldx, const float* const* masks,
                                                                   const float* addends, float scale, float* y,
                                                                   int64_t ldy, int64_t n, float* inv) {
  auto lanes = [](int64_t count) -> __mmask16 {
    return count >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << count) - 1);
  };
  const __m512 vscale = _mm512_set1_ps(scale);
  __m512 add[R], vmax[R];
  for (int r = 0; r < R; ++r) {
    add[r] = _mm512_set1_ps(MASKS ? 0.0f : addends[r]);
    vmax[r] = _mm512_set1_ps(-kInf);
  }
#define PHI_T_AT(r, j, k)                                                                    \
  _mm512_fmadd_ps(vscale, _mm512_maskz_loadu_ps(k, x + (r) * ldx + (j)),                     \
                  MASKS ? _mm512_maskz_loadu_ps(k, masks[MASKS ? (r) : 0] + (j)) : add[r])
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 k = lanes(n - j);
    for (int r = 0; r < R; ++r) vmax[r] = _mm512_mask_max_ps(vmax[r], k, PHI_T_AT(r, j, k), vmax[r]);  // NaN never wins
  }
  bool finite[R];
  for (int r = 0; r < R; ++r) {
    vmax[r] = all_lanes_max(vmax[r]);
    finite[r] = std::isfinite(_mm512_cvtss_f32(vmax[r]));
  }
  double total[R] = {};
  for (int64_t b = 0; b < n; b += kSumBlock) {
    const int64_t e = std::min(n, b + kSumBlock);
    __m512 sum[R];
    for (int r = 0; r < R; ++r) sum[r] = _mm512_setzero_ps();
    for (int64_t j = b; j < e; j += 16) {
      const __mmask16 k = lanes(e - j);
      for (int r = 0; r < R; ++r) {
        const __m512 ev = exp_nonpos_avx512(_mm512_sub_ps(PHI_T_AT(r, j, k), vmax[r]));
        _mm512_mask_storeu_ps(y + r * ldy + j, k, ev);
        sum[r] = _mm512_mask_add_ps(sum[r], k, sum[r], ev);
      }
    }
    for (int r = 0; r < R; ++r) total[r] += static_cast<double>(lanes_sum(sum[r]));
  }
  for (int r = 0; r < R; ++r)
    inv[r] = finite[r] && sum_is_valid(total[r], n) ? static_cast<float>(1.0 / total[r]) : kNaN;
}
#undef PHI_T_AT

template <bool MASKS>
__attribute__((target("avx512f,avx2,fma"))) void numerators_rows(int rows, const float* x, int64_t ldx,
                                                                 const float* const* masks, const float* addends,
                                                                 float scale, float* y, int64_t ldy, int64_t n,
                                                                 float* inv) {
  for (int r0 = 0; r0 < rows; r0 += 4) {
    const float* xr = x + r0 * ldx;
    float* yr = y + r0 * ldy;
    const float* const* mr = MASKS ? masks + r0 : masks;
    const float* ar = MASKS ? addends : addends + r0;
    switch (std::min(4, rows - r0)) {
      case 1: numerators_avx512<1, MASKS>(xr, ldx, mr, ar, scale, yr, ldy, n, inv + r0); break;
      case 2: numerators_avx512<2, MASKS>(xr, ldx, mr, ar, scale, yr, ldy, n, inv + r0); break;
      case 3: numerators_avx512<3, MASKS>(xr, ldx, mr, ar, scale, yr, ldy, n, inv + r0); break;
      default: numerators_avx512<4, MASKS>(xr, ldx, mr, ar, scale, yr, ldy, n, inv + r0); break;
    }
  }
}

// softmax_row (not log) with AVX-512: the numerators of one row, then their normalisation, so
// the same exp (math::exp's range reduction and polynomial, the exponent applied by vscalefps) and
// the same answers to an ulp, in about half the time of the portable loop. Attention spent 30 % of
// its time in softmax_row (128-key rows: three passes of eight vectors, the exp about 30
// instructions a vector) before it took the numerators directly.
__attribute__((target("avx512f,avx2,fma"))) void softmax_row_avx512(const float* x, const float* mask, float addend,
                                                                    float scale, float* y, int64_t n) {
  float inv;
  if (mask) numerators_avx512<1, true>(x, 0, &mask, &addend, scale, y, 0, n, &inv);
  else numerators_avx512<1, false>(x, 0, &mask, &addend, scale, y, 0, n, &inv);
  const __m512 f = _mm512_set1_ps(inv);  // NaN for a row whose answer is NaN: every entry becomes NaN
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 k = n - j >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - j)) - 1);
    _mm512_mask_storeu_ps(y + j, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, y + j), f));
  }
}

}  // namespace
#endif

// (declared in core/normalization.h)
void softmax_numerators(int rows, const float* x, int64_t ldx, const float* const* masks, const float* addends,
                        float scale, float* y, int64_t ldy, int64_t n, float* inv) {
#if defined(PHI_NORM_X86)
  static const bool avx512 = cpu_features().avx512f;
  if (avx512) {
    if (masks) return numerators_rows<true>(rows, x, ldx, masks, addends, scale, y, ldy, n, inv);
    return numerators_rows<false>(rows, x, ldx, masks, addends, scale, y, ldy, n, inv);
  }
#endif
  for (int r = 0; r < rows; ++r) {
    softmax_row(x + r * ldx, masks ? masks[r] : nullptr, masks ? 0.0f : addends[r], scale, y + r * ldy, n, false);
    inv[r] = 1.0f;  // already normalised (a row of NaN stays NaN)
  }
}

// (declared in core/normalization.h: the attention kernel runs it on its score rows)
PHI_HOT void softmax_row(const float* PHI_RESTRICT x, const float* PHI_RESTRICT mask, float addend, float scale,
                         float* PHI_RESTRICT y, int64_t n, bool log) {
#if defined(PHI_NORM_X86)
  static const bool avx512 = cpu_features().avx512f;
  if (avx512 && !log) return softmax_row_avx512(x, mask, addend, scale, y, n);
#endif
  // Rows are short (attention: 128 to 512), so the max is one plain vector reduction: measured
  // faster than multi-lane accumulators, whose setup a 128-float row does not repay.
  float m = -kInf;
  if (mask) {
#pragma omp simd reduction(max : m)
    for (int64_t j = 0; j < n; ++j) {
      float t = scale * x[j] + mask[j];
      y[j] = t;
      m = t > m ? t : m;
    }
  } else {
#pragma omp simd reduction(max : m)
    for (int64_t j = 0; j < n; ++j) {
      float t = scale * x[j] + addend;
      y[j] = t;
      m = t > m ? t : m;
    }
  }
  m = usable_max(m);
  const double s = log ? block_sum_plain(n, [=](int64_t j) { return exp_nonpos(y[j] - m); })
                       : block_sum_plain(n, [=](int64_t j) { return y[j] = exp_nonpos(y[j] - m); });
  if (!sum_is_valid(s, n)) {
    std::fill(y, y + n, kNaN);
    return;
  }
  if (log) {
    const float ls = static_cast<float>(std::log(s));
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) y[j] = (y[j] - m) - ls;
    return;
  }
  const float inv = static_cast<float>(1.0 / s);
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) y[j] *= inv;
}

namespace {

// Softmax along a non-innermost axis without transposing: the block of `w` adjacent columns
// (stride `inner` between the n elements of one column) is reduced a row at a time, vectorised
// across the columns. src is x (scaled by `scale`) or y already holding scale * x + mask.
constexpr int64_t kColumnBlock = 64;

PHI_HOT void softmax_columns(const float* src, float scale, float* y, int64_t n, int64_t inner, int64_t w, bool log) {
  float m[kColumnBlock], s[kColumnBlock];
  for (int64_t i = 0; i < w; ++i) m[i] = -kInf, s[i] = 0.0f;
  for (int64_t j = 0; j < n; ++j) {
    const float* r = src + j * inner;
#pragma omp simd
    for (int64_t i = 0; i < w; ++i) {
      float t = scale * r[i];
      m[i] = t > m[i] ? t : m[i];
    }
  }
  for (int64_t i = 0; i < w; ++i) m[i] = usable_max(m[i]);
  for (int64_t j = 0; j < n; ++j) {
    const float* r = src + j * inner;
    float* o = y + j * inner;
#pragma omp simd
    for (int64_t i = 0; i < w; ++i) {
      float e = exp_nonpos(scale * r[i] - m[i]);
      s[i] += e;
      if (!log) o[i] = e;
    }
  }
  for (int64_t i = 0; i < w; ++i) s[i] = !sum_is_valid(s[i], n) ? kNaN : log ? std::log(s[i]) : 1.0f / s[i];
  for (int64_t j = 0; j < n; ++j) {
    const float* r = src + j * inner;
    float* o = y + j * inner;
    if (log) {
#pragma omp simd
      for (int64_t i = 0; i < w; ++i) o[i] = (scale * r[i] - m[i]) - s[i];
    } else {
#pragma omp simd
      for (int64_t i = 0; i < w; ++i) o[i] *= s[i];
    }
  }
}

PHI_HOT void scale_add(const float* x, float scale, const float* mask, bool mask_dense, float* y, int64_t n) {
  if (mask_dense) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) y[j] = scale * x[j] + mask[j];
  } else {
    const float mv = mask[0];
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) y[j] = scale * x[j] + mv;
  }
}

// softmax(scale * x + mask) along `axis`: the attention pattern Q·Kᵀ/√d + mask → softmax in one pass.
class SoftmaxKernel final : public Kernel {
 public:
  SoftmaxKernel(bool log, const std::vector<TensorDesc>& in, const Attrs& attrs) : log_(log) {
    const std::string op = log ? "log_softmax" : "softmax";
    const TensorDesc& x = in[0];
    expect_float(op, x, "input");
    check(x.ndim() >= 1, op, "input must have rank >= 1");
    axis_ = normalize_axis(op, attrs.get_int(op, "axis", -1), x.ndim());
    scale_ = attrs.get_f32(op, "scale", 1.0f);
    n_ = x.shape[axis_];
    outer_ = numel(Shape(x.shape.begin(), x.shape.begin() + axis_));
    inner_ = numel(Shape(x.shape.begin() + axis_ + 1, x.shape.end()));
    if (in[1].present()) {
      const TensorDesc& mask = in[1];
      expect_float(op, mask, "mask");
      plan_ = plan_broadcast(op, {x.shape, mask.shape});
      PHI_CHECK(plan_.out_shape == x.shape, op,
                "mask of shape " + shape_str(mask.shape) + " does not broadcast to the input's shape " +
                    shape_str(x.shape));
      // Element strides of the mask over the input's dimensions (0 where it broadcasts).
      mask_strides_.assign(x.shape.size(), 0);
      int64_t stride = 1;
      for (int64_t d = mask.ndim() - 1, xd = x.ndim() - 1; d >= 0; --d, --xd) {
        if (mask.shape[d] != 1) mask_strides_[xd] = stride;
        stride *= mask.shape[d];
      }
      outer_dims_.assign(x.shape.begin(), x.shape.begin() + axis_);
    }
    outputs_ = {x};
  }

  void run(const TensorView* in, TensorView* out, void*, const ExecContext& ctx) const override {
    const float* x = in[0].ptr<const float>();
    const float* mask = in[1].present() ? in[1].ptr<const float>() : nullptr;
    float* y = out[0].ptr<float>();
    const int threads = ctx.resolved_threads();
    if (outer_ * n_ * inner_ == 0) return;
    if (inner_ == 1) return run_rows(x, mask, y, threads);
    float scale = scale_;
    const float* src = x;
    if (mask) {
      // Strided axis with a mask: materialise t = scale * x + mask in y, then normalise y in place.
      parallel_range(plan_.total, threads, kGrain, [&](int64_t begin, int64_t end) {
        for_each_segment(plan_, begin, end, [&](const auto& off, int64_t pos, int64_t len) {
          scale_add(x + off[0], scale_, mask + off[1], plan_.inner_dense(1), y + pos, len);
        });
      });
      src = y;
      scale = 1.0f;
    }
    const int64_t blocks = (inner_ + kColumnBlock - 1) / kColumnBlock;
    const int64_t grain = std::max<int64_t>(1, kGrain / (n_ * kColumnBlock));
    parallel_range(outer_ * blocks, threads, grain, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        int64_t o = t / blocks, i0 = (t % blocks) * kColumnBlock;
        int64_t off = o * n_ * inner_ + i0;
        softmax_columns(src + off, scale, y + off, n_, inner_, std::min(kColumnBlock, inner_ - i0), log_);
      }
    });
  }

 private:
  void run_rows(const float* x, const float* mask, float* y, int threads) const {
    const int64_t grain = std::max<int64_t>(1, kGrain / n_);
    const int64_t axis_stride = mask ? mask_strides_[axis_] : 0;
    parallel_range(outer_, threads, grain, [&](int64_t begin, int64_t end) {
      // Mask offset of each row from an odometer over the dimensions before the axis.
      std::vector<int64_t> idx(outer_dims_.size(), 0);
      int64_t moff = 0;
      if (mask) {
        int64_t r = begin;
        for (int64_t d = static_cast<int64_t>(outer_dims_.size()) - 1; d >= 0; --d) {
          idx[d] = r % outer_dims_[d];
          r /= outer_dims_[d];
          moff += idx[d] * mask_strides_[d];
        }
      }
      for (int64_t row = begin; row < end; ++row) {
        const float* mrow = (mask && axis_stride) ? mask + moff : nullptr;
        const float addend = (mask && !axis_stride) ? mask[moff] : 0.0f;
        softmax_row(x + row * n_, mrow, addend, scale_, y + row * n_, n_, log_);
        if (!mask) continue;
        for (int64_t d = static_cast<int64_t>(outer_dims_.size()) - 1; d >= 0; --d) {
          moff += mask_strides_[d];
          if (++idx[d] < outer_dims_[d]) break;
          moff -= mask_strides_[d] * outer_dims_[d];
          idx[d] = 0;
        }
      }
    });
  }

  bool log_;
  int64_t axis_ = 0, n_ = 0, outer_ = 0, inner_ = 0;
  float scale_ = 1.0f;
  BroadcastPlan plan_;
  std::vector<int64_t> mask_strides_, outer_dims_;
};

// ---- layer norm and RMS norm ------------------------------------------------------------------

// Two-pass statistics over the cached row: the mean of x - x[0] (so a large common offset does
// not eat the float32 mantissa), then the mean squared deviation. One-pass E[x²] - E[x]² cancels
// catastrophically when |mean| >> std.
PHI_HOT void layer_norm_row(const float* PHI_RESTRICT x_in, const float* PHI_RESTRICT res, const float* PHI_RESTRICT g,
                            const float* PHI_RESTRICT b, float* PHI_RESTRICT y, int64_t n, float eps) {
  // With a residual, h = x + res is staged in y and read back from there; `x` is then based on y,
  // so reads through it and writes through y do not break the restrict promise made for x_in.
  const float* x = x_in;
  if (res) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) y[j] = x_in[j] + res[j];
    x = y;
  }
  const float shift = x[0];
  const double inv_n = 1.0 / static_cast<double>(n);
  const float mean = shift + static_cast<float>(block_sum(n, [=](int64_t j) { return x[j] - shift; }) * inv_n);
  const double ss = block_sum(n, [=](int64_t j) {
    float d = x[j] - mean;
    return d * d;
  });
  const float rstd = static_cast<float>(1.0 / std::sqrt(ss * inv_n + eps));
  if (b) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) y[j] = (x[j] - mean) * rstd * g[j] + b[j];
  } else {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) y[j] = (x[j] - mean) * rstd * g[j];
  }
}

PHI_HOT void rms_norm_row(const float* PHI_RESTRICT x, const float* PHI_RESTRICT g, float* PHI_RESTRICT y, int64_t n,
                          float eps) {
  const double ss = block_sum(n, [=](int64_t j) { return x[j] * x[j]; });
  const float rstd = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(n) + eps));
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) y[j] = x[j] * rstd * g[j];
}

float read_epsilon(const std::string& op, const Attrs& attrs, float fallback) {
  const float eps = attrs.get_f32(op, "epsilon", fallback);
  PHI_CHECK(eps > 0.0f, op, "epsilon must be > 0 in float32, got " + std::to_string(attrs.get_float(op, "epsilon", 0.0)));
  return eps;
}

// gamma / beta cover the normalised dimensions x.shape[axis:]: equal to them up to leading 1s.
void expect_norm_param(const std::string& op, const TensorDesc& p, const Shape& norm, const std::string& what) {
  expect_float(op, p, what);
  Shape s = p.shape;
  while (!s.empty() && s.front() == 1 && s.size() > norm.size()) s.erase(s.begin());
  Shape want = norm;
  while (want.size() > s.size() && want.front() == 1) want.erase(want.begin());
  PHI_CHECK(s == want, op, what + " must have the normalised shape " + shape_str(norm) + ", got " + shape_str(p.shape));
}

// ONNX LayerNormalization (normalise over x.shape[axis:]) and RMSNormalization, with layer norm's
// residual add fused (post-LN transformers normalise x + sublayer(x)).
class RowNormKernel final : public Kernel {
 public:
  RowNormKernel(bool rms, const std::vector<TensorDesc>& in, const Attrs& attrs) : rms_(rms) {
    const std::string op = rms ? "rms_norm" : "layer_norm";
    const TensorDesc& x = in[0];
    expect_float(op, x, "input");
    check(x.ndim() >= 1, op, "input must have rank >= 1");
    int64_t axis = normalize_axis(op, attrs.get_int(op, "axis", -1), x.ndim());
    eps_ = read_epsilon(op, attrs, rms ? 1e-6f : 1e-5f);
    Shape norm(x.shape.begin() + axis, x.shape.end());
    d_ = numel(norm);
    rows_ = numel(Shape(x.shape.begin(), x.shape.begin() + axis));
    expect_norm_param(op, in[1], norm, "gamma");
    if (!rms && in[2].present()) expect_norm_param(op, in[2], norm, "beta");
    if (!rms && in[3].present()) {
      expect_float(op, in[3], "residual");
      PHI_CHECK(in[3].shape == x.shape, op,
                "residual must have the input's shape " + shape_str(x.shape) + ", got " + shape_str(in[3].shape));
    }
    outputs_ = {x};
  }

  void run(const TensorView* in, TensorView* out, void*, const ExecContext& ctx) const override {
    if (rows_ == 0 || d_ == 0) return;
    const float* x = in[0].ptr<const float>();
    const float* g = in[1].ptr<const float>();
    const float* b = (!rms_ && in[2].present()) ? in[2].ptr<const float>() : nullptr;
    const float* res = (!rms_ && in[3].present()) ? in[3].ptr<const float>() : nullptr;
    float* y = out[0].ptr<float>();
    parallel_range(rows_, ctx.resolved_threads(), std::max<int64_t>(1, kGrain / d_), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        if (rms_) rms_norm_row(x + r * d_, g, y + r * d_, d_, eps_);
        else layer_norm_row(x + r * d_, res ? res + r * d_ : nullptr, g, b, y + r * d_, d_, eps_);
      }
    });
  }

 private:
  bool rms_;
  float eps_ = 1e-5f;
  int64_t d_ = 0, rows_ = 0;
};

// ---- batch norm (inference) -------------------------------------------------------------------

// y = x * a[c] + b[c] with a = scale / sqrt(var + eps), b = bias - mean * a folded once per call.
PHI_HOT void affine_plane(const float* PHI_RESTRICT x, float a, float b, float* PHI_RESTRICT y, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) y[j] = x[j] * a + b;
}

PHI_HOT void affine_row(const float* PHI_RESTRICT x, const float* PHI_RESTRICT a, const float* PHI_RESTRICT b,
                        float* PHI_RESTRICT y, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) y[j] = x[j] * a[j] + b[j];
}

// ONNX BatchNormalization in inference mode on NCHW (channel axis 1, any number of spatial dims).
class BatchNormKernel final : public Kernel {
 public:
  BatchNormKernel(const std::vector<TensorDesc>& in, const Attrs& attrs) {
    const std::string op = "batch_norm";
    const TensorDesc& x = in[0];
    expect_float(op, x, "input");
    PHI_CHECK(x.ndim() >= 2, op, "input must have rank >= 2 (N, C, ...), got shape " + shape_str(x.shape));
    if (attrs.get_int(op, "training_mode", 0) != 0)
      throw Error(ErrorCode::unsupported, op, "training mode is not supported (inference only)");
    eps_ = read_epsilon(op, attrs, 1e-5f);
    c_ = x.shape[1];
    spatial_ = numel(Shape(x.shape.begin() + 2, x.shape.end()));
    planes_ = x.shape[0] * c_;
    const char* names[] = {"scale", "bias", "mean", "var"};
    for (int i = 1; i <= 4; ++i) {
      expect_float(op, in[i], names[i - 1]);
      PHI_CHECK(in[i].shape == Shape{c_}, op,
                std::string(names[i - 1]) + " must have shape (" + std::to_string(c_) + ",), got " +
                    shape_str(in[i].shape));
    }
    outputs_ = {x};
  }

  size_t workspace_bytes() const override { return 2 * sizeof(float) * static_cast<size_t>(c_); }

  void run(const TensorView* in, TensorView* out, void* workspace, const ExecContext& ctx) const override {
    if (planes_ * spatial_ == 0) return;
    float* a = static_cast<float*>(workspace);
    float* b = a + c_;
    const float *scale = in[1].ptr<const float>(), *bias = in[2].ptr<const float>();
    const float *mean = in[3].ptr<const float>(), *var = in[4].ptr<const float>();
    for (int64_t c = 0; c < c_; ++c) {
      a[c] = scale[c] / std::sqrt(var[c] + eps_);
      b[c] = bias[c] - mean[c] * a[c];
    }
    const float* x = in[0].ptr<const float>();
    float* y = out[0].ptr<float>();
    const int threads = ctx.resolved_threads();
    if (spatial_ == 1) {  // (N, C): rows of channels
      return parallel_range(planes_ / c_, threads, std::max<int64_t>(1, kGrain / c_), [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) affine_row(x + r * c_, a, b, y + r * c_, c_);
      });
    }
    parallel_range(planes_, threads, std::max<int64_t>(1, kGrain / spatial_), [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        int64_t c = p % c_;
        affine_plane(x + p * spatial_, a[c], b[c], y + p * spatial_, spatial_);
      }
    });
  }

 private:
  float eps_ = 1e-5f;
  int64_t c_ = 0, spatial_ = 0, planes_ = 0;
};

std::unique_ptr<Kernel> make_softmax(const std::vector<TensorDesc>& in, const Attrs& attrs) {
  return std::make_unique<SoftmaxKernel>(false, in, attrs);
}
std::unique_ptr<Kernel> make_log_softmax(const std::vector<TensorDesc>& in, const Attrs& attrs) {
  return std::make_unique<SoftmaxKernel>(true, in, attrs);
}
std::unique_ptr<Kernel> make_layer_norm(const std::vector<TensorDesc>& in, const Attrs& attrs) {
  return std::make_unique<RowNormKernel>(false, in, attrs);
}
std::unique_ptr<Kernel> make_rms_norm(const std::vector<TensorDesc>& in, const Attrs& attrs) {
  return std::make_unique<RowNormKernel>(true, in, attrs);
}
std::unique_ptr<Kernel> make_batch_norm(const std::vector<TensorDesc>& in, const Attrs& attrs) {
  return std::make_unique<BatchNormKernel>(in, attrs);
}

}  // namespace

PHI_REGISTER_OP("softmax", 1, 2, make_softmax);
PHI_REGISTER_OP("log_softmax", 1, 2, make_log_softmax);
PHI_REGISTER_OP("layer_norm", 2, 4, make_layer_norm);
PHI_REGISTER_OP("rms_norm", 2, 2, make_rms_norm);
PHI_REGISTER_OP("batch_norm", 5, 5, make_batch_norm);

}  // namespace phi
