// cast: element type conversion with numpy's astype semantics on x86-64, for the dtypes the
// graph compiler meets at run time (ONNX Cast of masks and indices): float32, float64, int8,
// uint8, int32, int64 and bool, in any direction. float16 and bfloat16 are not converted here
// (the reference does it).
//
// Float to integer truncates toward zero. Where the value does not fit (NaN, infinities, out of
// range) C++ leaves the conversion undefined; we return what the x86 conversion instructions
// return and numpy therefore gives on x86-64 for 32- and 64-bit targets (the "integer
// indefinite" value, the type's minimum), and for 8-bit targets numpy's result: the low byte of
// the int32 conversion. Integer to narrower integer wraps (two's complement), as numpy does.
// To bool is `x != 0` (NaN is true); from bool is 0 or 1.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <algorithm>

#include "core/op_registry.h"

namespace phi {

namespace {

template <typename To, typename From>
To convert(From x) {
  if constexpr (std::is_same_v<To, bool>) {
    return x != From(0);
  } else if constexpr (std::is_floating_point_v<From> && std::is_integral_v<To>) {
    if constexpr (sizeof(To) >= 4) {
      // Fits iff min <= x < -min (both exactly representable as powers of two); NaN fails both.
      constexpr double lo = static_cast<double>(std::numeric_limits<To>::min());
      if constexpr (std::is_signed_v<To>) {
        const double v = static_cast<double>(x);
        return (v >= lo && v < -lo) ? static_cast<To>(x) : std::numeric_limits<To>::min();
      } else {
        return static_cast<To>(convert<int64_t>(x));
      }
    } else {
      return static_cast<To>(static_cast<uint32_t>(convert<int32_t>(x)));
    }
  } else if constexpr (std::is_integral_v<From> && std::is_integral_v<To>) {
    return static_cast<To>(static_cast<std::make_unsigned_t<To>>(x));  // modular, never UB
  } else {
    return static_cast<To>(x);
  }
}

template <typename To, typename From>
void cast_loop(const void* src, void* dst, int64_t n) {
  const From* x = static_cast<const From*>(src);
  To* y = static_cast<To*>(dst);
  for (int64_t i = 0; i < n; ++i) y[i] = convert<To>(x[i]);
}

using CastFn = void (*)(const void*, void*, int64_t);

template <typename From>
CastFn pick_to(DType to) {
  switch (to) {
    case DType::f32: return cast_loop<float, From>;
    case DType::f64: return cast_loop<double, From>;
    case DType::i8: return cast_loop<int8_t, From>;
    case DType::u8: return cast_loop<uint8_t, From>;
    case DType::i32: return cast_loop<int32_t, From>;
    case DType::i64: return cast_loop<int64_t, From>;
    case DType::boolean: return cast_loop<bool, From>;
    default: return nullptr;
  }
}

CastFn pick(DType from, DType to) {
  switch (from) {
    case DType::f32: return pick_to<float>(to);
    case DType::f64: return pick_to<double>(to);
    case DType::i8: return pick_to<int8_t>(to);
    case DType::u8: return pick_to<uint8_t>(to);
    case DType::i32: return pick_to<int32_t>(to);
    case DType::i64: return pick_to<int64_t>(to);
    case DType::boolean: return pick_to<bool>(to);
    default: return nullptr;
  }
}

DType parse_dtype(const std::string& op, const std::string& name) {
  for (DType dt : {DType::f32, DType::f16, DType::bf16, DType::f64, DType::i8, DType::u8, DType::i32, DType::i64,
                   DType::boolean}) {
    if (name == dtype_name(dt)) return dt;
  }
  fail(op, "unknown dtype '" + name + "' for attribute 'to'");
}

class CastKernel final : public Kernel {
 public:
  CastKernel(const std::vector<TensorDesc>& in, const Attrs& attrs) {
    const std::string op = "cast";
    PHI_CHECK(attrs.has("to"), op, "attribute 'to' is required");
    const DType to = parse_dtype(op, attrs.get_string(op, "to", ""));
    fn_ = in[0].dtype == to ? nullptr : pick(in[0].dtype, to);
    PHI_CHECK(in[0].dtype == to || fn_ != nullptr, op,
              std::string("cannot cast ") + dtype_name(in[0].dtype) + " to " + dtype_name(to) +
                  " (float32, float64, int8, uint8, int32, int64 and bool are supported)");
    outputs_ = {TensorDesc{to, in[0].shape}};
  }

  void run(const TensorView* in, TensorView* out, void*, const ExecContext& ctx) const override {
    const int64_t n = in[0].desc.numel();
    if (n == 0) return;
    if (fn_ == nullptr) {
      std::memcpy(out[0].data, in[0].data, in[0].desc.nbytes());
      return;
    }
    const size_t si = dtype_size(in[0].desc.dtype), so = dtype_size(out[0].desc.dtype);
    constexpr int64_t kChunk = 1 << 16;
    const int64_t chunks = (n + kChunk - 1) / kChunk;
    ThreadPool::global().parallel_for(chunks, ctx.resolved_threads(), [&](int64_t c) {
      const int64_t begin = c * kChunk, count = std::min(kChunk, n - begin);
      fn_(static_cast<const char*>(in[0].data) + begin * si, static_cast<char*>(out[0].data) + begin * so, count);
    });
  }

 private:
  CastFn fn_ = nullptr;
};

std::unique_ptr<Kernel> make_cast(const std::vector<TensorDesc>& in, const Attrs& attrs) {
  return std::make_unique<CastKernel>(in, attrs);
}

}  // namespace

PHI_REGISTER_OP("cast", 1, 1, make_cast);

}  // namespace phi
