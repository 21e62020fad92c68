// Elementwise ops: unary math, binary arithmetic and comparisons with numpy broadcasting, where.
// All are bandwidth-bound, so each is one pass over memory: the op (and, for add and mul, an
// optional activation) is chosen by a switch outside the loop and every inner loop is a straight
// `#pragma omp simd` loop inside a PHI_HOT function (AVX2+FMA clone where the CPU has it).
#include "core/elementwise.h"

#include <array>
#include <bit>
#include <cmath>
#include <memory>
#include <limits>
#include <type_traits>

#include "core/epilogue.h"
#include "core/math.h"
#include "core/op_registry.h"

namespace phi {

BroadcastPlan plan_broadcast(const std::string& op, const std::vector<Shape>& shapes) {
  BroadcastPlan p;
  p.nops = static_cast<int>(shapes.size());
  size_t rank = 0;
  for (const Shape& s : shapes) rank = std::max(rank, s.size());
  std::vector<Shape> padded;
  Shape out(rank, 1);
  for (const Shape& s : shapes) {
    Shape ps(rank - s.size(), 1);
    ps.insert(ps.end(), s.begin(), s.end());
    for (size_t i = 0; i < rank; ++i) {
      if (ps[i] == 1) continue;
      if (out[i] != 1 && out[i] != ps[i]) {
        std::string all;
        for (const Shape& t : shapes) all += (all.empty() ? "" : " and ") + shape_str(t);
        fail(op, "shapes " + all + " do not broadcast");
      }
      out[i] = ps[i];
    }
    padded.push_back(std::move(ps));
  }
  p.out_shape = out;
  // Each operand is within bounds, but (N, 1) against (1, N) squares the size: check the product.
  p.total = checked_numel(op, out, 1, "the broadcast result");
  for (size_t i = 0; i < rank; ++i) {
    if (out[i] == 1) continue;
    std::array<int64_t, kMaxBroadcastOperands> stride{};
    for (int k = 0; k < p.nops; ++k) {
      if (padded[k][i] == 1) continue;  // broadcast: stride 0
      stride[k] = 1;
      for (size_t j = i + 1; j < rank; ++j) stride[k] *= padded[k][j];
    }
    // Merge with the previous dimension when every operand walks both as one (contiguous, or
    // broadcast along both), so the inner loop gets as long as possible.
    bool merge = !p.dims.empty();
    for (int k = 0; k < p.nops && merge; ++k) merge = p.strides[k].back() == stride[k] * out[i];
    if (merge) {
      p.dims.back() *= out[i];
      for (int k = 0; k < p.nops; ++k) p.strides[k].back() = stride[k];
    } else {
      p.dims.push_back(out[i]);
      for (int k = 0; k < p.nops; ++k) p.strides[k].push_back(stride[k]);
    }
  }
  if (p.dims.empty()) {
    p.dims = {1};
    for (int k = 0; k < p.nops; ++k) p.strides[k] = {0};
  }
  return p;
}

namespace {

// Below this many elements one thread does the whole op: waking a helper costs more than the
// helper saves on a tensor that fits in L2.
constexpr int64_t kGrain = 1 << 16;

// ---- scalar functions the loops inline ---------------------------------------------------------

inline float keep_nan(float x, float y) { return x != x ? x : y; }

// e^x over the whole float range as e^(x/2) squared: math::exp saturates outside [-86, 88], and
// x/2 stays inside it wherever float32 e^x is finite and not zero, so the square overflows to inf
// and underflows through the subnormals exactly where float32 does. Halving is exact; squaring
// doubles math::exp's 2e-7 relative error. One extra multiply and no range tests in the loop.
inline float exp_full(float x) {
  float h = math::exp(0.5f * x);
  return keep_nan(x, h * h);
}

// Natural log, relative error < 2e-7 (Cephes logf: mantissa in [sqrt(1/2), sqrt(2)) and a degree-9
// polynomial), with numpy's results for 0, negatives, inf, NaN and subnormals.
inline float log_full(float x) {
  bool sub = x < std::numeric_limits<float>::min();
  float xs = sub ? x * 8388608.0f : x;  // 2^23 lifts subnormals into the normal range
  int32_t bits = std::bit_cast<int32_t>(xs);
  int32_t e = ((bits >> 23) & 0xff) - 126;
  float m = std::bit_cast<float>((bits & 0x007fffff) | 0x3f000000);  // in [0.5, 1)
  e = sub ? e - 23 : e;
  bool low = m < 0.707106781186547524f;
  e = low ? e - 1 : e;
  m = low ? m + m - 1.0f : m - 1.0f;
  float z = m * m;
  float y = 7.0376836292E-2f;
  y = y * m - 1.1514610310E-1f;
  y = y * m + 1.1676998740E-1f;
  y = y * m - 1.2420140846E-1f;
  y = y * m + 1.4249322787E-1f;
  y = y * m - 1.6668057665E-1f;
  y = y * m + 2.0000714765E-1f;
  y = y * m - 2.4999993993E-1f;
  y = y * m + 3.3333331174E-1f;
  y = y * m * z;
  float fe = static_cast<float>(e);
  y += -2.12194440e-4f * fe;
  y += -0.5f * z;
  float r = m + y + 0.693359375f * fe;
  constexpr float inf = std::numeric_limits<float>::infinity();
  r = x == inf ? inf : r;
  r = x == 0.0f ? -inf : r;
  r = x < 0.0f ? std::numeric_limits<float>::quiet_NaN() : r;
  return keep_nan(x, r);
}

template <math::Act A>
PHI_ALWAYS_INLINE float activate(float v, float lo, float hi) {
  if constexpr (A == math::Act::relu) return keep_nan(v, math::relu(v));
  if constexpr (A == math::Act::gelu) return math::gelu(v);
  if constexpr (A == math::Act::gelu_tanh) return math::gelu_tanh(v);
  if constexpr (A == math::Act::tanh) return keep_nan(v, math::tanh(v));
  if constexpr (A == math::Act::sigmoid) return keep_nan(v, math::sigmoid(v));
  if constexpr (A == math::Act::clip) return v < lo ? lo : (v > hi ? hi : v);
  return v;
}

// ---- unary -----------------------------------------------------------------------------------

enum class UnOp : uint8_t {
  neg, abs, exp, log, sqrt, reciprocal, relu, gelu, gelu_tanh, tanh, sigmoid, erf, clip, leaky_relu
};

struct UnaryParams {
  float lo = -std::numeric_limits<float>::infinity();
  float hi = std::numeric_limits<float>::infinity();
  float alpha = 0.01f;
};

template <class F>
PHI_ALWAYS_INLINE void map(const float* PHI_RESTRICT x, float* PHI_RESTRICT y, int64_t n, F f) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = f(x[i]);
}

PHI_HOT void unary_f32(UnOp op, const UnaryParams& prm, const float* x, float* y, int64_t n) {
  const float lo = prm.lo, hi = prm.hi, alpha = prm.alpha;
  switch (op) {
    case UnOp::neg: return map(x, y, n, [](float v) { return -v; });
    case UnOp::abs: return map(x, y, n, [](float v) { return std::fabs(v); });
    case UnOp::exp: return map(x, y, n, [](float v) { return exp_full(v); });
    case UnOp::log: return map(x, y, n, [](float v) { return log_full(v); });
    case UnOp::sqrt: return map(x, y, n, [](float v) { return std::sqrt(v); });
    case UnOp::reciprocal: return map(x, y, n, [](float v) { return 1.0f / v; });
    case UnOp::relu: return map(x, y, n, [](float v) { return activate<math::Act::relu>(v, 0, 0); });
    case UnOp::gelu: return map(x, y, n, [](float v) { return math::gelu(v); });
    case UnOp::gelu_tanh: return map(x, y, n, [](float v) { return math::gelu_tanh(v); });
    case UnOp::tanh: return map(x, y, n, [](float v) { return activate<math::Act::tanh>(v, 0, 0); });
    case UnOp::sigmoid: return map(x, y, n, [](float v) { return activate<math::Act::sigmoid>(v, 0, 0); });
    case UnOp::erf: return map(x, y, n, [](float v) { return keep_nan(v, math::erf(v)); });
    case UnOp::clip: return map(x, y, n, [lo, hi](float v) { return v < lo ? lo : (v > hi ? hi : v); });
    case UnOp::leaky_relu: return map(x, y, n, [alpha](float v) { return v < 0.0f ? alpha * v : v; });
  }
}

class UnaryKernel final : public Kernel {
 public:
  UnaryKernel(const std::string& op, UnOp kind, const std::vector<TensorDesc>& in, const Attrs& attrs) : op_(kind) {
    expect_float(op, in[0], "input");
    if (kind == UnOp::clip) {
      prm_.lo = attrs.get_f32(op, "min", -INFINITY);
      prm_.hi = attrs.get_f32(op, "max", INFINITY);
      check(prm_.lo <= prm_.hi, op, "min must not exceed max");
    }
    if (kind == UnOp::leaky_relu) prm_.alpha = attrs.get_f32(op, "alpha", 0.01f);
    outputs_ = {in[0]};
  }

  void run(const TensorView* in, TensorView* out, void*, const ExecContext& ctx) const override {
    const float* x = in[0].ptr<const float>();
    float* y = out[0].ptr<float>();
    parallel_range(in[0].numel(), ctx.resolved_threads(), kGrain,
                   [&](int64_t b, int64_t e) { unary_f32(op_, prm_, x + b, y + b, e - b); });
  }

 private:
  UnOp op_;
  UnaryParams prm_;
};

// ---- binary ------------------------------------------------------------------------------------

enum class BinOp : uint8_t { add, sub, mul, div, pow, max, min, eq, lt, gt, le, ge };

bool is_comparison(BinOp op) { return op >= BinOp::eq; }

// What one call of a hot loop covers: `rows` runs of n output elements each (output runs are
// contiguous), operand k advancing by row_stride[k] elements from one run to the next and, within
// a run, by 1 when dense[k] or not at all (it broadcasts along the innermost dimension).
struct Runs {
  int64_t n = 0, rows = 1;
  std::array<int64_t, kMaxBroadcastOperands> row_stride{};
  std::array<bool, kMaxBroadcastOperands> dense{};
};

template <bool VA, bool VB, class T, class U, class F>
PHI_ALWAYS_INLINE void seg_loop(const T* PHI_RESTRICT a, const T* PHI_RESTRICT b, U* PHI_RESTRICT y, int64_t n, F f) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) y[j] = f(a[VA ? j : 0], b[VB ? j : 0]);
}

template <bool VA, bool VB, class T, class U, class F>
PHI_ALWAYS_INLINE void seg_rows(const T* a, const T* b, U* y, const Runs& r, F f) {
  for (int64_t i = 0; i < r.rows; ++i)
    seg_loop<VA, VB>(a + i * r.row_stride[0], b + i * r.row_stride[1], y + i * r.n, r.n, f);
}

template <class T, class U, class F>
PHI_ALWAYS_INLINE void seg(const T* a, const T* b, U* y, const Runs& r, F f) {
  if (r.dense[0] && r.dense[1]) return seg_rows<true, true>(a, b, y, r, f);
  if (r.dense[0]) return seg_rows<true, false>(a, b, y, r, f);
  if (r.dense[1]) return seg_rows<false, true>(a, b, y, r, f);
  return seg_rows<false, false>(a, b, y, r, f);
}

// base(u, v) followed by an activation, one straight loop per activation.
template <class Base>
PHI_ALWAYS_INLINE void fused(const Epilogue& ep, const float* a, const float* b, float* y, const Runs& r, Base base) {
  const float lo = ep.clip_min, hi = ep.clip_max;
  auto with = [&](auto act) {
    seg(a, b, y, r, [=](float u, float v) { return activate<decltype(act)::value>(base(u, v), lo, hi); });
  };
  using A = math::Act;
  switch (ep.act) {
    case A::none: return with(std::integral_constant<A, A::none>{});
    case A::relu: return with(std::integral_constant<A, A::relu>{});
    case A::gelu: return with(std::integral_constant<A, A::gelu>{});
    case A::gelu_tanh: return with(std::integral_constant<A, A::gelu_tanh>{});
    case A::tanh: return with(std::integral_constant<A, A::tanh>{});
    case A::sigmoid: return with(std::integral_constant<A, A::sigmoid>{});
    case A::clip: return with(std::integral_constant<A, A::clip>{});
  }
}

PHI_HOT void binary_f32(BinOp op, const Epilogue& ep, const float* a, const float* b, float* y, const Runs& r) {
  switch (op) {
    case BinOp::add: return fused(ep, a, b, y, r, [](float u, float v) { return u + v; });
    case BinOp::mul: return fused(ep, a, b, y, r, [](float u, float v) { return u * v; });
    case BinOp::sub: return seg(a, b, y, r, [](float u, float v) { return u - v; });
    case BinOp::div: return seg(a, b, y, r, [](float u, float v) { return u / v; });
    // numpy's maximum and minimum return NaN when either side is NaN.
    case BinOp::max: return seg(a, b, y, r, [](float u, float v) { return u > v || u != u ? u : v; });
    case BinOp::min: return seg(a, b, y, r, [](float u, float v) { return u < v || u != u ? u : v; });
    case BinOp::pow:
      // libm powf (exact for negative bases with integral exponents); not vectorised: the
      // constant exponents numpy special-cases take pow_scalar_f32 instead.
      for (int64_t i = 0; i < r.rows; ++i) {
        const float* ai = a + i * r.row_stride[0];
        const float* bi = b + i * r.row_stride[1];
        float* yi = y + i * r.n;
        for (int64_t j = 0; j < r.n; ++j) yi[j] = std::pow(ai[r.dense[0] ? j : 0], bi[r.dense[1] ? j : 0]);
      }
      return;
    default: throw Error(ErrorCode::internal, "binary", "not an arithmetic op");
  }
}

// Integer add/sub/mul wrap around like numpy (computed unsigned: signed overflow is undefined).
template <class T>
PHI_ALWAYS_INLINE void binary_int(BinOp op, const T* a, const T* b, T* y, const Runs& r) {
  using W = std::make_unsigned_t<T>;
  switch (op) {
    case BinOp::add: return seg(a, b, y, r, [](T u, T v) { return static_cast<T>(W(u) + W(v)); });
    case BinOp::sub: return seg(a, b, y, r, [](T u, T v) { return static_cast<T>(W(u) - W(v)); });
    case BinOp::mul: return seg(a, b, y, r, [](T u, T v) { return static_cast<T>(W(u) * W(v)); });
    default: throw Error(ErrorCode::internal, "binary", "integer op not supported");
  }
}

PHI_HOT void binary_i64(BinOp op, const int64_t* a, const int64_t* b, int64_t* y, const Runs& r) {
  binary_int(op, a, b, y, r);
}

PHI_HOT void binary_i32(BinOp op, const int32_t* a, const int32_t* b, int32_t* y, const Runs& r) {
  binary_int(op, a, b, y, r);
}

// Comparisons write numpy bools (one byte, 0 or 1). NaN compares unequal and unordered, as in numpy.
template <class T>
PHI_ALWAYS_INLINE void compare(BinOp op, const T* a, const T* b, uint8_t* y, const Runs& r) {
  switch (op) {
    case BinOp::eq: return seg(a, b, y, r, [](T u, T v) { return static_cast<uint8_t>(u == v); });
    case BinOp::lt: return seg(a, b, y, r, [](T u, T v) { return static_cast<uint8_t>(u < v); });
    case BinOp::gt: return seg(a, b, y, r, [](T u, T v) { return static_cast<uint8_t>(u > v); });
    case BinOp::le: return seg(a, b, y, r, [](T u, T v) { return static_cast<uint8_t>(u <= v); });
    case BinOp::ge: return seg(a, b, y, r, [](T u, T v) { return static_cast<uint8_t>(u >= v); });
    default: throw Error(ErrorCode::internal, "compare", "not a comparison");
  }
}

PHI_HOT void compare_f32(BinOp op, const float* a, const float* b, uint8_t* y, const Runs& r) {
  compare(op, a, b, y, r);
}
PHI_HOT void compare_i64(BinOp op, const int64_t* a, const int64_t* b, uint8_t* y, const Runs& r) {
  compare(op, a, b, y, r);
}
PHI_HOT void compare_i32(BinOp op, const int32_t* a, const int32_t* b, uint8_t* y, const Runs& r) {
  compare(op, a, b, y, r);
}

// x ** e for a constant e that numpy also special-cases: one vectorised loop instead of powf.
enum class PowFast : uint8_t { none, one, square, sqrt, reciprocal };

PowFast pow_fast_kind(float e) {
  if (e == 1.0f) return PowFast::one;
  if (e == 2.0f) return PowFast::square;
  if (e == 0.5f) return PowFast::sqrt;
  if (e == -1.0f) return PowFast::reciprocal;
  return PowFast::none;
}

PHI_HOT void pow_scalar_f32(PowFast kind, const float* x, float* y, int64_t n) {
  switch (kind) {
    case PowFast::square: return map(x, y, n, [](float v) { return v * v; });
    // numpy takes sqrt for 0.5 as well, so -inf ** 0.5 is NaN there too (powf would say +inf).
    case PowFast::sqrt: return map(x, y, n, [](float v) { return std::sqrt(v); });
    case PowFast::reciprocal: return map(x, y, n, [](float v) { return 1.0f / v; });
    case PowFast::one:
    case PowFast::none: return map(x, y, n, [](float v) { return v; });
  }
}

// Innermost dimensions shorter than this are walked as blocks of whole rows per call, so a
// [M, 3] + [3] add makes a few calls of many rows instead of M calls of three elements.
constexpr int64_t kShortRow = 64;

// Drives a hot loop over a broadcast plan on `threads` threads: fn(offsets, out_pos, runs) once
// per block. Long rows go as single runs cut anywhere (parallel_range splits elements); short
// rows go as blocks of whole rows along the second-innermost dimension (split by rows).
class RunDriver {
 public:
  RunDriver() = default;
  explicit RunDriver(const BroadcastPlan& plan) : plan_(plan) {
    short_rows_ = plan.dims.size() >= 2 && plan.inner() < kShortRow;
    if (short_rows_) {
      rows_ = plan;
      rows_.dims.pop_back();
      for (int k = 0; k < plan.nops; ++k) rows_.strides[k].pop_back();
    }
  }

  const BroadcastPlan& plan() const { return plan_; }

  template <class Fn>
  void run(int threads, Fn fn) const {
    if (plan_.total == 0) return;
    Runs base;
    for (int k = 0; k < plan_.nops; ++k) base.dense[k] = plan_.inner_dense(k);
    if (!short_rows_) {
      return parallel_range(plan_.total, threads, kGrain, [&](int64_t begin, int64_t end) {
        for_each_segment(plan_, begin, end, [&](const auto& off, int64_t pos, int64_t len) {
          Runs r = base;
          r.n = len;
          fn(off, pos, r);
        });
      });
    }
    const int64_t inner = plan_.inner();
    for (int k = 0; k < plan_.nops; ++k) base.row_stride[k] = rows_.strides[k].back();
    base.n = inner;
    parallel_range(plan_.total / inner, threads, std::max<int64_t>(1, kGrain / inner), [&](int64_t begin, int64_t end) {
      for_each_segment(rows_, begin, end, [&](const auto& off, int64_t row, int64_t rows) {
        Runs r = base;
        r.rows = rows;
        fn(off, row * inner, r);
      });
    });
  }

 private:
  BroadcastPlan plan_, rows_;  // rows_: the plan without its innermost dimension
  bool short_rows_ = false;
};

struct BinarySpec {
  const char* name;
  BinOp op;
  bool ints;  // int64 and int32 accepted besides float32
};

class BinaryKernel final : public Kernel {
 public:
  BinaryKernel(const BinarySpec& spec, const std::vector<TensorDesc>& in, const Attrs& attrs) : spec_(spec) {
    const std::string op = spec.name;
    const DType dt = in[0].dtype;
    bool ok = dt == DType::f32 || (spec.ints && (dt == DType::i64 || dt == DType::i32));
    PHI_CHECK(ok, op,
              std::string("inputs must be float32") + (spec.ints ? ", int64 or int32" : "") + ", got " + dtype_name(dt));
    PHI_CHECK(in[1].dtype == dt, op,
              std::string("inputs must have the same dtype, got ") + dtype_name(dt) + " and " + dtype_name(in[1].dtype));
    driver_ = RunDriver(plan_broadcast(op, {in[0].shape, in[1].shape}));
    parse_activation(op, attrs, ep_);
    if (ep_.act != math::Act::none) {
      check(spec.op == BinOp::add || spec.op == BinOp::mul, op, "a fused activation is supported on add and mul only");
      check(dt == DType::f32, op, "a fused activation needs float32 inputs");
    }
    outputs_ = {TensorDesc{is_comparison(spec.op) ? DType::boolean : dt, driver_.plan().out_shape}};
  }

  void run(const TensorView* in, TensorView* out, void*, const ExecContext& ctx) const override {
    const int threads = ctx.resolved_threads();
    if (spec_.op == BinOp::pow && in[1].numel() == 1) {
      PowFast kind = pow_fast_kind(*in[1].ptr<const float>());
      if (kind != PowFast::none) {
        // A one-element exponent never changes the element order of the base.
        const float* x = in[0].ptr<const float>();
        float* y = out[0].ptr<float>();
        return parallel_range(driver_.plan().total, threads, kGrain,
                              [&](int64_t b, int64_t e) { pow_scalar_f32(kind, x + b, y + b, e - b); });
      }
    }
    switch (in[0].dtype()) {
      case DType::f32:
        if (is_comparison(spec_.op)) return go<float, uint8_t>(in, out, threads, compare_f32);
        return go<float, float>(in, out, threads, [this](BinOp op, const float* a, const float* b, float* y,
                                                         const Runs& r) { binary_f32(op, ep_, a, b, y, r); });
      case DType::i64:
        if (is_comparison(spec_.op)) return go<int64_t, uint8_t>(in, out, threads, compare_i64);
        return go<int64_t, int64_t>(in, out, threads, binary_i64);
      case DType::i32:
        if (is_comparison(spec_.op)) return go<int32_t, uint8_t>(in, out, threads, compare_i32);
        return go<int32_t, int32_t>(in, out, threads, binary_i32);
      default: throw Error(ErrorCode::internal, spec_.name, "dtype checked at preparation");
    }
  }

 private:
  // U: the output element type (uint8_t for comparisons).
  template <class T, class U, class Fn>
  void go(const TensorView* in, TensorView* out, int threads, Fn fn) const {
    const T* a = in[0].ptr<const T>();
    const T* b = in[1].ptr<const T>();
    U* y = out[0].ptr<U>();
    driver_.run(threads, [&](const auto& off, int64_t pos, const Runs& r) {
      fn(spec_.op, a + off[0], b + off[1], y + pos, r);
    });
  }

  BinarySpec spec_;
  RunDriver driver_;
  Epilogue ep_;
};

// ---- where -------------------------------------------------------------------------------------

template <bool VC, bool VX, bool VY, class T>
PHI_ALWAYS_INLINE void where_loop(const uint8_t* PHI_RESTRICT c, const T* PHI_RESTRICT x, const T* PHI_RESTRICT y,
                                  T* PHI_RESTRICT out, const Runs& r) {
  for (int64_t i = 0; i < r.rows; ++i) {
    const uint8_t* ci = c + i * r.row_stride[0];
    const T* xi = x + i * r.row_stride[1];
    const T* yi = y + i * r.row_stride[2];
    T* oi = out + i * r.n;
#pragma omp simd
    for (int64_t j = 0; j < r.n; ++j) oi[j] = ci[VC ? j : 0] ? xi[VX ? j : 0] : yi[VY ? j : 0];
  }
}

// Dispatches the eight stride patterns of (cond, x, y) along the innermost dimension.
template <class T>
PHI_ALWAYS_INLINE void where_any(const uint8_t* c, const T* x, const T* y, T* out, const Runs& r) {
  switch ((r.dense[0] ? 1 : 0) | (r.dense[1] ? 2 : 0) | (r.dense[2] ? 4 : 0)) {
    case 0: return where_loop<false, false, false>(c, x, y, out, r);
    case 1: return where_loop<true, false, false>(c, x, y, out, r);
    case 2: return where_loop<false, true, false>(c, x, y, out, r);
    case 3: return where_loop<true, true, false>(c, x, y, out, r);
    case 4: return where_loop<false, false, true>(c, x, y, out, r);
    case 5: return where_loop<true, false, true>(c, x, y, out, r);
    case 6: return where_loop<false, true, true>(c, x, y, out, r);
    default: return where_loop<true, true, true>(c, x, y, out, r);
  }
}

// where only moves bits, so one loop per element size serves every dtype of that size.
PHI_HOT void where_4(const uint8_t* c, const uint32_t* x, const uint32_t* y, uint32_t* out, const Runs& r) {
  where_any(c, x, y, out, r);
}
PHI_HOT void where_8(const uint8_t* c, const uint64_t* x, const uint64_t* y, uint64_t* out, const Runs& r) {
  where_any(c, x, y, out, r);
}
PHI_HOT void where_1(const uint8_t* c, const uint8_t* x, const uint8_t* y, uint8_t* out, const Runs& r) {
  where_any(c, x, y, out, r);
}

class WhereKernel final : public Kernel {
 public:
  WhereKernel(const std::vector<TensorDesc>& in, const Attrs&) {
    const std::string op = "where";
    expect_dtype(op, in[0], DType::boolean, "condition");
    const DType dt = in[1].dtype;
    PHI_CHECK(dt == DType::f32 || dt == DType::i64 || dt == DType::i32 || dt == DType::boolean, op,
              std::string("x must be float32, int64, int32 or bool, got ") + dtype_name(dt));
    PHI_CHECK(in[2].dtype == dt, op,
              std::string("x and y must have the same dtype, got ") + dtype_name(dt) + " and " + dtype_name(in[2].dtype));
    driver_ = RunDriver(plan_broadcast(op, {in[0].shape, in[1].shape, in[2].shape}));
    outputs_ = {TensorDesc{dt, driver_.plan().out_shape}};
  }

  void run(const TensorView* in, TensorView* out, void*, const ExecContext& ctx) const override {
    switch (dtype_size(in[1].dtype())) {
      case 4: return go<uint32_t>(in, out, ctx, where_4);
      case 8: return go<uint64_t>(in, out, ctx, where_8);
      default: return go<uint8_t>(in, out, ctx, where_1);
    }
  }

 private:
  template <class T, class Fn>
  void go(const TensorView* in, TensorView* out, const ExecContext& ctx, Fn fn) const {
    const auto* c = in[0].ptr<const uint8_t>();
    const T* x = in[1].ptr<const T>();
    const T* y = in[2].ptr<const T>();
    T* o = out[0].ptr<T>();
    driver_.run(ctx.resolved_threads(), [&](const auto& off, int64_t pos, const Runs& r) {
      fn(c + off[0], x + off[1], y + off[2], o + pos, r);
    });
  }

  RunDriver driver_;
};

// ---- registration ------------------------------------------------------------------------------

constexpr const char* kUnaryNames[] = {"neg",  "abs",     "exp", "log",  "sqrt", "reciprocal", "relu",
                                       "gelu", "gelu_tanh", "tanh", "sigmoid", "erf", "clip", "leaky_relu"};

template <UnOp U>
std::unique_ptr<Kernel> make_unary(const std::vector<TensorDesc>& in, const Attrs& attrs) {
  return std::make_unique<UnaryKernel>(kUnaryNames[static_cast<int>(U)], U, in, attrs);
}

constexpr BinarySpec kBinary[] = {
    {"add", BinOp::add, true},       {"sub", BinOp::sub, true},          {"mul", BinOp::mul, true},
    {"div", BinOp::div, false},      {"pow", BinOp::pow, false},         {"maximum", BinOp::max, false},
    {"minimum", BinOp::min, false},  {"equal", BinOp::eq, true},         {"less", BinOp::lt, true},
    {"greater", BinOp::gt, true},    {"less_equal", BinOp::le, true},    {"greater_equal", BinOp::ge, true},
};

template <int I>
std::unique_ptr<Kernel> make_binary(const std::vector<TensorDesc>& in, const Attrs& attrs) {
  return std::make_unique<BinaryKernel>(kBinary[I], in, attrs);
}

std::unique_ptr<Kernel> make_where(const std::vector<TensorDesc>& in, const Attrs& attrs) {
  return std::make_unique<WhereKernel>(in, attrs);
}

}  // namespace

PHI_REGISTER_OP("neg", 1, 1, make_unary<UnOp::neg>);
PHI_REGISTER_OP("abs", 1, 1, make_unary<UnOp::abs>);
PHI_REGISTER_OP("exp", 1, 1, make_unary<UnOp::exp>);
PHI_REGISTER_OP("log", 1, 1, make_unary<UnOp::log>);
PHI_REGISTER_OP("sqrt", 1, 1, make_unary<UnOp::sqrt>);
PHI_REGISTER_OP("reciprocal", 1, 1, make_unary<UnOp::reciprocal>);
PHI_REGISTER_OP("relu", 1, 1, make_unary<UnOp::relu>);
PHI_REGISTER_OP("gelu", 1, 1, make_unary<UnOp::gelu>);
PHI_REGISTER_OP("gelu_tanh", 1, 1, make_unary<UnOp::gelu_tanh>);
PHI_REGISTER_OP("tanh", 1, 1, make_unary<UnOp::tanh>);
PHI_REGISTER_OP("sigmoid", 1, 1, make_unary<UnOp::sigmoid>);
PHI_REGISTER_OP("erf", 1, 1, make_unary<UnOp::erf>);
PHI_REGISTER_OP("clip", 1, 1, make_unary<UnOp::clip>);
PHI_REGISTER_OP("leaky_relu", 1, 1, make_unary<UnOp::leaky_relu>);
PHI_REGISTER_OP("add", 2, 2, make_binary<0>);
PHI_REGISTER_OP("sub", 2, 2, make_binary<1>);
PHI_REGISTER_OP("mul", 2, 2, make_binary<2>);
PHI_REGISTER_OP("div", 2, 2, make_binary<3>);
PHI_REGISTER_OP("pow", 2, 2, make_binary<4>);
PHI_REGISTER_OP("maximum", 2, 2, make_binary<5>);
PHI_REGISTER_OP("minimum", 2, 2, make_binary<6>);
PHI_REGISTER_OP("equal", 2, 2, make_binary<7>);
PHI_REGISTER_OP("less", 2, 2, make_binary<8>);
PHI_REGISTER_OP("greater", 2, 2, make_binary<9>);
PHI_REGISTER_OP("less_equal", 2, 2, make_binary<10>);
PHI_REGISTER_OP("greater_equal", 2, 2, make_binary<11>);
PHI_REGISTER_OP("where", 3, 3, make_where);

}  // namespace phi
