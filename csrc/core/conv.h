// Geometry of a 2-D sliding window, shared by convolution and pooling: ONNX's kernel_shape,
// strides, pads [top, left, bottom, right] and dilations, the output size they give, and the
// range of output positions whose input tap falls inside the image (so inner loops never test
// bounds per element).
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "core/common.h"

namespace phi {

struct Window2d {
  int64_t kh = 1, kw = 1;  // kernel
  int64_t sh = 1, sw = 1;  // strides
  int64_t dh = 1, dw = 1;  // dilations
  int64_t pt = 0, pl = 0, pb = 0, pr = 0;  // pads: top, left, bottom, right
  int64_t h = 0, w = 0;    // input plane
  int64_t oh = 0, ow = 0;  // output plane

  int64_t extent_h() const { return (kh - 1) * dh + 1; }
  int64_t extent_w() const { return (kw - 1) * dw + 1; }
};

// Kernel sizes, strides, dilations and pads must stay below this. Far past any real window, and
// with input dimensions below kMaxTensorBytes it keeps every window computation inside int64.
constexpr int64_t kMaxWindowParam = int64_t{1} << 31;

// Reads "strides", "pads" and "dilations" (defaults 1, 0, 1), failing with the op's name on a
// wrong count, a non-positive stride/dilation, a negative pad or a value of kMaxWindowParam or
// more. kh/kw must be set already.
inline void parse_window(const std::string& op, const Attrs& attrs, Window2d& g) {
  auto s = attrs.get_ints(op, "strides", {1, 1});
  auto d = attrs.get_ints(op, "dilations", {1, 1});
  auto p = attrs.get_ints(op, "pads", {0, 0, 0, 0});
  PHI_CHECK(s.size() == 2, op, "strides must have 2 values, got " + std::to_string(s.size()));
  PHI_CHECK(d.size() == 2, op, "dilations must have 2 values, got " + std::to_string(d.size()));
  PHI_CHECK(p.size() == 4, op, "pads must have 4 values [top, left, bottom, right], got " + std::to_string(p.size()));
  check(s[0] > 0 && s[1] > 0, op, "strides must be positive");
  check(d[0] > 0 && d[1] > 0, op, "dilations must be positive");
  for (int64_t v : p) check(v >= 0, op, "pads must be non-negative");
  check(g.kh > 0 && g.kw > 0, op, "kernel_shape must be positive");
  for (int64_t v : {s[0], s[1], d[0], d[1], p[0], p[1], p[2], p[3], g.kh, g.kw})
    PHI_CHECK(v < kMaxWindowParam, op,
              "kernel sizes, strides, dilations and pads must be below 2^31, got " + std::to_string(v));
  g.sh = s[0]; g.sw = s[1];
  g.dh = d[0]; g.dw = d[1];
  g.pt = p[0]; g.pl = p[1]; g.pb = p[2]; g.pr = p[3];
}

// Output length along one axis (ONNX Conv / MaxPool / AveragePool). In ceil mode the last window
// must still start inside the input or its leading pad (PyTorch's rule, which ONNX Runtime follows).
inline int64_t window_out_size(int64_t in, int64_t extent, int64_t stride, int64_t pad_begin, int64_t pad_end,
                               bool ceil_mode) {
  int64_t span = in + pad_begin + pad_end - extent;
  if (span < 0) return 0;
  int64_t out = (ceil_mode ? (span + stride - 1) / stride : span / stride) + 1;
  if (ceil_mode && (out - 1) * stride >= in + pad_begin) --out;
  return out;
}

// Output positions o in [lo, hi) whose tap o * stride + offset lies in [0, in).
struct Span {
  int64_t lo = 0, hi = 0;
};

inline Span valid_span(int64_t in, int64_t out, int64_t stride, int64_t offset) {
  Span s;
  s.lo = offset >= 0 ? 0 : (-offset + stride - 1) / stride;
  s.hi = in - 1 - offset >= 0 ? std::min(out, (in - 1 - offset) / stride + 1) : 0;
  s.lo = std::min(s.lo, out);
  s.hi = std::max(s.hi, s.lo);
  return s;
}

// valid_span of every kernel column j (tap offset j * dw - pl): per-row loops look it up.
inline std::vector<Span> column_spans(const Window2d& g) {
  std::vector<Span> spans(static_cast<size_t>(g.kw));
  for (int64_t j = 0; j < g.kw; ++j) spans[j] = valid_span(g.w, g.ow, g.sw, j * g.dw - g.pl);
  return spans;
}

// d[t] = src[t * s] for t < n (d and src do not overlap): every element of a strided input row, as
// im2col reads them (a call per row: the window sweeps, whose rows are short, inline their own loop).
void strided_copy(float* PHI_RESTRICT d, const float* PHI_RESTRICT src, int64_t n, int64_t s);

// The sweep shared by depthwise convolution and pooling: for output row `oh`, every kernel tap
// (i, j) whose input row lies in the image calls f(i, j, src, dst, n), where the output elements
// dst[0..n) read src[t * g.sw]. Padding is resolved once per row and tap (spans from
// column_spans), so f's loop over t is the only per-element work and never tests bounds.
template <class F>
PHI_ALWAYS_INLINE void for_each_tap(const float* x, const Window2d& g, const Span* spans, int64_t oh, float* out_row,
                                    F f) {
  for (int64_t i = 0; i < g.kh; ++i) {
    const int64_t ih = oh * g.sh - g.pt + i * g.dh;
    if (ih < 0 || ih >= g.h) continue;
    for (int64_t j = 0; j < g.kw; ++j) {
      const Span sp = spans[j];
      if (sp.lo == sp.hi) continue;
      f(i, j, x + ih * g.w + sp.lo * g.sw + j * g.dw - g.pl, out_row + sp.lo, sp.hi - sp.lo);
    }
  }
}

// d[t] = join(d[t], src[t * stride]) for t < n: one vector loop, with the unit stride (the
// common case, contiguous loads) compiled separately from the strided one.
template <class Join>
PHI_ALWAYS_INLINE void join_row(float* PHI_RESTRICT d, const float* PHI_RESTRICT src, int64_t n, int64_t stride,
                                Join join) {
  if (stride == 1) {
#pragma omp simd
    for (int64_t t = 0; t < n; ++t) d[t] = join(d[t], src[t]);
  } else {
#pragma omp simd
    for (int64_t t = 0; t < n; ++t) d[t] = join(d[t], src[t * stride]);
  }
}

}  // namespace phi
