// Core types shared by every kernel: dtypes, tensor views, errors, attributes.
// Nothing here knows about Python; the bindings in csrc/python translate.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <variant>
#include <vector>

// Hot loops are compiled three times on x86-64 (AVX-512, AVX2+FMA, baseline) and the loader
// picks the clone the CPU supports (GCC/Clang function multi-versioning via ifunc), so one binary
// is fast on a modern CPU and never executes an illegal instruction on an old one. `flatten` inlines every
// call in the body (templates and math helpers included) so that all of it is compiled for the
// clone's ISA; a callee left out of line would be built for the baseline only.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && defined(__linux__)
#define PHI_HOT __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"), flatten))
#else
#define PHI_HOT
#endif

#if defined(__GNUC__) || defined(__clang__)
#define PHI_RESTRICT __restrict__
#else
#define PHI_RESTRICT
#endif

// Forces the inline loop templates into the PHI_HOT function that calls them, so each loop is
// compiled inside that function's clones rather than once for the baseline ISA.
#if defined(__GNUC__) || defined(__clang__)
#define PHI_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define PHI_ALWAYS_INLINE inline
#endif

namespace phi {

enum class DType : uint8_t { f32, f16, bf16, f64, i8, u8, i32, i64, boolean, undefined };

const char* dtype_name(DType dt);
size_t dtype_size(DType dt);

enum class ErrorCode : uint8_t {
  invalid_argument,  // bad shape, dtype, value or attribute -> phi_engine.errors.InvalidRequestError
  unsupported,       // valid but not implemented here -> UnsupportedError
  not_found,         // unknown op or name -> NotFoundError
  resource,          // allocation failed, memory budget exceeded -> ResourceError
  internal,          // a bug -> PhiEngineError
};

// Every native failure is a phi::Error whose message starts with "[op] ".
class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& op, const std::string& message)
      : std::runtime_error("[" + op + "] " + message), code_(code) {}
  ErrorCode code() const noexcept { return code_; }

 private:
  ErrorCode code_;
};

[[noreturn]] inline void fail(const std::string& op, const std::string& message) {
  throw Error(ErrorCode::invalid_argument, op, message);
}

inline void check(bool ok, const std::string& op, const char* message) {
  if (!ok) fail(op, message);
}
inline void check(bool ok, const std::string& op, const std::string& message) {
  if (!ok) fail(op, message);
}

// Like check(), but the message expression is evaluated only on failure: use it whenever the
// message is built (concatenation, shape_str), which would otherwise cost allocations per call.
#define PHI_CHECK(cond, op, ...)                   \
  do {                                             \
    if (!(cond)) ::phi::fail((op), (__VA_ARGS__)); \
  } while (0)

using Shape = std::vector<int64_t>;

std::string shape_str(const Shape& shape);
int64_t numel(const Shape& shape);

// The most bytes one tensor may span: beyond any memory a machine has, and small enough that
// kernels may add and multiply sizes and offsets below it without overflowing int64.
constexpr int64_t kMaxTensorBytes = int64_t{1} << 48;

// The element count of `shape`, failing naming `op` when a dimension is negative or a tensor of
// that shape and element size would span more than kMaxTensorBytes. Shapes declared by a caller
// (infer, plans) or computed from attributes pass through it before anything is sized from them.
// The message names `what` (and `index`, when >= 0), formatted only on failure.
int64_t checked_numel(const std::string& op, const Shape& shape, size_t elem_size, const char* what, int index = -1);

// Shape and dtype of a value, without data.
struct TensorDesc {
  DType dtype = DType::undefined;
  Shape shape;

  bool present() const { return dtype != DType::undefined; }
  int64_t ndim() const { return static_cast<int64_t>(shape.size()); }
  int64_t numel() const { return phi::numel(shape); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }
};

// A dense, C-contiguous tensor in memory the caller owns. Non-contiguous inputs are made
// contiguous at the boundary (bindings, plan builder), so kernels only see dense rows.
struct TensorView {
  void* data = nullptr;
  TensorDesc desc;

  bool present() const { return desc.present(); }
  const Shape& shape() const { return desc.shape; }
  DType dtype() const { return desc.dtype; }
  int64_t numel() const { return desc.numel(); }
  template <typename T>
  T* ptr() const {
    return static_cast<T*>(data);
  }
};

// Operator attributes: the values an ONNX node or a Python call passes by name.
using AttrValue = std::variant<int64_t, double, std::string, std::vector<int64_t>, std::vector<double>>;

class Attrs {
 public:
  Attrs() = default;
  explicit Attrs(std::map<std::string, AttrValue> values) : values_(std::move(values)) {}

  bool has(const std::string& name) const { return values_.count(name) != 0; }
  void set(const std::string& name, AttrValue value) { values_[name] = std::move(value); }
  const std::map<std::string, AttrValue>& values() const { return values_; }

  int64_t get_int(const std::string& op, const std::string& name, int64_t fallback) const;
  double get_float(const std::string& op, const std::string& name, double fallback) const;
  // A number a float32 kernel uses as is (a bound, a slope, a scale): it must be finite once
  // rounded to float32, since 1e39 passes as a finite double and becomes inf. The fallback,
  // used when the attribute is absent, is returned unchecked (an unbounded clip uses inf).
  float get_f32(const std::string& op, const std::string& name, float fallback) const;
  std::string get_string(const std::string& op, const std::string& name, const std::string& fallback) const;
  std::vector<int64_t> get_ints(const std::string& op, const std::string& name,
                                const std::vector<int64_t>& fallback) const;
  std::vector<double> get_floats(const std::string& op, const std::string& name,
                                 const std::vector<double>& fallback) const;

 private:
  std::map<std::string, AttrValue> values_;
};

// Normalises a possibly negative axis against ndim, failing with the op's name when out of range.
int64_t normalize_axis(const std::string& op, int64_t axis, int64_t ndim);

}  // namespace phi
