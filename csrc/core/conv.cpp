// conv2d: ONNX Conv on NCHW float32, with bias, residual and activation fused into the pass that
// writes the output.
//
// Three paths:
//  - depthwise (groups == C_in == C_out): a direct kernel vectorised over output rows; as a GEMM
//    it would be one 1 x (kh*kw) by (kh*kw) x P product per channel, all overhead.
//  - pointwise (1x1, stride 1, no padding): the image already is the GEMM's B matrix.
//  - general: im2col of a block of output rows into a per-worker buffer, then one GEMM per block.
//
// The GEMM paths cut the work into units (image, group, block of output rows) that workers take
// from a shared counter, each packing its block into its own L2-sized buffer and running a
// single-threaded GEMM with the epilogue fused. Batch images are thus split over the threads when
// N >= threads, and for a single image the blocks are: the im2col is parallel too, instead of a
// serial im2col feeding a threaded GEMM. Only when there are fewer units than threads (a small
// image) does the GEMM itself take the threads.
#include "core/conv.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>

#include "core/gemm.h"
#include "core/op_registry.h"

namespace phi {

namespace {

// Block sizing, measured on a ResNet-50's 3x3 layers (OpenBLAS SkylakeX kernels): below ~224
// columns a GEMM loses far more (C=512 at 7x7: 96 -> 24 GFLOP/s for 49 -> 7 columns) than keeping
// the im2col block in L2 gains (C=64 at 56x56: 106 GFLOP/s at 512 KiB, 93 at 7 MiB).
constexpr int64_t kColBlockBytes = 1 << 19;  // an im2col block stays in L2 until the GEMM packs it
constexpr int64_t kMinBlockCols = 224;       // ...unless that makes the GEMM narrower than this
constexpr int64_t kUnitsPerThread = 4;       // blocks per thread, so a dynamic split balances
constexpr double kFlopsPerThread = 2e6;      // below this a helper thread costs more than it saves

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// col[(c * kh + i) * kw + j][(oh - oh0) * ow + x] = image[c][oh*sh - pt + i*dh][x*sw - pl + j*dw],
// zero where the tap falls in the padding. Rows are copied whole (memcpy at stride 1).
PHI_HOT void im2col_block(const float* PHI_RESTRICT x, int64_t channels, const Window2d& g, const Span* spans,
                          int64_t oh0, int64_t oh1, float* PHI_RESTRICT col) {
  int64_t cols = (oh1 - oh0) * g.ow;
  for (int64_t c = 0; c < channels; ++c) {
    const float* plane = x + c * g.h * g.w;
    for (int64_t i = 0; i < g.kh; ++i) {
      for (int64_t j = 0; j < g.kw; ++j) {
        float* row = col + ((c * g.kh + i) * g.kw + j) * cols;
        const Span sp = spans[j];
        for (int64_t oh = oh0; oh < oh1; ++oh) {
          float* dst = row + (oh - oh0) * g.ow;
          int64_t ih = oh * g.sh - g.pt + i * g.dh;
          if (ih < 0 || ih >= g.h || sp.lo == sp.hi) {
            std::memset(dst, 0, sizeof(float) * g.ow);
            continue;
          }
          std::fill(dst, dst + sp.lo, 0.0f);
          std::fill(dst + sp.hi, dst + g.ow, 0.0f);
          const float* src = plane + ih * g.w + sp.lo * g.sw + j * g.dw - g.pl;
          float* d = dst + sp.lo;
          const int64_t n = sp.hi - sp.lo, s = g.sw;
          if (s == 1) {
            std::memcpy(d, src, sizeof(float) * n);
          } else {
#pragma omp simd
            for (int64_t t = 0; t < n; ++t) d[t] = src[t * s];
          }
        }
      }
    }
  }
}

// One channel of a depthwise conv: out[oh][x] = sum_ij w[i][j] * image[oh*sh - pt + i*dh][x*sw - pl + j*dw],
// accumulated one kernel tap at a time over a whole output row (a vector axpy).
PHI_HOT void depthwise_plane(const float* PHI_RESTRICT x, const float* PHI_RESTRICT w, const Window2d& g,
                             const Span* spans, float* PHI_RESTRICT out) {
  for (int64_t oh = 0; oh < g.oh; ++oh) {
    float* o = out + oh * g.ow;
    std::fill(o, o + g.ow, 0.0f);
    for_each_tap(x, g, spans, oh, o, [&](int64_t i, int64_t j, const float* src, float* d, int64_t n) {
      const float wv = w[i * g.kw + j];
      join_row(d, src, n, g.sw, [wv](float acc, float v) { return acc + wv * v; });
    });
  }
}

enum class ConvPath : uint8_t { depthwise, pointwise, im2col };

class Conv2dKernel final : public Kernel {
 public:
  Conv2dKernel(const std::vector<TensorDesc>& in, const Attrs& attrs) {
    const std::string op = "conv2d";
    const TensorDesc& x = in[0];
    const TensorDesc& w = in[1];
    expect_float(op, x, "x");
    expect_float(op, w, "w");
    expect_rank(op, x, 4, "x (N, C, H, W)");
    expect_rank(op, w, 4, "w (M, C/groups, kh, kw)");
    n_ = x.shape[0];
    c_ = x.shape[1];
    m_ = w.shape[0];
    g_.h = x.shape[2];
    g_.w = x.shape[3];
    g_.kh = w.shape[2];
    g_.kw = w.shape[3];
    groups_ = attrs.get_int(op, "groups", 1);
    check(groups_ >= 1, op, "groups must be positive");
    PHI_CHECK(c_ % groups_ == 0 && m_ % groups_ == 0, op,
              "input channels (" + std::to_string(c_) + ") and output channels (" + std::to_string(m_) +
                  ") must both be divisible by groups (" + std::to_string(groups_) + ")");
    PHI_CHECK(w.shape[1] * groups_ == c_, op,
              "w has " + std::to_string(w.shape[1]) + " input channels per group, but x has " + std::to_string(c_) +
                  " channels in " + std::to_string(groups_) + " group(s)");
    if (attrs.has("kernel_shape"))
      PHI_CHECK(attrs.get_ints(op, "kernel_shape", {}) == (Shape{g_.kh, g_.kw}), op,
                "kernel_shape does not match w's shape " + shape_str(w.shape));
    parse_window(op, attrs, g_);
    g_.oh = window_out_size(g_.h, g_.extent_h(), g_.sh, g_.pt, g_.pb, false);
    g_.ow = window_out_size(g_.w, g_.extent_w(), g_.sw, g_.pl, g_.pr, false);
    PHI_CHECK(g_.oh > 0 && g_.ow > 0, op,
              "the dilated kernel (" + std::to_string(g_.extent_h()) + "x" + std::to_string(g_.extent_w()) +
                  ") is larger than the padded input " + shape_str(x.shape));
    const Shape out{n_, m_, g_.oh, g_.ow};
    checked_numel(op, out, sizeof(float), "output");  // before the work split is sized from it
    if (in[2].present()) {
      expect_float(op, in[2], "bias");
      PHI_CHECK(in[2].shape == Shape{m_}, op,
                "bias must have shape (" + std::to_string(m_) + ",), got " + shape_str(in[2].shape));
    }
    if (in[3].present()) {
      expect_float(op, in[3], "residual");
      PHI_CHECK(in[3].shape == out, op,
                "residual must have the output shape " + shape_str(out) + ", got " + shape_str(in[3].shape));
    }
    parse_activation(op, attrs, ep_);
    ep_.bias_per_row = true;  // one bias per output channel = per row of each GEMM
    spans_ = column_spans(g_);
    plan();
    outputs_ = {TensorDesc{DType::f32, out}};
  }

  size_t workspace_bytes() const override {
    return path_ == ConvPath::im2col ? static_cast<size_t>(workers_ * k_ * rows_ * g_.ow) * sizeof(float) : 0;
  }

  void run(const TensorView* in, TensorView* out, void* workspace, const ExecContext& ctx) const override {
    const float* bias = in[2].present() ? in[2].ptr<const float>() : nullptr;
    const float* res = in[3].present() ? in[3].ptr<const float>() : nullptr;
    double flops = 2.0 * n_ * m_ * g_.oh * g_.ow * std::max<int64_t>(k_, 1);
    int threads = static_cast<int>(std::clamp<double>(flops / kFlopsPerThread, 1.0, ctx.resolved_threads()));
    if (path_ == ConvPath::depthwise) {
      run_depthwise(in[0].ptr<const float>(), in[1].ptr<const float>(), bias, res, out[0].ptr<float>(), threads);
    } else {
      run_gemm(in[0].ptr<const float>(), in[1].ptr<const float>(), bias, res, out[0].ptr<float>(),
               static_cast<float*>(workspace), threads);
    }
  }

 private:
  // Picks the path and the block of output rows per work unit: as tall as the L2 budget allows
  // (im2col) but at least kMinBlockCols columns, then shorter until there are kUnitsPerThread
  // units per thread (never under kMinBlockCols), then evened out so blocks balance.
  void plan() {
    bool one_by_one = g_.kh == 1 && g_.kw == 1 && g_.sh == 1 && g_.sw == 1 && g_.pt == 0 && g_.pl == 0 &&
                      g_.pb == 0 && g_.pr == 0;
    path_ = (groups_ == c_ && groups_ == m_) ? ConvPath::depthwise
            : one_by_one                     ? ConvPath::pointwise
                                             : ConvPath::im2col;
    k_ = (c_ / groups_) * g_.kh * g_.kw;
    int64_t capacity = ThreadPool::global().capacity();
    int64_t min_rows = std::min(g_.oh, ceil_div(kMinBlockCols, g_.ow));
    rows_ = g_.oh;
    if (path_ == ConvPath::im2col)
      rows_ = std::clamp<int64_t>(kColBlockBytes / std::max<int64_t>(1, k_ * g_.ow * 4), min_rows, g_.oh);
    int64_t images = std::max<int64_t>(1, n_ * groups_);
    int64_t want_blocks = ceil_div(kUnitsPerThread * capacity, images);
    if (ceil_div(g_.oh, rows_) < want_blocks)
      rows_ = std::min(rows_, std::max(min_rows, ceil_div(g_.oh, want_blocks)));  // only ever shorter
    rows_ = ceil_div(g_.oh, ceil_div(g_.oh, rows_));
    units_ = n_ * groups_ * ceil_div(g_.oh, rows_);
    workers_ = std::clamp<int64_t>(units_, 1, capacity);
  }

  void run_gemm(const float* x, const float* w, const float* bias, const float* res, float* y, float* ws,
                int threads) const {
    const int64_t blocks = ceil_div(g_.oh, rows_), p = g_.oh * g_.ow;
    const int64_t cg = c_ / groups_, mg = m_ / groups_;
    auto unit = [&](int64_t u, float* col, int gemm_threads) {
      int64_t blk = u % blocks, g = (u / blocks) % groups_, img = u / blocks / groups_;
      int64_t oh0 = blk * rows_, oh1 = std::min(g_.oh, oh0 + rows_), p0 = oh0 * g_.ow;
      const float* xg = x + (img * c_ + g * cg) * g_.h * g_.w;
      GemmArgs a;
      a.m = mg;
      a.n = (oh1 - oh0) * g_.ow;
      a.k = k_;
      a.a = w + g * mg * k_;
      a.lda = k_;
      if (path_ == ConvPath::pointwise) {
        a.b = xg + p0;
        a.ldb = p;
      } else {
        im2col_block(xg, cg, g_, spans_.data(), oh0, oh1, col);
        a.b = col;
        a.ldb = a.n;
      }
      a.c = y + (img * m_ + g * mg) * p + p0;
      a.ldc = p;
      a.epilogue = ep_;
      a.epilogue.bias = bias ? bias + g * mg : nullptr;
      a.epilogue.residual = res ? res + (img * m_ + g * mg) * p + p0 : nullptr;
      a.epilogue.ldr = p;
      gemm_f32(a, gemm_threads);
    };
    if (units_ < threads || threads == 1) {
      for (int64_t u = 0; u < units_; ++u) unit(u, ws, threads);
      return;
    }
    int workers = static_cast<int>(std::min<int64_t>(threads, workers_));
    const int64_t col_floats = k_ * rows_ * g_.ow;
    std::atomic<int64_t> next{0};
    ThreadPool::global().parallel_for(workers, workers, [&](int64_t worker) {
      float* col = ws ? ws + worker * col_floats : nullptr;
      for (int64_t u = next.fetch_add(1); u < units_; u = next.fetch_add(1)) unit(u, col, 1);
    });
  }

  void run_depthwise(const float* x, const float* w, const float* bias, const float* res, float* y,
                     int threads) const {
    const int64_t p = g_.oh * g_.ow, planes = n_ * c_;
    int64_t grain = std::max<int64_t>(1, static_cast<int64_t>(kFlopsPerThread / (2.0 * p * g_.kh * g_.kw)));
    parallel_range(planes, threads, grain, [&](int64_t b, int64_t e) {
      for (int64_t plane = b; plane < e; ++plane) {
        int64_t img = plane / c_, ch = plane % c_;
        float* o = y + plane * p;
        depthwise_plane(x + plane * g_.h * g_.w, w + ch * g_.kh * g_.kw, g_, spans_.data(), o);
        Epilogue ep = ep_;
        ep.bias = bias;
        ep.residual = res ? res + img * m_ * p : nullptr;
        ep.ldr = p;
        apply_epilogue(o, 1, p, p, ep, ch, 0);
      }
    });
  }

  int64_t n_ = 0, c_ = 0, m_ = 0, groups_ = 1, k_ = 0;
  Window2d g_;
  std::vector<Span> spans_;
  Epilogue ep_;
  ConvPath path_ = ConvPath::im2col;
  int64_t rows_ = 1;     // output rows per work unit
  int64_t units_ = 0;    // (image, group, block) units
  int64_t workers_ = 1;  // im2col buffers in the workspace
};

std::unique_ptr<Kernel> make_conv2d(const std::vector<TensorDesc>& in, const Attrs& attrs) {
  return std::make_unique<Conv2dKernel>(in, attrs);
}

}  // namespace

PHI_REGISTER_OP("conv2d", 2, 4, make_conv2d);

}  // namespace phi
