// Reductions (sum, mean, max, min, prod over a set of axes, ONNX semantics) and argmax/argmin.
//
// The reduced and kept dimensions are collapsed into alternating groups, and the innermost
// reduced group is reduced first, one [outer, r, inner] problem at a time: inner == 1 is a
// contiguous row reduced with multi-lane vector accumulators (lane_reduce), inner > 1 accumulates
// whole rows into a block of inner accumulators (vectorised across the kept dimension, no
// transpose). Work is
// split over the outer dimension, and over r too when there is little else to split; the split
// depends on the shape only, never on the thread count, so results are identical for any threads.
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#include "core/elementwise.h"
#include "core/op_registry.h"

namespace phi {

namespace {

constexpr int64_t kGrain = 1 << 16;    // elements of work below which one thread does it all
constexpr int64_t kColBlock = 1024;    // accumulators per block: 4 KiB, kept in L1
constexpr int64_t kSumChunk = 128;     // rows summed into a fresh block before joining the total
constexpr int64_t kMaxRSplit = 64;     // most partial results one output gets
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

enum class RedOp : uint8_t { sum, mean, max, min, prod };

// ONNX: an empty reduction yields 0 (sum), 1 (prod), -inf (max), +inf (min); mean is NaN (0/0).
float identity(RedOp op) {
  switch (op) {
    case RedOp::sum: return 0.0f;
    case RedOp::mean: return kNaN;
    case RedOp::prod: return 1.0f;
    case RedOp::max: return -kInf;
    case RedOp::min: return kInf;
  }
  return 0.0f;
}

// Reduction of a contiguous row with multi-lane accumulators; sums go in blocks joined in
// double, so their error grows far slower than with one long running float sum.
PHI_HOT float reduce_row(RedOp op, const float* PHI_RESTRICT x, int64_t n) {
  auto at = [=](int64_t j) { return x[j]; };
  switch (op) {
    case RedOp::sum:
    case RedOp::mean: {
      double total = 0.0;
      for (int64_t b = 0; b < n; b += 4096) total += lane_reduce<LaneOp::sum>(b, std::min(n, b + 4096), 0.0f, at);
      return static_cast<float>(total);
    }
    case RedOp::prod: return lane_reduce<LaneOp::prod>(0, n, 1.0f, at);
    case RedOp::max: return lane_reduce<LaneOp::max>(0, n, -kInf, at);
    case RedOp::min: return lane_reduce<LaneOp::min>(0, n, kInf, at);
  }
  return 0.0f;
}

// acc[i] = reduction over rows 0..r of x[row * inner + i], i < w.
PHI_HOT void reduce_cols(RedOp op, const float* PHI_RESTRICT x, int64_t r, int64_t inner, int64_t w,
                         float* PHI_RESTRICT acc) {
  std::memcpy(acc, x, sizeof(float) * w);
  switch (op) {
    case RedOp::sum:
    case RedOp::mean: {
      float part[kColBlock];
      for (int64_t r0 = 1; r0 < r; r0 += kSumChunk) {
        const int64_t r1 = std::min(r, r0 + kSumChunk);
        std::memcpy(part, x + r0 * inner, sizeof(float) * w);
        for (int64_t rr = r0 + 1; rr < r1; ++rr) {
          const float* row = x + rr * inner;
#pragma omp simd
          for (int64_t i = 0; i < w; ++i) part[i] += row[i];
        }
#pragma omp simd
        for (int64_t i = 0; i < w; ++i) acc[i] += part[i];
      }
      return;
    }
    case RedOp::prod:
      for (int64_t rr = 1; rr < r; ++rr) {
        const float* row = x + rr * inner;
#pragma omp simd
        for (int64_t i = 0; i < w; ++i) acc[i] *= row[i];
      }
      return;
    case RedOp::max:
      for (int64_t rr = 1; rr < r; ++rr) {
        const float* row = x + rr * inner;
#pragma omp simd
        for (int64_t i = 0; i < w; ++i) acc[i] = row[i] > acc[i] || row[i] != row[i] ? row[i] : acc[i];
      }
      return;
    case RedOp::min:
      for (int64_t rr = 1; rr < r; ++rr) {
        const float* row = x + rr * inner;
#pragma omp simd
        for (int64_t i = 0; i < w; ++i) acc[i] = row[i] < acc[i] || row[i] != row[i] ? row[i] : acc[i];
      }
      return;
  }
}

// One [outer, r, inner] -> [outer, inner] reduction, with its split over r decided by shape.
struct Step {
  int64_t outer = 1, r = 1, inner = 1;
  int64_t rsplit = 1, rows_per_split = 1;  // r cut into rsplit blocks of rows_per_split rows

  int64_t out_size() const { return outer * inner; }
  int64_t partial_size() const { return rsplit > 1 ? outer * rsplit * inner : 0; }
};

Step make_step(int64_t outer, int64_t r, int64_t inner) {
  Step s{outer, r, inner};
  if (outer * inner < 16384 && r * inner >= 2 * kGrain) {
    s.rsplit = std::min<int64_t>(kMaxRSplit, (r * inner + kGrain - 1) / kGrain);
    s.rows_per_split = (r + s.rsplit - 1) / s.rsplit;
    s.rsplit = (r + s.rows_per_split - 1) / s.rows_per_split;
  }
  return s;
}

void run_step(RedOp op, const Step& s, const float* x, float* out, float* partial, int threads) {
  const int64_t cblocks = s.inner == 1 ? 1 : (s.inner + kColBlock - 1) / kColBlock;
  auto block = [&](const float* src, int64_t rows, float* dst, int64_t cb) {
    const int64_t i0 = cb * kColBlock;
    if (s.inner == 1) *dst = reduce_row(op, src, rows);
    else reduce_cols(op, src + i0, rows, s.inner, std::min(kColBlock, s.inner - i0), dst + i0);
  };
  if (s.rsplit == 1) {
    const int64_t work = s.r * std::min(kColBlock, s.inner);
    parallel_range(s.outer * cblocks, threads, std::max<int64_t>(1, kGrain / work), [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) {
        const int64_t o = t / cblocks, cb = t % cblocks;
        block(x + o * s.r * s.inner, s.r, out + o * s.inner, cb);
      }
    });
    return;
  }
  // Partials [outer, rsplit, inner], then the same reduction across the rsplit partials.
  const int64_t tasks = s.outer * s.rsplit * cblocks;
  ThreadPool::global().parallel_for(tasks, threads, [&](int64_t t) {
    const int64_t cb = t % cblocks, ob = t / cblocks, o = ob / s.rsplit, b = ob % s.rsplit;
    const int64_t r0 = b * s.rows_per_split, rows = std::min(s.r, r0 + s.rows_per_split) - r0;
    block(x + (o * s.r + r0) * s.inner, rows, partial + ob * s.inner, cb);
  });
  for (int64_t o = 0; o < s.outer; ++o)
    for (int64_t cb = 0; cb < cblocks; ++cb) block(partial + o * s.rsplit * s.inner, s.rsplit, out + o * s.inner, cb);
}

class ReduceKernel final : public Kernel {
 public:
  ReduceKernel(const std::string& op, RedOp kind, const std::vector<TensorDesc>& in, const Attrs& attrs) : op_(kind) {
    const TensorDesc& x = in[0];
    expect_float(op, x, "input");
    const int64_t rank = x.ndim();
    std::vector<int64_t> axes = attrs.get_ints(op, "axes", {});
    const bool keepdims = attrs.get_int(op, "keepdims", 1) != 0;
    const bool noop = attrs.get_int(op, "noop_with_empty_axes", 0) != 0;
    std::vector<bool> reduced(static_cast<size_t>(rank), axes.empty() && !noop);
    for (int64_t a : axes) {
      int64_t ax = normalize_axis(op, a, rank);
      PHI_CHECK(!reduced[ax], op, "axis " + std::to_string(a) + " is listed twice");
      reduced[ax] = true;
    }
    Shape out_shape;
    count_ = 1;
    for (int64_t d = 0; d < rank; ++d) {
      if (reduced[d]) count_ *= x.shape[d];
      if (!reduced[d]) out_shape.push_back(x.shape[d]);
      else if (keepdims) out_shape.push_back(1);
    }
    outputs_ = {TensorDesc{DType::f32, out_shape}};
    empty_ = x.numel() == 0;
    // Alternating groups of kept / reduced dimensions (size-1 dimensions play no part).
    std::vector<std::pair<int64_t, bool>> groups;
    for (int64_t d = 0; d < rank; ++d) {
      if (x.shape[d] == 1) continue;
      if (!groups.empty() && groups.back().second == reduced[d]) groups.back().first *= x.shape[d];
      else groups.emplace_back(x.shape[d], reduced[d]);
    }
    // Innermost reduced group first; the kept groups on either side of it then merge.
    for (;;) {
      int64_t g = static_cast<int64_t>(groups.size()) - 1;
      while (g >= 0 && !groups[g].second) --g;
      if (g < 0) break;
      int64_t outer = 1, inner = 1;
      for (int64_t i = 0; i < g; ++i) outer *= groups[i].first;
      for (size_t i = g + 1; i < groups.size(); ++i) inner *= groups[i].first;
      steps_.push_back(make_step(outer, groups[g].first, inner));
      groups.erase(groups.begin() + g);
      if (g > 0 && g < static_cast<int64_t>(groups.size()) && !groups[g - 1].second) {
        groups[g - 1].first *= groups[g].first;
        groups.erase(groups.begin() + g);
      }
    }
    for (size_t i = 0; i + 1 < steps_.size(); ++i) buffer_ = std::max(buffer_, steps_[i].out_size());
    for (const Step& s : steps_) partial_ = std::max(partial_, s.partial_size());
  }

  size_t workspace_bytes() const override { return sizeof(float) * static_cast<size_t>(2 * buffer_ + partial_); }

  void run(const TensorView* in, TensorView* out, void* workspace, const ExecContext& ctx) const override {
    float* y = out[0].ptr<float>();
    const int64_t n_out = out[0].numel();
    if (n_out == 0) return;
    if (empty_) return std::fill(y, y + n_out, identity(op_));
    const float* x = in[0].ptr<const float>();
    if (steps_.empty()) return (void)std::memcpy(y, x, sizeof(float) * n_out);  // only size-1 axes reduced
    float* ws = static_cast<float*>(workspace);
    float* buffers[2] = {ws, ws + buffer_};
    float* partial = ws + 2 * buffer_;
    const float* src = x;
    for (size_t i = 0; i < steps_.size(); ++i) {
      float* dst = i + 1 == steps_.size() ? y : buffers[i % 2];
      run_step(op_, steps_[i], src, dst, partial, ctx.resolved_threads());
      src = dst;
    }
    if (op_ == RedOp::mean) {
      const float count = static_cast<float>(count_);
#pragma omp simd
      for (int64_t i = 0; i < n_out; ++i) y[i] /= count;
    }
  }

 private:
  RedOp op_;
  int64_t count_ = 1;
  bool empty_ = false;
  std::vector<Step> steps_;
  int64_t buffer_ = 0, partial_ = 0;
};

// ---- argmax / argmin ---------------------------------------------------------------------------

// Whether candidate v replaces the current best b: NaN beats everything (numpy returns the first
// NaN), then the larger (argmax) or smaller (argmin); `last` lets a tie replace (select_last_index).
template <bool Max, bool Last>
PHI_ALWAYS_INLINE bool replaces(float v, float b) {
  bool better = (Max ? v > b : v < b) || (v != v && b == b);
  if constexpr (Last) better = better || v == b || (v != v && b != b);
  return better;
}

// First (or last) j in [0, n) with match(x[j]), 32 elements at a time: a vectorised compare
// builds a 32-bit match mask (32-bit lanes, like the floats) and a bit scan reads the position
// off it, with no data-dependent branch per element.
template <class Match>
PHI_ALWAYS_INLINE int64_t find_match(const float* PHI_RESTRICT x, int64_t n, bool last, Match match) {
  constexpr int64_t kChunk = 32;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t j0 = (last ? chunks - 1 - c : c) * kChunk, len = std::min(kChunk, n - j0);
    const float* xc = x + j0;
    uint32_t bits = 0;
#pragma omp simd reduction(| : bits)
    for (int32_t j = 0; j < static_cast<int32_t>(len); ++j) bits |= static_cast<uint32_t>(match(xc[j])) << j;
    if (bits) return j0 + (last ? 31 - std::countl_zero(bits) : std::countr_zero(bits));
  }
  return 0;
}

// Index of the extreme of a contiguous row: the extreme from a multi-lane reduction (NaN if any
// element is NaN, as numpy's argmax picks the first NaN), then its first (or last) position.
PHI_HOT int64_t arg_row(const float* PHI_RESTRICT x, int64_t n, bool is_max, bool last, float* value) {
  const float m = reduce_row(is_max ? RedOp::max : RedOp::min, x, n);
  *value = m;
  if (m != m) return find_match(x, n, last, [](float v) { return v != v; });
  return find_match(x, n, last, [m](float v) { return v == m; });
}

template <bool Max, bool Last>
PHI_ALWAYS_INLINE void arg_cols_impl(const float* PHI_RESTRICT x, int64_t r, int64_t inner, int64_t w,
                                     int64_t* PHI_RESTRICT idx) {
  float best[kColBlock];
  std::memcpy(best, x, sizeof(float) * w);
  std::fill(idx, idx + w, 0);
  for (int64_t rr = 1; rr < r; ++rr) {
    const float* row = x + rr * inner;
#pragma omp simd
    for (int64_t i = 0; i < w; ++i) {
      bool take = replaces<Max, Last>(row[i], best[i]);
      best[i] = take ? row[i] : best[i];
      idx[i] = take ? rr : idx[i];
    }
  }
}

PHI_HOT void arg_cols(const float* x, int64_t r, int64_t inner, int64_t w, bool is_max, bool last, int64_t* idx) {
  if (is_max) {
    if (last) arg_cols_impl<true, true>(x, r, inner, w, idx);
    else arg_cols_impl<true, false>(x, r, inner, w, idx);
  } else {
    if (last) arg_cols_impl<false, true>(x, r, inner, w, idx);
    else arg_cols_impl<false, false>(x, r, inner, w, idx);
  }
}

// ONNX ArgMax / ArgMin: int64 indices along one axis (keepdims, select_last_index).
class ArgKernel final : public Kernel {
 public:
  ArgKernel(const std::string& op, bool is_max, const std::vector<TensorDesc>& in, const Attrs& attrs)
      : max_(is_max) {
    const TensorDesc& x = in[0];
    expect_float(op, x, "input");
    check(x.ndim() >= 1, op, "input must have rank >= 1");
    const int64_t axis = normalize_axis(op, attrs.get_int(op, "axis", 0), x.ndim());
    const bool keepdims = attrs.get_int(op, "keepdims", 1) != 0;
    last_ = attrs.get_int(op, "select_last_index", 0) != 0;
    r_ = x.shape[axis];
    check(r_ > 0, op, "cannot take the index of an extreme over an empty axis");
    outer_ = numel(Shape(x.shape.begin(), x.shape.begin() + axis));
    inner_ = numel(Shape(x.shape.begin() + axis + 1, x.shape.end()));
    Shape out = x.shape;
    if (keepdims) out[axis] = 1;
    else out.erase(out.begin() + axis);
    outputs_ = {TensorDesc{DType::i64, out}};
  }

  void run(const TensorView* in, TensorView* out, void*, const ExecContext& ctx) const override {
    const float* x = in[0].ptr<const float>();
    int64_t* y = out[0].ptr<int64_t>();
    const int threads = ctx.resolved_threads();
    if (outer_ * inner_ == 0) return;
    if (inner_ == 1 && outer_ < 16 && r_ >= 2 * kGrain) return split_rows(x, y, threads);
    if (inner_ == 1) {
      return parallel_range(outer_, threads, std::max<int64_t>(1, kGrain / r_), [&](int64_t b, int64_t e) {
        float v;
        for (int64_t o = b; o < e; ++o) y[o] = arg_row(x + o * r_, r_, max_, last_, &v);
      });
    }
    const int64_t cblocks = (inner_ + kColBlock - 1) / kColBlock;
    const int64_t work = r_ * std::min(kColBlock, inner_);
    parallel_range(outer_ * cblocks, threads, std::max<int64_t>(1, kGrain / work), [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) {
        const int64_t o = t / cblocks, i0 = (t % cblocks) * kColBlock;
        arg_cols(x + o * r_ * inner_ + i0, r_, inner_, std::min(kColBlock, inner_ - i0), max_, last_,
                 y + o * inner_ + i0);
      }
    });
  }

 private:
  // Few long rows: each row is cut into blocks searched in parallel, then the blocks' winners
  // are compared in order, which keeps first-occurrence (or last) semantics exact.
  void split_rows(const float* x, int64_t* y, int threads) const {
    const int64_t blocks = std::min<int64_t>(kMaxRSplit, (r_ + kGrain - 1) / kGrain);
    const int64_t per = (r_ + blocks - 1) / blocks;
    std::vector<float> vals(static_cast<size_t>(outer_ * blocks));
    std::vector<int64_t> idx(vals.size());
    ThreadPool::global().parallel_for(outer_ * blocks, threads, [&](int64_t t) {
      const int64_t o = t / blocks, j0 = (t % blocks) * per;
      const int64_t n = std::max<int64_t>(0, std::min(r_, j0 + per) - j0);
      idx[t] = n ? j0 + arg_row(x + o * r_ + j0, n, max_, last_, &vals[t]) : -1;
    });
    for (int64_t o = 0; o < outer_; ++o) {
      int64_t bi = o * blocks;
      for (int64_t t = o * blocks + 1; t < (o + 1) * blocks; ++t) {
        if (idx[t] < 0) continue;
        const float v = vals[t], b = vals[bi];
        const bool take = max_ ? (last_ ? replaces<true, true>(v, b) : replaces<true, false>(v, b))
                               : (last_ ? replaces<false, true>(v, b) : replaces<false, false>(v, b));
        if (take) bi = t;
      }
      y[o] = idx[bi];
    }
  }

  bool max_, last_ = false;
  int64_t outer_ = 0, r_ = 0, inner_ = 0;
};

template <RedOp R>
std::unique_ptr<Kernel> make_reduce(const std::vector<TensorDesc>& in, const Attrs& attrs) {
  constexpr const char* names[] = {"reduce_sum", "reduce_mean", "reduce_max", "reduce_min", "reduce_prod"};
  return std::make_unique<ReduceKernel>(names[static_cast<int>(R)], R, in, attrs);
}

std::unique_ptr<Kernel> make_argmax(const std::vector<TensorDesc>& in, const Attrs& attrs) {
  return std::make_unique<ArgKernel>("argmax", true, in, attrs);
}
std::unique_ptr<Kernel> make_argmin(const std::vector<TensorDesc>& in, const Attrs& attrs) {
  return std::make_unique<ArgKernel>("argmin", false, in, attrs);
}

}  // namespace

PHI_REGISTER_OP("reduce_sum", 1, 1, make_reduce<RedOp::sum>);
PHI_REGISTER_OP("reduce_mean", 1, 1, make_reduce<RedOp::mean>);
PHI_REGISTER_OP("reduce_max", 1, 1, make_reduce<RedOp::max>);
PHI_REGISTER_OP("reduce_min", 1, 1, make_reduce<RedOp::min>);
PHI_REGISTER_OP("reduce_prod", 1, 1, make_reduce<RedOp::prod>);
PHI_REGISTER_OP("argmax", 1, 1, make_argmax);
PHI_REGISTER_OP("argmin", 1, 1, make_argmin);

}  // namespace phi
