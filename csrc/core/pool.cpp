// Pooling on NCHW float32: ONNX MaxPool, AveragePool and GlobalAveragePool. Average windows are
// swept one kernel tap at a time over a whole output row, so the inner loop is a vector add over
// the output width with the padding resolved once per row (valid_span), never per element; max
// pooling is separable and goes through a padded row buffer (max_pool_plane).
#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "core/conv.h"
#include "core/op_registry.h"

namespace phi {

namespace {

constexpr double kOpsPerThread = 1e6;  // below this a helper thread costs more than it saves
// Max over the window, padding as -inf (it never wins). A NaN in the window gives NaN, as numpy's
// max and PyTorch's max_pool2d do (ONNX Runtime drops it). The NaN-aware select costs three vector
// operations where a plain max costs one, so a plane takes it only when it holds a NaN.
//
// Separably: per output row, the max over the window's rows (whole input rows, contiguous) into a
// row buffer padded with -inf, then the max over the window's columns from that buffer. With
// stride 2 the buffer is first split into its even and odd columns (vector shuffles), so every
// tap reads a contiguous run. Tap by tap over each output row, a 3x3 stride-2 pool of 32x32 planes
// was nine strided loops of 16 columns an output row, moving about one float a cycle.
template <bool NaNAware>
PHI_ALWAYS_INLINE float max_join(float acc, float v) {
  if constexpr (NaNAware) return v > acc || v != v ? v : acc;  // once NaN, no compare replaces it
  else return v > acc ? v : acc;
}

// The vector helpers below are always inlined into functions compiled per ISA (PHI_HOT clones),
// so the ABI GCC warns about for vector returns compiled without AVX-512 never applies.
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float Floats16 __attribute__((vector_size(64), aligned(4), may_alias));
typedef int32_t Ints16 __attribute__((vector_size(64)));

PHI_ALWAYS_INLINE Floats16 load16(const float* p) { return *reinterpret_cast<const Floats16*>(p); }
PHI_ALWAYS_INLINE void store16(float* p, Floats16 v) { *reinterpret_cast<Floats16*>(p) = v; }

template <bool NaNAware>
PHI_ALWAYS_INLINE Floats16 max_join16(Floats16 acc, Floats16 v) {
  if constexpr (NaNAware) return ((v > acc) | (v != v)) ? v : acc;
  else return v > acc ? v : acc;
}

// The width of a pooling row buffer: the left padding, then every column a window reads.
int64_t max_pool_row_width(const Window2d& g) {
  return std::max(g.pl + g.w, (g.ow - 1) * g.sw + (g.kw - 1) * g.dw + 1);
}
constexpr int64_t kRowSlack = 64;  // floats past a row buffer's width that vector loads may read
constexpr int64_t kAlignSlack = 16;  // floats a buffer may be moved by to start on 64 bytes

float* align64(float* p) {
  return p + ((64 - reinterpret_cast<uintptr_t>(p) % 64) % 64) / sizeof(float);
}

// Every buffer a plane needs: the row (aligned at column 0, after pl padding columns) and its
// even and odd columns, each with kRowSlack floats of room.
int64_t max_pool_buffer_floats(const Window2d& g) {
  const int64_t width = max_pool_row_width(g);
  return width + (width + 1) / 2 * 2 + 3 * (kRowSlack + kAlignSlack) + 2;
}

// Vectors of 16 are kept in registers across a window's rows and columns, and stored once: the
// row buffer and the output are written once per vector, not once per tap (a tap-by-tap
// load-max-store of a buffer that starts off a 64-byte line split every store).
template <bool NaNAware>
PHI_ALWAYS_INLINE void max_pool_plane_as(const float* PHI_RESTRICT x, const Window2d& g, float* PHI_RESTRICT out,
                                         float* PHI_RESTRICT buf) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  const int64_t width = max_pool_row_width(g), half = (width + 1) / 2;
  float* row = align64(buf + g.pl);              // column 0 on a 64-byte boundary
  float* vp = row - g.pl;                        // width + kRowSlack: the row, from column -pl
  float* ev = align64(vp + width + kRowSlack);   // half + kRowSlack: its even columns
  float* od = align64(ev + half + kRowSlack);    // half + kRowSlack: its odd columns
  std::fill(vp, vp + width + kRowSlack, kNegInf);  // padding columns stay -inf for every row
  const int64_t wv = g.w / 16 * 16;              // the row's whole vectors
  for (int64_t oh = 0; oh < g.oh; ++oh) {
    // The window's input rows inside the image, joined 64 at a time (the first group stored,
    // later ones joined into the row).
    const float* srcs[64];
    int rows = 0;
    bool stored = false;
    auto flush = [&]() {
      for (int64_t t = 0; t < wv; t += 16) {
        Floats16 acc = stored ? load16(row + t) : load16(srcs[0] + t);
        for (int r = stored ? 0 : 1; r < rows; ++r) acc = max_join16<NaNAware>(acc, load16(srcs[r] + t));
        store16(row + t, acc);
      }
      for (int64_t t = wv; t < g.w; ++t) {
        float acc = stored ? row[t] : srcs[0][t];
        for (int r = stored ? 0 : 1; r < rows; ++r) acc = max_join<NaNAware>(acc, srcs[r][t]);
        row[t] = acc;
      }
      stored = true;
      rows = 0;
    };
    for (int64_t i = 0; i < g.kh; ++i) {
      const int64_t ih = oh * g.sh - g.pt + i * g.dh;
      if (ih < 0 || ih >= g.h) continue;
      srcs[rows++] = x + ih * g.w;
      if (rows == 64) flush();
    }
    if (rows > 0) flush();
    if (!stored) std::fill(row, row + g.w, kNegInf);
    float* o = out + oh * g.ow;
    if (g.sw == 2) {
      const Ints16 evens = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
      const Ints16 odds = evens + 1;
      for (int64_t t = 0; t < half; t += 16) {  // reads vp[2t .. 2t + 31] < width + kRowSlack
        const Floats16 lo = load16(vp + 2 * t);
        const Floats16 hi = load16(vp + 2 * t + 16);
        store16(ev + t, __builtin_shuffle(lo, hi, evens));
        store16(od + t, __builtin_shuffle(lo, hi, odds));
      }
      const float* taps[64];
      const int64_t kw = std::min<int64_t>(g.kw, 64);
      for (int64_t j = 0; j < kw; ++j) taps[j] = ((j * g.dw) % 2 == 0 ? ev : od) + (j * g.dw) / 2;
      for (int64_t t = 0; t < g.ow; t += 16) {  // reads up to t + 15 + (kw - 1) dw / 2 < half + kRowSlack
        Floats16 acc = load16(taps[0] + t);
        for (int64_t j = 1; j < kw; ++j) acc = max_join16<NaNAware>(acc, load16(taps[j] + t));
        if (t + 16 <= g.ow) {
          store16(o + t, acc);
        } else {
          alignas(64) float lanes[16];
          store16(lanes, acc);
          std::copy(lanes, lanes + (g.ow - t), o + t);
        }
      }
      for (int64_t j = kw; j < g.kw; ++j) {  // (windows over 64 columns wide: the rest tap by tap)
        const float* src = ((j * g.dw) % 2 == 0 ? ev : od) + (j * g.dw) / 2;
        for (int64_t t = 0; t < g.ow; ++t) o[t] = max_join<NaNAware>(o[t], src[t]);
      }
      continue;
    }
    std::fill(o, o + g.ow, kNegInf);
    for (int64_t j = 0; j < g.kw; ++j) {
      const float* src = vp + j * g.dw;
      join_row(o, src, g.ow, g.sw, [](float acc, float v) { return max_join<NaNAware>(acc, v); });
    }
  }
}

PHI_HOT void max_pool_plane(const float* PHI_RESTRICT x, const Window2d& g, float* PHI_RESTRICT out,
                            float* PHI_RESTRICT buf) {
  const int64_t n = g.h * g.w;
  int32_t seen = 0;
#pragma omp simd reduction(| : seen)
  for (int64_t i = 0; i < n; ++i) seen |= x[i] != x[i];
  if (seen) max_pool_plane_as<true>(x, g, out, buf);
  else max_pool_plane_as<false>(x, g, out, buf);
}

// Sum over the in-image taps, times a precomputed 1 / divisor per output position.
PHI_HOT void avg_pool_plane(const float* PHI_RESTRICT x, const Window2d& g, const Span* spans,
                            const float* PHI_RESTRICT inv_count, float* PHI_RESTRICT out) {
  for (int64_t oh = 0; oh < g.oh; ++oh) {
    float* o = out + oh * g.ow;
    std::fill(o, o + g.ow, 0.0f);
    for_each_tap(x, g, spans, oh, o, [&](int64_t, int64_t, const float* src, float* d, int64_t n) {
      join_row(d, src, n, g.sw, [](float acc, float v) { return acc + v; });
    });
    const float* inv = inv_count + oh * g.ow;
#pragma omp simd
    for (int64_t t = 0; t < g.ow; ++t) o[t] *= inv[t];
  }
}

PHI_HOT float plane_sum(const float* PHI_RESTRICT x, int64_t n) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += x[i];
  return s;
}

// Taps of each output position along one axis that count towards an average's divisor: those
// inside the input, or (count_include_pad) inside the padded input, but never the extra cells a
// ceil-mode window hangs past the end pad (ONNX AveragePool, as PyTorch and ONNX Runtime count).
// Tap t of output o sits at o * stride - pad_begin + t * dilation; the taps inside [lo, hi) are a
// contiguous run of t, counted in O(1) so a huge kernel costs nothing here.
std::vector<int64_t> tap_counts(int64_t in, int64_t out, int64_t k, int64_t stride, int64_t dilation,
                                int64_t pad_begin, int64_t pad_end, bool include_pad) {
  std::vector<int64_t> counts(static_cast<size_t>(out), 0);
  const int64_t lo = include_pad ? -pad_begin : 0, hi = include_pad ? in + pad_end : in;
  auto first_at_or_after = [dilation](int64_t distance) {  // smallest t >= 0 with t * dilation >= distance
    return distance <= 0 ? 0 : (distance + dilation - 1) / dilation;
  };
  for (int64_t o = 0; o < out; ++o) {
    const int64_t base = o * stride - pad_begin;
    const int64_t t0 = first_at_or_after(lo - base), t1 = std::min(k, first_at_or_after(hi - base));
    counts[o] = std::max<int64_t>(0, t1 - t0);
  }
  return counts;
}

class Pool2dKernel final : public Kernel {
 public:
  Pool2dKernel(const std::vector<TensorDesc>& in, const Attrs& attrs, bool is_max) : max_(is_max) {
    const std::string op = is_max ? "max_pool2d" : "avg_pool2d";
    const TensorDesc& x = in[0];
    expect_float(op, x, "x");
    expect_rank(op, x, 4, "x (N, C, H, W)");
    check(attrs.has("kernel_shape"), op, "attribute 'kernel_shape' is required");
    auto k = attrs.get_ints(op, "kernel_shape", {});
    PHI_CHECK(k.size() == 2, op, "kernel_shape must have 2 values, got " + std::to_string(k.size()));
    g_.kh = k[0];
    g_.kw = k[1];
    parse_window(op, attrs, g_);
    // A pad as wide as the window would let a window see padding only (PyTorch's limit is half).
    check(g_.pt < g_.extent_h() && g_.pb < g_.extent_h() && g_.pl < g_.extent_w() && g_.pr < g_.extent_w(), op,
          "pads must be smaller than the (dilated) kernel");
    bool ceil_mode = attrs.get_int(op, "ceil_mode", 0) != 0;
    planes_ = x.shape[0] * x.shape[1];
    g_.h = x.shape[2];
    g_.w = x.shape[3];
    g_.oh = window_out_size(g_.h, g_.extent_h(), g_.sh, g_.pt, g_.pb, ceil_mode);
    g_.ow = window_out_size(g_.w, g_.extent_w(), g_.sw, g_.pl, g_.pr, ceil_mode);
    PHI_CHECK(g_.oh > 0 && g_.ow > 0, op,
              "the (dilated) kernel " + std::to_string(g_.extent_h()) + "x" + std::to_string(g_.extent_w()) +
                  " is larger than the padded input " + shape_str(x.shape));
    const Shape out{x.shape[0], x.shape[1], g_.oh, g_.ow};
    checked_numel(op, out, sizeof(float), "output");  // before sizing per-position tables from it
    spans_ = column_spans(g_);
    if (!max_) {
      bool include_pad = attrs.get_int(op, "count_include_pad", 0) != 0;
      auto ch = tap_counts(g_.h, g_.oh, g_.kh, g_.sh, g_.dh, g_.pt, g_.pb, include_pad);
      auto cw = tap_counts(g_.w, g_.ow, g_.kw, g_.sw, g_.dw, g_.pl, g_.pr, include_pad);
      inv_count_.resize(static_cast<size_t>(g_.oh * g_.ow));
      for (int64_t i = 0; i < g_.oh; ++i)
        for (int64_t j = 0; j < g_.ow; ++j) {
          // A window on padding only averages nothing: 0 / 0, NaN, as ONNX Runtime gives and
          // as reduce_mean gives for an empty reduction.
          int64_t c = ch[i] * cw[j];
          inv_count_[i * g_.ow + j] = c > 0 ? 1.0f / static_cast<float>(c) : std::numeric_limits<float>::quiet_NaN();
        }
    }
    outputs_ = {TensorDesc{DType::f32, out}};
  }

  void run(const TensorView* in, TensorView* out, void*, const ExecContext& ctx) const override {
    const float* x = in[0].ptr<const float>();
    float* y = out[0].ptr<float>();
    int64_t plane_in = g_.h * g_.w, plane_out = g_.oh * g_.ow;
    double ops_per_plane = static_cast<double>(plane_out) * g_.kh * g_.kw + plane_in;
    int64_t grain = std::max<int64_t>(1, static_cast<int64_t>(kOpsPerThread / ops_per_plane));
    parallel_range(planes_, ctx.resolved_threads(), grain, [&](int64_t b, int64_t e) {
      if (max_) {
        thread_local std::vector<float> rows;  // max_pool_plane's row buffers
        const size_t need = static_cast<size_t>(max_pool_buffer_floats(g_));
        if (rows.size() < need) rows.resize(need);
        for (int64_t p = b; p < e; ++p) max_pool_plane(x + p * plane_in, g_, y + p * plane_out, rows.data());
        return;
      }
      for (int64_t p = b; p < e; ++p)
        avg_pool_plane(x + p * plane_in, g_, spans_.data(), inv_count_.data(), y + p * plane_out);
    });
  }

 private:
  bool max_ = true;
  int64_t planes_ = 0;
  Window2d g_;
  std::vector<Span> spans_;
  std::vector<float> inv_count_;  // avg: 1 / divisor per output position
};

// ONNX GlobalAveragePool: the mean of each (n, c) plane, over any number of spatial dimensions.
class GlobalAvgPoolKernel final : public Kernel {
 public:
  GlobalAvgPoolKernel(const std::vector<TensorDesc>& in, const Attrs&) {
    const std::string op = "global_avg_pool";
    const TensorDesc& x = in[0];
    expect_float(op, x, "x");
    PHI_CHECK(x.ndim() >= 3, op, "x must be (N, C, spatial...) of rank >= 3, got shape " + shape_str(x.shape));
    planes_ = x.shape[0] * x.shape[1];
    size_ = numel(Shape(x.shape.begin() + 2, x.shape.end()));
    PHI_CHECK(size_ > 0, op, "spatial dimensions must be non-empty, got shape " + shape_str(x.shape));
    Shape out(x.shape.size(), 1);
    out[0] = x.shape[0];
    out[1] = x.shape[1];
    outputs_ = {TensorDesc{DType::f32, out}};
  }

  void run(const TensorView* in, TensorView* out, void*, const ExecContext& ctx) const override {
    const float* x = in[0].ptr<const float>();
    float* y = out[0].ptr<float>();
    const float inv = 1.0f / static_cast<float>(size_);
    int64_t grain = std::max<int64_t>(1, static_cast<int64_t>(kOpsPerThread * 4 / static_cast<double>(size_)));
    parallel_range(planes_, ctx.resolved_threads(), grain, [&](int64_t b, int64_t e) {
      for (int64_t p = b; p < e; ++p) y[p] = plane_sum(x + p * size_, size_) * inv;
    });
  }

 private:
  int64_t planes_ = 0, size_ = 0;
};

std::unique_ptr<Kernel> make_max_pool2d(const std::vector<TensorDesc>& in, const Attrs& attrs) {
  return std::make_unique<Pool2dKernel>(in, attrs, true);
}
std::unique_ptr<Kernel> make_avg_pool2d(const std::vector<TensorDesc>& in, const Attrs& attrs) {
  return std::make_unique<Pool2dKernel>(in, attrs, false);
}
std::unique_ptr<Kernel> make_global_avg_pool(const std::vector<TensorDesc>& in, const Attrs& attrs) {
  return std::make_unique<GlobalAvgPoolKernel>(in, attrs);
}

}  // namespace

PHI_REGISTER_OP("max_pool2d", 1, 1, make_max_pool2d);
PHI_REGISTER_OP("avg_pool2d", 1, 1, make_avg_pool2d);
PHI_REGISTER_OP("global_avg_pool", 1, 1, make_global_avg_pool);

}  // namespace phi
