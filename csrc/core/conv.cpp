// conv2d: ONNX Conv on NCHW float32, with bias, residual and activation fused into the pass that
// writes the output.
//
// Five paths:
//  - direct (AVX-512; one group, at most 32 output channels, output rows of 16 pixels or more, or
//    of exactly 8 for stride-1 windows: a ResNet's stem and first two stages): no im2col at all,
//    see "the direct path" below. Against the
//    im2col paths on a ResNet-style CNN at batch 32, 1 thread: the 7x7 stride-2 stem 2.60 -> 1.62
//    ms, a 3x3 16-channel layer at 16x16 0.72 -> 0.41 ms (about 95 GFLOP/s, both).
//  - depthwise (groups == C_in == C_out): a direct kernel vectorised over output rows; as a GEMM
//    it would be one 1 x (kh*kw) by (kh*kw) x P product per channel, all overhead.
//  - pointwise (1x1, stride 1, no padding) on wide images: the image already is the GEMM's B matrix.
//  - im2col on wide images: im2col of a block of output rows into a per-worker buffer, then one
//    GEMM per block. With stride 2 the block's input rows are first split into even and odd
//    columns, so each tap's row is a contiguous copy.
//  For these two, up to kMicroMaxRows output channels per group run W's row blocks through the
//  packed GEMM's micro-kernel reading the block in place; more go to BLAS, which packs the block
//  first (as much work as the product at 16 rows).
//  - panels, for small images (output rows under 16 pixels) in batches of at least one panel:
//    the pixels of all the batch's images form one sequence (pixel q of a group is image q / P,
//    position q % P), cut into panels of the packed GEMM micro-kernel's width nr (64 on AVX-512).
//    A panel's im2col columns are built once in a worker's buffer, in the layout the micro-kernel
//    streams (K rows of nr floats), multiplied by every row block of W into an M x nr tile, and the
//    tile is written to each image it covers with the epilogue applied. Late layers of a CNN have
//    small images (4 x 4 or 2 x 2 pixels in a ResNet on 64 x 64 inputs): one GEMM per image made
//    BLAS products 4 to 16 columns wide, where a panel spanning images keeps the tile full
//    (ResNet-style CNN, batch 32, 1 thread: a 3x3 conv at 4x4 0.75 -> 0.46 ms, at 2x2 0.80 -> 0.47).
//    Wide images keep the im2col path: their output rows are long contiguous runs that it copies
//    whole, where a panel's rows would be gathered (measured slower at 16 and 32 columns).
//
// The GEMM paths cut the work into units that workers take from a shared counter, each packing
// into its own L2-sized buffer and running a single-threaded GEMM with the epilogue fused: (image,
// group, block of output rows) for im2col and pointwise, (group, panel, chunk of W's row blocks)
// for panels. Batch images are thus split over the threads when N >= threads, and for a single
// image the blocks are: the im2col is parallel too, instead of a serial im2col feeding a threaded
// GEMM. Only when there are fewer units than threads (a small image) does the GEMM itself take the
// threads (im2col and pointwise), or W's rows are split into more chunks (panels).
#include "core/conv.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>
#include <memory>
#include <utility>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define PHI_CONV_X86 1
#include <immintrin.h>
#endif

#include "core/cpu_features.h"
#include "core/epilogue.h"
#include "core/gemm.h"
#include "core/op_registry.h"
#include "core/packed_gemm.h"
#include "core/threadpool.h"

namespace phi {

namespace {

// Block sizing, measured on a ResNet-50's 3x3 layers (OpenBLAS SkylakeX kernels): below ~224
// columns a GEMM loses far more (C=512 at 7x7: 96 -> 24 GFLOP/s for 49 -> 7 columns) than keeping
// the im2col block in L2 gains (C=64 at 56x56: 106 GFLOP/s at 512 KiB, 93 at 7 MiB).
constexpr int64_t kColBlockBytes = 1 << 19;  // an im2col block stays in L2 until the GEMM packs it
constexpr int64_t kMinBlockCols = 224;       // ...unless that makes the GEMM narrower than this
constexpr int64_t kUnitsPerThread = 4;       // blocks per thread, so a dynamic split balances
constexpr double kFlopsPerThread = 2e6;      // below this a helper thread costs more than it saves
constexpr int kMaxPanel = 64;                // the widest micro-kernel panel (AVX-512: 64 columns)
constexpr int64_t kPanelMaxWidth = 16;       // output rows narrower than this take the panel path
constexpr int64_t kMicroMaxRows = 32;        // output channels per group up to which wide images use
                                             // the micro-kernel rather than BLAS

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// col[(c * kh + i) * kw + j][(oh - oh0) * ow + x] = image[c][oh*sh - pt + i*dh][x*sw - pl + j*dw],
// zero where the tap falls in the padding. With stride 2 the block's input rows are first split
// into their even and odd columns (`split`, channels x rows x (w + 1) floats), once, so that every
// tap of every output row is a contiguous copy instead of a strided one (a 7x7 stride-2 stem
// makes 49 of them per channel and output row).
PHI_HOT void im2col_block(const float* PHI_RESTRICT x, int64_t channels, const Window2d& g, const Span* spans,
                          int64_t oh0, int64_t oh1, float* PHI_RESTRICT col, float* PHI_RESTRICT split) {
  const int64_t cols = (oh1 - oh0) * g.ow;
  const bool two = g.sw == 2 && split != nullptr;
  const int64_t ih0 = std::max<int64_t>(0, oh0 * g.sh - g.pt);
  const int64_t ih1 = std::min(g.h, (oh1 - 1) * g.sh - g.pt + (g.kh - 1) * g.dh + 1);
  const int64_t we = (g.w + 1) / 2, pitch = g.w + 1;  // a split row: we even columns, then the odd
  if (two) {
    for (int64_t c = 0; c < channels; ++c)
      for (int64_t ih = ih0; ih < ih1; ++ih) {
        const float* src = x + (c * g.h + ih) * g.w;
        float* dst = split + (c * (ih1 - ih0) + ih - ih0) * pitch;
        strided_copy(dst, src, we, 2);
        strided_copy(dst + we, src + 1, g.w / 2, 2);
      }
  }
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
            std::fill(dst, dst + g.ow, 0.0f);
            continue;
          }
          std::fill(dst, dst + sp.lo, 0.0f);
          std::fill(dst + sp.hi, dst + g.ow, 0.0f);
          const int64_t first = sp.lo * g.sw + j * g.dw - g.pl;  // the input column of output sp.lo
          float* d = dst + sp.lo;
          const int64_t n = sp.hi - sp.lo;
          if (g.sw == 1) {
            const float* src = plane + ih * g.w + first;
#pragma omp simd
            for (int64_t t = 0; t < n; ++t) d[t] = src[t];
          } else if (two) {  // columns first, first + 2, ...: one parity, contiguous in the split row
            const float* half = split + (c * (ih1 - ih0) + ih - ih0) * pitch + (first % 2 ? we : 0);
            const float* src = half + first / 2;
#pragma omp simd
            for (int64_t t = 0; t < n; ++t) d[t] = src[t];
          } else {
            strided_copy(d, plane + ih * g.w + first, n, g.sw);
          }
        }
      }
    }
  }
}

// A run of a panel's pixels within one output row: x in [x0, x1) of row oh of image img, at
// panel column t.
struct Segment {
  int64_t img = 0, oh = 0, x0 = 0, x1 = 0, t = 0;
};

// The segments of the `cols` pixels from q0 (at most cols of them: each holds one pixel or more).
int panel_segments(const Window2d& g, int64_t q0, int64_t cols, Segment* segs) {
  const int64_t p = g.oh * g.ow;
  int count = 0;
  for (int64_t q = q0, t = 0; t < cols; ++count) {
    const int64_t img = q / p, pos = q % p, oh = pos / g.ow, x = pos % g.ow;
    const int64_t n = std::min(g.ow - x, cols - t);
    segs[count] = Segment{img, oh, x, x + n, t};
    q += n;
    t += n;
  }
  return count;
}

// row_c[t] = idx[t] >= 0 ? x[c * plane + idx[t]] : 0 for t < nr, with row_c = rows + c * row_step, for
// every channel c: the gathers of one tap. Compilers leave the conditional load scalar (about two
// cycles a column); AVX-512 gathers 16 columns at a time under a mask.
#if defined(PHI_CONV_X86)
__attribute__((target("avx512f"))) void gather_rows_avx512(const float* x, int64_t plane, int64_t channels,
                                                          const int32_t* idx, int nr, float* rows, int64_t row_step) {
  const __m512i zero = _mm512_setzero_si512();
  for (int64_t c = 0; c < channels; ++c) {
    const float* xc = x + c * plane;
    float* row = rows + c * row_step;
    for (int t = 0; t < nr; t += 16) {
      const __m512i vi = _mm512_loadu_si512(idx + t);
      const __mmask16 valid = _mm512_cmpge_epi32_mask(vi, zero);
      _mm512_storeu_ps(row + t, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), valid, vi, xc, 4));
    }
  }
}
#endif

template <class Index>
PHI_ALWAYS_INLINE void gather_rows(const float* PHI_RESTRICT x, int64_t plane, int64_t channels, const Index* idx,
                                   int nr, float* PHI_RESTRICT rows, int64_t row_step) {
#if defined(PHI_CONV_X86)
  if constexpr (sizeof(Index) == 4) {
    static const bool avx512 = cpu_features().avx512f;
    if (avx512 && nr % 16 == 0) return gather_rows_avx512(x, plane, channels, idx, nr, rows, row_step);
  }
#endif
  for (int64_t c = 0; c < channels; ++c) {
    const float* xc = x + c * plane;
    float* row = rows + c * row_step;
    for (int t = 0; t < nr; ++t) row[t] = idx[t] >= 0 ? xc[idx[t]] : 0.0f;
  }
}

// panel[k * nr + t] = image(t)[c][oh(t)*sh - pt + i*dh][x(t)*sw - pl + j*dw] for k = (c * kh + i) * kw + j,
// zero where the tap falls in the padding and in columns past the panel's pixels. `x` is channel 0
// of the group in the panel's first image; images are image_stride floats apart.
//
// Per tap (i, j), the source of every column is computed once (an offset from channel 0, or -1 in
// the padding), and each channel's row is then a gather through that table. Small images make
// runs of a few pixels (2 x 2 outputs: runs of 2 and 32 runs per row of a panel), where copying
// run by run cost more than the product itself; a tap whose columns are one contiguous run in
// every channel is copied whole. Offsets are Index (int32_t, which gathers twice as wide, unless
// the images a panel spans are too large for it).
template <class Index>
PHI_ALWAYS_INLINE void im2col_panel_as(const float* PHI_RESTRICT x, int64_t image_stride, int64_t channels,
                                       const Window2d& g, const Span* spans, const Segment* segs, int nseg,
                                       int64_t cols, int nr, float* PHI_RESTRICT panel) {
  const int64_t img0 = segs[0].img, plane = g.h * g.w, sw = g.sw;
  Index idx[kMaxPanel];
  for (int64_t i = 0; i < g.kh; ++i) {
    for (int64_t j = 0; j < g.kw; ++j) {
      const Span sp = spans[j];  // the output columns whose tap j is inside the image
      for (int s = 0; s < nseg; ++s) {
        const Segment& sg = segs[s];
        Index* d = idx + sg.t - sg.x0;  // d[x] is output column x of the segment's row
        const int64_t ih = sg.oh * g.sh - g.pt + i * g.dh;
        int64_t lo = std::clamp(sp.lo, sg.x0, sg.x1), hi = std::clamp(sp.hi, lo, sg.x1);
        if (ih < 0 || ih >= g.h) lo = hi = sg.x1;
        std::fill(d + sg.x0, d + lo, Index{-1});
        std::fill(d + hi, d + sg.x1, Index{-1});
        const int64_t base = (sg.img - img0) * image_stride + ih * g.w + j * g.dw - g.pl;
        for (int64_t xo = lo; xo < hi; ++xo) d[xo] = static_cast<Index>(base + xo * sw);
      }
      std::fill(idx + cols, idx + nr, Index{-1});
      float* rows = panel + (i * g.kw + j) * nr;  // channel c's row is c * kh * kw rows further
      const int64_t row_step = g.kh * g.kw * nr;
      bool run = idx[0] >= 0;
      for (int t = 1; t < nr && run; ++t) run = idx[t] == idx[0] + t;
      if (run) {
        for (int64_t c = 0; c < channels; ++c) std::memcpy(rows + c * row_step, x + c * plane + idx[0], sizeof(float) * nr);
      } else {
        gather_rows(x, plane, channels, idx, nr, rows, row_step);
      }
    }
  }
}

PHI_HOT void im2col_panel(const float* PHI_RESTRICT x, int64_t image_stride, int64_t channels, const Window2d& g,
                          const Span* spans, const Segment* segs, int nseg, int64_t cols, int nr, bool wide,
                          float* PHI_RESTRICT panel) {
  if (wide) return im2col_panel_as<int64_t>(x, image_stride, channels, g, spans, segs, nseg, cols, nr, panel);
  im2col_panel_as<int32_t>(x, image_stride, channels, g, spans, segs, nseg, cols, nr, panel);
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

enum class ConvPath : uint8_t { depthwise, pointwise, im2col, panels, direct };

// ---- the direct path -------------------------------------------------------------------------
//
// For layers with few output channels on images at least one vector wide (a ResNet's 7x7 stem and
// its 16-channel stage): no im2col. Vectors run along 16 output pixels of a row, a tile holds up to
// 16 output channels (16 zmm accumulators), and per tap (input channel, ky, kx) one vector of
// input pixels is multiplied by each channel's weight, broadcast. The input vector is contiguous
// because the image is first copied, padded, into stride phases: phase r of a row holds its padded
// columns r, r + s, r + 2s, ..., so output pixel ox's tap kx reads phase (kx * dw) % s at index
// ox + (kx * dw) / s. The tile's rows are output rows of NCHW as they are: bias, residual and
// activation are applied in registers and each row is stored once, no transpose.
constexpr int64_t kDirectChannels = 16;  // output channels per tile
constexpr int64_t kDirectMaxChannels = 32;
constexpr int64_t kDirectMinWidth = 16;

// The padded image in stride phases: phase r, channel c, padded row i at
// (r * channels + c) * rows * pitch + i * pitch; `pitch` floats a phase row (zero past the image).
struct DirectLayout {
  int64_t rows = 0, pitch = 0, phases = 1;
  int64_t floats(int64_t channels) const { return phases * channels * rows * pitch; }
};

#if defined(PHI_CONV_X86)
// One image's phases, from x (channels x h x w); zero wherever the padded image has no input.
void direct_phases(const float* PHI_RESTRICT x, int64_t channels, const Window2d& g, const DirectLayout& l,
                   float* PHI_RESTRICT dst) {
  const int64_t s = l.phases;
  for (int64_t r = 0; r < s; ++r)
    for (int64_t c = 0; c < channels; ++c)
      for (int64_t i = 0; i < l.rows; ++i) {
        float* d = dst + ((r * channels + c) * l.rows + i) * l.pitch;
        const int64_t iy = i - g.pt;
        if (iy < 0 || iy >= g.h) {
          std::memset(d, 0, sizeof(float) * l.pitch);
          continue;
        }
        // phase column j is padded column j * s + r, input column j * s + r - pl
        const int64_t first = std::max<int64_t>(0, ceil_div(g.pl - r, s));  // first j inside the image
        const int64_t end = std::clamp<int64_t>(ceil_div(g.w + g.pl - r, s), first, l.pitch);
        std::memset(d, 0, sizeof(float) * first);
        if (end > first) strided_copy(d + first, x + (c * g.h + iy) * g.w + first * s + r - g.pl, end - first, s);
        std::memset(d + end, 0, sizeof(float) * (l.pitch - end));
      }
}

// Output rows [oh0, oh1) of one image and one block of `rows` <= 16 channels: y is the block's
// first channel plane, w the block's weights packed k-major (K x 16, zero past `rows`).
// Q output rows per vector: 1 for rows of 16 pixels or more (tiles of 16 along the row), 2 for
// rows of exactly 8 pixels (the vector is two whole rows, contiguous in the output).
template <int Q>
__attribute__((target("avx512f,avx2,fma"), always_inline)) inline __m512 direct_input(const float* p,
                                                                                     int64_t next) {
  static_assert(Q == 1 || Q == 2);
  if constexpr (Q == 1) {
    return _mm512_loadu_ps(p);  // the pitch leaves room past the last tile
  } else {  // lanes 0-7 from this row, 8-15 from the next (a maskz_ insert: GCC 12 warns of the
            // plain one's undefined operand; masked loads instead were 2.3x slower on Zen 4)
    const __m512d lo = _mm512_castpd256_pd512(_mm256_castps_pd(_mm256_loadu_ps(p)));
    return _mm512_castpd_ps(_mm512_maskz_insertf64x4(0xFF, lo, _mm256_castps_pd(_mm256_loadu_ps(p + next)), 1));
  }
}

template <int R, int Q>
__attribute__((target("avx512f,avx2,fma"))) void direct_block(const float* xp, const DirectLayout& l,
                                                               const int64_t* off, int64_t k, const float* w,
                                                               const float* bias, const float* res, float* y,
                                                               const Window2d& g, int64_t oh0, int64_t oh1,
                                                               const Epilogue& ep, bool act_inline) {
  const int64_t plane = g.oh * g.ow, next = g.sh * l.pitch;
  const bool relu = ep.act == math::Act::relu;
  for (int64_t oy = oh0; oy < oh1; oy += Q) {
    const float* row = xp + oy * g.sh * l.pitch;
    for (int64_t ox0 = 0; ox0 < g.ow; ox0 += 16) {
      const int64_t valid = Q == 1 ? g.ow - ox0 : std::min<int64_t>(Q, oh1 - oy) * g.ow;
      const __mmask16 lanes = valid >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << valid) - 1);
      __m512 acc[R];
      for (int r = 0; r < R; ++r) acc[r] = bias ? _mm512_set1_ps(bias[r]) : _mm512_setzero_ps();
      const float* base = row + ox0;
      const float* wk = w;
      for (int64_t t = 0; t < k; ++t, wk += kDirectChannels) {
        const __m512 v = direct_input<Q>(base + off[t], next);
        for (int r = 0; r < R; ++r) acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(wk[r]), v, acc[r]);
      }
      float* out = y + oy * g.ow + ox0;
      for (int r = 0; r < R; ++r) {
        __m512 v = acc[r];
        if (res) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(lanes, res + r * plane + oy * g.ow + ox0));
        if (act_inline && relu) v = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_LT_OQ), v,
                                                         _mm512_setzero_ps());  // NaN stays NaN
        _mm512_mask_storeu_ps(out + r * plane, lanes, v);
      }
    }
  }
}

using DirectBlockFn = void (*)(const float*, const DirectLayout&, const int64_t*, int64_t, const float*, const float*,
                               const float*, float*, const Window2d&, int64_t, int64_t, const Epilogue&, bool);

template <int Q, int... Rs>
constexpr std::array<DirectBlockFn, sizeof...(Rs)> direct_blocks(std::integer_sequence<int, Rs...>) {
  return {&direct_block<Rs + 1, Q>...};
}
// By rows per vector (1, 2), then by channels in the block (1..16).
const std::array<std::array<DirectBlockFn, kDirectChannels>, 2> kDirectBlock = {
    direct_blocks<1>(std::make_integer_sequence<int, kDirectChannels>{}),
    direct_blocks<2>(std::make_integer_sequence<int, kDirectChannels>{})};
#endif


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
    if (path_ == ConvPath::direct)
      return static_cast<size_t>(direct_weight_floats() + workers_ * direct_.floats(c_)) * sizeof(float);
    if (path_ == ConvPath::panels) return static_cast<size_t>(workers_ * panel_worker_floats()) * sizeof(float);
    return static_cast<size_t>(workers_ * block_worker_floats()) * sizeof(float);
  }

  void run(const TensorView* in, TensorView* out, void* workspace, const ExecContext& ctx) const override {
    const float* bias = in[2].present() ? in[2].ptr<const float>() : nullptr;
    const float* res = in[3].present() ? in[3].ptr<const float>() : nullptr;
    double flops = 2.0 * n_ * m_ * g_.oh * g_.ow * std::max<int64_t>(k_, 1);
    int threads = static_cast<int>(std::clamp<double>(flops / kFlopsPerThread, 1.0, ctx.resolved_threads()));
    if (path_ == ConvPath::depthwise) {
      run_depthwise(in[0].ptr<const float>(), in[1].ptr<const float>(), bias, res, out[0].ptr<float>(), threads);
    } else if (path_ == ConvPath::direct) {
      run_direct(in[0].ptr<const float>(), in[1].ptr<const float>(), bias, res, out[0].ptr<float>(),
                 static_cast<float*>(workspace), threads);
    } else if (path_ == ConvPath::panels) {
      run_panels(in[0].ptr<const float>(), in[1].ptr<const float>(), bias, res, out[0].ptr<float>(),
                 static_cast<float*>(workspace), threads);
    } else {
      run_gemm(in[0].ptr<const float>(), in[1].ptr<const float>(), bias, res, out[0].ptr<float>(),
               static_cast<float*>(workspace), threads);
    }
  }

 private:
  // Picks the path (panels for small images in batches of a panel or more, see the top of the
  // file) and, for im2col and pointwise, the block of output rows per work unit: as tall as the
  // L2 budget allows (im2col) but at least kMinBlockCols columns, then shorter until there are
  // kUnitsPerThread units per thread (never under kMinBlockCols), then evened out so blocks balance.
  void plan() {
    bool one_by_one = g_.kh == 1 && g_.kw == 1 && g_.sh == 1 && g_.sw == 1 && g_.pt == 0 && g_.pl == 0 &&
                      g_.pb == 0 && g_.pr == 0;
    path_ = (groups_ == c_ && groups_ == m_) ? ConvPath::depthwise
            : one_by_one                     ? ConvPath::pointwise
                                             : ConvPath::im2col;
    k_ = (c_ / groups_) * g_.kh * g_.kw;
#if defined(PHI_CONV_X86)
    // Rows of 8 pixels go two to a vector, for 3x3-like stride-1 layers (measured: 0.57 -> 0.41 ms
    // for a 32-channel 3x3 layer at 8x8, batch 32; slower than the panels for a 1x1 or stride 2,
    // and four 4-pixel rows to a vector gained 6 % at best).
    const bool direct_width =
        g_.ow >= kDirectMinWidth || (g_.ow == 8 && g_.sh == 1 && g_.sw == 1 && g_.kh * g_.kw > 1);
    if (path_ != ConvPath::depthwise && groups_ == 1 && m_ <= kDirectMaxChannels && direct_width &&
        cpu_features().avx512f) {
      plan_direct();
      return;
    }
#endif
    if (path_ != ConvPath::depthwise && g_.ow < kPanelMaxWidth && n_ * g_.oh * g_.ow >= micro_nr(false)) {
      plan_panels(one_by_one);
      return;
    }
    // Few output channels: the micro-kernel reads the block's columns in place, where BLAS would
    // pack them first, as much work as the product at 16 rows (the 7x7 stem of a ResNet).
    nr_ = micro_nr(false);
    mr_ = packed_tile().mr;
    micro_ = m_ / groups_ <= kMicroMaxRows;
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

  // The direct path: phases of the padded image, the taps' offsets into them, and work units of
  // (image, block of output rows), whole images when there are enough to share out.
  void plan_direct() {
    path_ = ConvPath::direct;
    const int64_t s = g_.sw;
    direct_.phases = s;
    direct_q_ = g_.ow >= kDirectMinWidth ? 1 : 16 / g_.ow;
    // A vector of Q rows reads whole row groups: rows past the image's last are zeros.
    direct_.rows = std::max(g_.h + g_.pt + g_.pb, (ceil_div(g_.oh, direct_q_) * direct_q_ - 1) * g_.sh + g_.extent_h());
    const int64_t tiles = direct_q_ == 1 ? ceil_div(g_.ow, 16) * 16 : g_.ow;
    direct_.pitch = std::max(ceil_div(g_.w + g_.pl + g_.pr, s), tiles + (g_.extent_w() - 1) / s + 1);
    offsets_.clear();
    for (int64_t ci = 0; ci < c_; ++ci)
      for (int64_t ky = 0; ky < g_.kh; ++ky)
        for (int64_t kx = 0; kx < g_.kw; ++kx) {
          const int64_t col = kx * g_.dw;
          offsets_.push_back((((col % s) * c_ + ci) * direct_.rows + ky * g_.dh) * direct_.pitch + col / s);
        }
    const int64_t capacity = ThreadPool::global().capacity();
    const int64_t want = kUnitsPerThread * capacity;
    rows_ = n_ >= want ? g_.oh : ceil_div(g_.oh, std::min(g_.oh, ceil_div(want, std::max<int64_t>(n_, 1))));
    rows_ = ceil_div(rows_, direct_q_) * direct_q_;  // a unit holds whole vectors of rows
    units_ = n_ * ceil_div(g_.oh, rows_);
    workers_ = std::clamp<int64_t>(units_, 1, capacity);
  }
  int64_t direct_weight_floats() const { return ceil_div(m_, kDirectChannels) * kDirectChannels * k_; }

  // An im2col / pointwise worker's buffers, in this order: the im2col block, the block's input rows
  // split into even and odd columns (im2col with stride 2), and with the micro-kernel one panel for
  // a block's partial last columns.
  int64_t block_worker_floats() const { return col_floats() + split_floats() + (micro_ ? k_ * nr_ : 0); }
  int64_t col_floats() const { return path_ == ConvPath::im2col ? k_ * rows_ * g_.ow : 0; }
  int64_t split_floats() const {
    if (path_ != ConvPath::im2col || g_.sw != 2) return 0;
    const int64_t rows = std::min(g_.h, (rows_ - 1) * g_.sh + (g_.kh - 1) * g_.dh + 1);
    return (c_ / groups_) * rows * (g_.w + 1);
  }

  // A panel-path worker's buffers: one panel (K x nr) and one output tile (M/groups x nr).
  int64_t panel_worker_floats() const { return (k_ + m_ / groups_) * nr_; }

  // The panel path's sizes. Its work units are (group, panel) pairs, and when those are fewer than
  // the threads of a run, each is split further into chunks of W's row blocks (every chunk builds
  // the panel for itself, so no more chunks than keep the threads busy: a 2 x 2 layer of 128
  // channels gathers as long as it multiplies).
  void plan_panels(bool one_by_one) {
    path_ = ConvPath::panels;
    nr_ = micro_nr(false);
    mr_ = packed_tile().mr;
    pointwise_ = one_by_one;
    const int64_t capacity = ThreadPool::global().capacity();
    panels_ = ceil_div(n_ * g_.oh * g_.ow, nr_);
    // Offsets from a panel's first image reach into ceil(nr / P) + 1 images at most.
    const int64_t images_spanned = ceil_div(nr_, std::max<int64_t>(1, g_.oh * g_.ow)) + 1;
    wide_ = static_cast<double>(images_spanned) * static_cast<double>(c_ * g_.h * g_.w) >= 2147483647.0;
    const int64_t blocks = ceil_div(m_ / groups_, mr_), pairs = groups_ * panels_;
    if (pairs == 0 || blocks == 0) {  // an empty batch or no output channels: nothing to compute
      units_ = 0;
      return;
    }
    units_ = pairs * blocks;  // the most there can be (one row block per chunk)
    workers_ = std::clamp<int64_t>(units_, 1, capacity);
  }

  void run_panels(const float* x, const float* w, const float* bias, const float* res, float* y, float* ws,
                int threads) const {
    const int64_t p = g_.oh * g_.ow, total = n_ * p;
    const int64_t cg = c_ / groups_, mg = m_ / groups_;
    const int nr = static_cast<int>(nr_), mr = static_cast<int>(mr_);
    if (units_ == 0) return;
    const int64_t blocks = ceil_div(mg, mr_), pairs = groups_ * panels_;
    int64_t chunks = std::clamp<int64_t>(ceil_div(threads, pairs), 1, blocks);
    const int64_t chunk_blocks = ceil_div(blocks, chunks);
    chunks = ceil_div(blocks, chunk_blocks);
    const int64_t units = pairs * chunks;
    auto unit = [&](int64_t u, float* buffers) {
      const int64_t chunk = u % chunks, pn = (u / chunks) % panels_, g = u / chunks / panels_;
      const int64_t q0 = pn * nr, cols = std::min<int64_t>(nr, total - q0);
      const int64_t r0 = chunk * chunk_blocks * mr, r1 = std::min(mg, r0 + chunk_blocks * mr);
      Segment segs[kMaxPanel];
      const int nseg = panel_segments(g_, q0, cols, segs);
      const float* xg = x + g * cg * g_.h * g_.w;
      float* panel = buffers;
      float* tile = buffers + k_ * nr;
      const float* b = panel;
      int64_t bs = nr;
      if (pointwise_ && segs[0].img == segs[nseg - 1].img && cols == nr) {  // nr pixels of one image: in place
        b = xg + segs[0].img * c_ * p + segs[0].oh * g_.ow + segs[0].x0;
        bs = p;
      } else {
        im2col_panel(xg + segs[0].img * c_ * g_.h * g_.w, c_ * g_.h * g_.w, cg, g_, spans_.data(), segs, nseg, cols,
                     nr, wide_, panel);
      }
      const float* wg = w + g * mg * k_;
      for (int64_t r = r0; r < r1; r += mr)
        micro_tile(static_cast<int>(std::min<int64_t>(mr, r1 - r)), k_, wg + r * k_, k_, b, bs, tile + r * nr, nr, nr,
                   1.0f, false);
      // The tile's columns go to each image they belong to, a run of consecutive segments each.
      Epilogue ep = ep_;
      ep.bias = bias ? bias + g * mg : nullptr;
      ep.ldr = p;
      for (int s = 0; s < nseg;) {
        int e = s + 1;
        while (e < nseg && segs[e].img == segs[s].img) ++e;
        const int64_t img = segs[s].img, t0 = segs[s].t, len = (e < nseg ? segs[e].t : cols) - t0;
        const int64_t pos0 = segs[s].oh * g_.ow + segs[s].x0;
        float* dst = y + (img * m_ + g * mg) * p + pos0;
        ep.residual = res ? res + (img * m_ + g * mg) * p : nullptr;
        apply_epilogue(tile + r0 * nr + t0, r1 - r0, len, nr, ep, r0, pos0);
        for (int64_t r = r0; r < r1; ++r) std::memcpy(dst + r * p, tile + r * nr + t0, sizeof(float) * len);
        s = e;
      }
    };
    const int64_t stride = panel_worker_floats();
    const int workers = static_cast<int>(std::min<int64_t>({threads, workers_, units}));
    if (workers <= 1) {
      for (int64_t u = 0; u < units; ++u) unit(u, ws);
      return;
    }
    std::atomic<int64_t> next{0};
    ThreadPool::global().parallel_for(workers, workers, [&](int64_t worker) {
      float* buffers = ws + worker * stride;
      for (int64_t u = next.fetch_add(1); u < units; u = next.fetch_add(1)) unit(u, buffers);
    });
  }

  void run_gemm(const float* x, const float* w, const float* bias, const float* res, float* y, float* ws,
                int threads) const {
    const int64_t blocks = ceil_div(g_.oh, rows_), p = g_.oh * g_.ow;
    const int64_t cg = c_ / groups_, mg = m_ / groups_;
    auto unit = [&](int64_t u, float* buffers, int gemm_threads) {
      float* col = buffers;
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
        im2col_block(xg, cg, g_, spans_.data(), oh0, oh1, col, split_floats() ? col + col_floats() : nullptr);
        a.b = col;
        a.ldb = a.n;
      }
      a.c = y + (img * m_ + g * mg) * p + p0;
      a.ldc = p;
      a.epilogue = ep_;
      a.epilogue.bias = bias ? bias + g * mg : nullptr;
      a.epilogue.residual = res ? res + (img * m_ + g * mg) * p + p0 : nullptr;
      a.epilogue.ldr = p;
      if (!micro_ || gemm_threads > 1) return gemm_f32(a, gemm_threads);
      // Panels of nr columns read in place (row stride ldb), a full-width copy for the last
      // partial one, W's row blocks through the micro-kernel, the epilogue on the L1-hot result.
      float* last = buffers + col_floats() + split_floats();
      const int nr = static_cast<int>(nr_);
      for (int64_t j0 = 0; j0 < a.n; j0 += nr) {
        const int cols = static_cast<int>(std::min<int64_t>(nr, a.n - j0));
        const float* b = a.b + j0;
        int64_t bs = a.ldb;
        if (cols < nr) {
          pack_b_panel(a.b, a.ldb, false, 0, k_, j0, cols, nr, last);
          b = last;
          bs = nr;
        }
        for (int64_t r = 0; r < mg; r += mr_)
          micro_tile(static_cast<int>(std::min(mr_, mg - r)), k_, a.a + r * k_, k_, b, bs, a.c + r * a.ldc + j0, a.ldc,
                     cols, 1.0f, false);
        apply_epilogue(a.c + j0, mg, cols, a.ldc, a.epilogue, 0, j0);
      }
    };
    if (units_ < threads || threads == 1) {
      for (int64_t u = 0; u < units_; ++u) unit(u, ws, threads);
      return;
    }
    int workers = static_cast<int>(std::min<int64_t>(threads, workers_));
    const int64_t stride = block_worker_floats();
    std::atomic<int64_t> next{0};
    ThreadPool::global().parallel_for(workers, workers, [&](int64_t worker) {
      float* buffers = ws ? ws + worker * stride : nullptr;
      for (int64_t u = next.fetch_add(1); u < units_; u = next.fetch_add(1)) unit(u, buffers, 1);
    });
  }

  void run_direct(const float* x, const float* w, const float* bias, const float* res, float* y, float* ws,
                  int threads) const {
#if defined(PHI_CONV_X86)
    // W k-major per block of 16 output channels, zero past m_: one row of 16 per tap. Packed per
    // run (m x K floats, microseconds): broadcasting from W as given, 16 rows K floats apart, made
    // the stem 1.58 -> 2.06 ms and the 16-channel layers 0.41 -> 0.53 ms at batch 32.
    float* wp = ws;
    const int64_t blocks = ceil_div(m_, kDirectChannels), p = g_.oh * g_.ow;
    for (int64_t b = 0; b < blocks; ++b)
      for (int64_t t = 0; t < k_; ++t)
        for (int64_t j = 0; j < kDirectChannels; ++j) {
          const int64_t co = b * kDirectChannels + j;
          wp[(b * k_ + t) * kDirectChannels + j] = co < m_ ? w[co * k_ + t] : 0.0f;
        }
    const bool inline_act = ep_.act == math::Act::none || ep_.act == math::Act::relu;
    const int64_t row_blocks = ceil_div(g_.oh, rows_);
    auto unit = [&](int64_t u, float* phases, int64_t& built) {
      const int64_t img = u / row_blocks, oh0 = (u % row_blocks) * rows_, oh1 = std::min(g_.oh, oh0 + rows_);
      if (built != img) {
        direct_phases(x + img * c_ * g_.h * g_.w, c_, g_, direct_, phases);
        built = img;
      }
      for (int64_t b = 0; b < blocks; ++b) {
        const int64_t c0 = b * kDirectChannels, rows = std::min(kDirectChannels, m_ - c0);
        float* yb = y + (img * m_ + c0) * p;
        kDirectBlock[direct_q_ - 1][rows - 1](phases, direct_, offsets_.data(), k_, wp + b * k_ * kDirectChannels,
                               bias ? bias + c0 : nullptr, res ? res + (img * m_ + c0) * p : nullptr, yb, g_, oh0,
                               oh1, ep_, inline_act);
        if (!inline_act)
          for (int64_t r = 0; r < rows; ++r)
            apply_activation(yb + r * p + oh0 * g_.ow, (oh1 - oh0) * g_.ow, ep_.act, ep_.clip_min, ep_.clip_max);
      }
    };
    float* buffers = ws + direct_weight_floats();
    const int64_t stride = direct_.floats(c_);
    const int workers = static_cast<int>(std::min<int64_t>({threads, workers_, units_}));
    if (workers <= 1) {
      int64_t built = -1;
      for (int64_t u = 0; u < units_; ++u) unit(u, buffers, built);
      return;
    }
    std::atomic<int64_t> next{0};
    ThreadPool::global().parallel_for(workers, workers, [&](int64_t worker) {
      int64_t built = -1;
      for (int64_t u = next.fetch_add(1); u < units_; u = next.fetch_add(1)) unit(u, buffers + worker * stride, built);
    });
#else
    (void)x, (void)w, (void)bias, (void)res, (void)y, (void)ws, (void)threads;
#endif
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
  int64_t rows_ = 1;     // output rows per work unit (im2col, pointwise)
  int64_t units_ = 0;    // (image, group, block) units; panels: the most (group, panel, chunk) units
  int64_t workers_ = 1;  // buffers in the workspace
  bool micro_ = false;  // im2col / pointwise: the micro-kernel instead of BLAS (few output channels)
  // The panel path:
  bool pointwise_ = false;    // 1 x 1, stride 1, no padding: a panel within one image is read in place
  bool wide_ = false;         // im2col offsets need 64 bits
  int64_t nr_ = 1, mr_ = 1;   // the micro-kernel's panel width and row block (micro_, panels)
  int64_t panels_ = 0;        // panels of nr pixels over all images
  // The direct path:
  DirectLayout direct_;
  int64_t direct_q_ = 1;          // output rows per vector
  std::vector<int64_t> offsets_;  // per tap (input channel, ky, kx): its offset in the phases
};

std::unique_ptr<Kernel> make_conv2d(const std::vector<TensorDesc>& in, const Attrs& attrs) {
  return std::make_unique<Conv2dKernel>(in, attrs);
}

}  // namespace

// d[t] = src[2 t] for t < n. Compilers leave this scalar (a column a cycle, half of a 7x7
// stride-2 stem's time); AVX-512 takes 16 at a time from two loads and a permute. Loads are masked
// to the floats the copy reads (src[0], src[2], ..., src[2 n - 2]), so none passes the last.
#if defined(PHI_CONV_X86)
namespace {
__attribute__((target("avx512f"))) void copy_stride2_avx512(float* d, const float* src, int64_t n) {
  const __m512i evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  auto lanes = [](int64_t count) -> __mmask16 {  // the first count lanes (0 to 16)
    return count >= 16 ? __mmask16(0xFFFF) : count <= 0 ? __mmask16(0) : __mmask16((1u << count) - 1);
  };
  for (int64_t t = 0; t < n; t += 16) {
    const int64_t left = 2 * (n - t) - 1;  // floats from src + 2 t up to the last one read
    const __m512 lo = _mm512_maskz_loadu_ps(lanes(left), src + 2 * t);
    const __m512 hi = _mm512_maskz_loadu_ps(lanes(left - 16), src + 2 * t + 16);
    _mm512_mask_storeu_ps(d + t, lanes(n - t), _mm512_permutex2var_ps(lo, evens, hi));
  }
}
}  // namespace
#endif

void strided_copy(float* PHI_RESTRICT d, const float* PHI_RESTRICT src, int64_t n, int64_t s) {
  if (s == 1) return static_cast<void>(std::memcpy(d, src, sizeof(float) * n));
#if defined(PHI_CONV_X86)
  static const bool avx512 = cpu_features().avx512f;
  if (s == 2 && avx512) return copy_stride2_avx512(d, src, n);
#endif
#pragma omp simd
  for (int64_t t = 0; t < n; ++t) d[t] = src[t * s];
}

PHI_REGISTER_OP("conv2d", 2, 4, make_conv2d);

}  // namespace phi
