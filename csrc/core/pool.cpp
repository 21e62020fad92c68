// Pooling on NCHW float32: ONNX MaxPool, AveragePool and GlobalAveragePool. Windows are swept one
// kernel tap at a time over a whole output row, so the inner loop is a vector max / add over the
// output width with the padding resolved once per row (valid_span), never per element.
#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>

#include "core/conv.h"
#include "core/op_registry.h"

namespace phi {

namespace {

constexpr double kOpsPerThread = 1e6;  // below this a helper thread costs more than it saves

// Max over the window, padding as -inf (it never wins). NaN inputs are not propagated.
PHI_HOT void max_pool_plane(const float* PHI_RESTRICT x, const Window2d& g, const Span* spans,
                            float* PHI_RESTRICT out) {
  for (int64_t oh = 0; oh < g.oh; ++oh) {
    float* o = out + oh * g.ow;
    std::fill(o, o + g.ow, -std::numeric_limits<float>::infinity());
    for (int64_t i = 0; i < g.kh; ++i) {
      int64_t ih = oh * g.sh - g.pt + i * g.dh;
      if (ih < 0 || ih >= g.h) continue;
      for (int64_t j = 0; j < g.kw; ++j) {
        const Span sp = spans[j];
        if (sp.lo == sp.hi) continue;
        const float* src = x + ih * g.w + sp.lo * g.sw + j * g.dw - g.pl;
        float* d = o + sp.lo;
        const int64_t n = sp.hi - sp.lo, s = g.sw;
        if (s == 1) {
#pragma omp simd
          for (int64_t t = 0; t < n; ++t) d[t] = src[t] > d[t] ? src[t] : d[t];
        } else {
#pragma omp simd
          for (int64_t t = 0; t < n; ++t) d[t] = src[t * s] > d[t] ? src[t * s] : d[t];
        }
      }
    }
  }
}

// Sum over the in-image taps, times a precomputed 1 / divisor per output position.
PHI_HOT void avg_pool_plane(const float* PHI_RESTRICT x, const Window2d& g, const Span* spans,
                            const float* PHI_RESTRICT inv_count, float* PHI_RESTRICT out) {
  for (int64_t oh = 0; oh < g.oh; ++oh) {
    float* o = out + oh * g.ow;
    std::fill(o, o + g.ow, 0.0f);
    for (int64_t i = 0; i < g.kh; ++i) {
      int64_t ih = oh * g.sh - g.pt + i * g.dh;
      if (ih < 0 || ih >= g.h) continue;
      for (int64_t j = 0; j < g.kw; ++j) {
        const Span sp = spans[j];
        if (sp.lo == sp.hi) continue;
        const float* src = x + ih * g.w + sp.lo * g.sw + j * g.dw - g.pl;
        float* d = o + sp.lo;
        const int64_t n = sp.hi - sp.lo, s = g.sw;
        if (s == 1) {
#pragma omp simd
          for (int64_t t = 0; t < n; ++t) d[t] += src[t];
        } else {
#pragma omp simd
          for (int64_t t = 0; t < n; ++t) d[t] += src[t * s];
        }
      }
    }
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
std::vector<int64_t> tap_counts(int64_t in, int64_t out, int64_t k, int64_t stride, int64_t dilation,
                                int64_t pad_begin, int64_t pad_end, bool include_pad) {
  std::vector<int64_t> counts(static_cast<size_t>(out), 0);
  int64_t lo = include_pad ? -pad_begin : 0, hi = include_pad ? in + pad_end : in;
  for (int64_t o = 0; o < out; ++o)
    for (int64_t t = 0; t < k; ++t) {
      int64_t p = o * stride - pad_begin + t * dilation;
      counts[o] += (p >= lo && p < hi) ? 1 : 0;
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
    check(k.size() == 2, op, "kernel_shape must have 2 values, got " + std::to_string(k.size()));
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
    check(g_.oh > 0 && g_.ow > 0, op,
          "the (dilated) kernel " + std::to_string(g_.extent_h()) + "x" + std::to_string(g_.extent_w()) +
              " is larger than the padded input " + shape_str(x.shape));
    spans_ = column_spans(g_);
    if (!max_) {
      bool include_pad = attrs.get_int(op, "count_include_pad", 0) != 0;
      auto ch = tap_counts(g_.h, g_.oh, g_.kh, g_.sh, g_.dh, g_.pt, g_.pb, include_pad);
      auto cw = tap_counts(g_.w, g_.ow, g_.kw, g_.sw, g_.dw, g_.pl, g_.pr, include_pad);
      inv_count_.resize(static_cast<size_t>(g_.oh * g_.ow));
      for (int64_t i = 0; i < g_.oh; ++i)
        for (int64_t j = 0; j < g_.ow; ++j) {
          int64_t c = ch[i] * cw[j];
          inv_count_[i * g_.ow + j] = c > 0 ? 1.0f / static_cast<float>(c) : 0.0f;
        }
    }
    outputs_ = {TensorDesc{DType::f32, {x.shape[0], x.shape[1], g_.oh, g_.ow}}};
  }

  void run(const TensorView* in, TensorView* out, void*, const ExecContext& ctx) const override {
    const float* x = in[0].ptr<const float>();
    float* y = out[0].ptr<float>();
    int64_t plane_in = g_.h * g_.w, plane_out = g_.oh * g_.ow;
    double ops_per_plane = static_cast<double>(plane_out) * g_.kh * g_.kw + plane_in;
    int64_t grain = std::max<int64_t>(1, static_cast<int64_t>(kOpsPerThread / ops_per_plane));
    parallel_range(planes_, ctx.resolved_threads(), grain, [&](int64_t b, int64_t e) {
      for (int64_t p = b; p < e; ++p) {
        if (max_) max_pool_plane(x + p * plane_in, g_, spans_.data(), y + p * plane_out);
        else avg_pool_plane(x + p * plane_in, g_, spans_.data(), inv_count_.data(), y + p * plane_out);
      }
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
    check(x.ndim() >= 3, op, "x must be (N, C, spatial...) of rank >= 3, got shape " + shape_str(x.shape));
    planes_ = x.shape[0] * x.shape[1];
    size_ = numel(Shape(x.shape.begin() + 2, x.shape.end()));
    check(size_ > 0, op, "spatial dimensions must be non-empty, got shape " + shape_str(x.shape));
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
