#include "core/common.h"

#include <algorithm>
#include <cmath>
#include <sstream>

namespace phi {

const char* dtype_name(DType dt) {
  switch (dt) {
    case DType::f32: return "float32";
    case DType::f16: return "float16";
    case DType::bf16: return "bfloat16";
    case DType::f64: return "float64";
    case DType::i8: return "int8";
    case DType::u8: return "uint8";
    case DType::i32: return "int32";
    case DType::i64: return "int64";
    case DType::boolean: return "bool";
    case DType::undefined: return "undefined";
  }
  return "undefined";
}

size_t dtype_size(DType dt) {
  switch (dt) {
    case DType::f32: case DType::i32: return 4;
    case DType::f16: case DType::bf16: return 2;
    case DType::f64: case DType::i64: return 8;
    case DType::i8: case DType::u8: case DType::boolean: return 1;
    case DType::undefined: return 0;
  }
  return 0;
}

std::string shape_str(const Shape& shape) {
  std::ostringstream out;
  out << "(";
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  if (shape.size() == 1) out << ",";
  out << ")";
  return out.str();
}

int64_t numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

int64_t checked_numel(const std::string& op, const Shape& shape, size_t elem_size, const char* what, int index) {
  auto name = [&] {
    std::string s = what;
    if (index >= 0) s.append(" ").append(std::to_string(index));
    return s;
  };
  bool empty = false;
  for (int64_t d : shape) {
    PHI_CHECK(d >= 0, op, name() + " has a negative dimension in shape " + shape_str(shape));
    empty = empty || d == 0;
  }
  if (empty) return 0;
  // Dividing the budget down never overflows, unlike multiplying the dimensions up.
  const int64_t limit = kMaxTensorBytes / static_cast<int64_t>(std::max<size_t>(elem_size, 1));
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d > limit / n)
      throw Error(ErrorCode::resource, op,
                  name() + " of shape " + shape_str(shape) + " would span more than " +
                      std::to_string(kMaxTensorBytes) + " bytes, the most one tensor may");
    n *= d;
  }
  return n;
}

namespace {
template <typename T>
const T* lookup(const std::map<std::string, AttrValue>& values, const std::string& op, const std::string& name,
                const char* expected) {
  auto it = values.find(name);
  if (it == values.end()) return nullptr;
  if (const T* v = std::get_if<T>(&it->second)) return v;
  fail(op, "attribute '" + name + "' must be " + expected);
}
}  // namespace

int64_t Attrs::get_int(const std::string& op, const std::string& name, int64_t fallback) const {
  const int64_t* v = lookup<int64_t>(values_, op, name, "an integer");
  return v ? *v : fallback;
}

double Attrs::get_float(const std::string& op, const std::string& name, double fallback) const {
  auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  if (const double* d = std::get_if<double>(&it->second)) return *d;
  if (const int64_t* i = std::get_if<int64_t>(&it->second)) return static_cast<double>(*i);
  fail(op, "attribute '" + name + "' must be a number");
}

float Attrs::get_f32(const std::string& op, const std::string& name, float fallback) const {
  if (!has(name)) return fallback;
  const double d = get_float(op, name, 0.0);
  const float f = static_cast<float>(d);
  PHI_CHECK(std::isfinite(f), op, "attribute '" + name + "' must be finite in float32, got " + std::to_string(d));
  return f;
}

std::string Attrs::get_string(const std::string& op, const std::string& name, const std::string& fallback) const {
  const std::string* v = lookup<std::string>(values_, op, name, "a string");
  return v ? *v : fallback;
}

std::vector<int64_t> Attrs::get_ints(const std::string& op, const std::string& name,
                                     const std::vector<int64_t>& fallback) const {
  const auto* v = lookup<std::vector<int64_t>>(values_, op, name, "a list of integers");
  return v ? *v : fallback;
}

std::vector<double> Attrs::get_floats(const std::string& op, const std::string& name,
                                      const std::vector<double>& fallback) const {
  auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  if (const auto* d = std::get_if<std::vector<double>>(&it->second)) return *d;
  if (const auto* i = std::get_if<std::vector<int64_t>>(&it->second)) return {i->begin(), i->end()};
  fail(op, "attribute '" + name + "' must be a list of numbers");
}

int64_t normalize_axis(const std::string& op, int64_t axis, int64_t ndim) {
  if (axis < -ndim || axis >= ndim)
    fail(op, "axis " + std::to_string(axis) + " is out of range for a tensor of rank " + std::to_string(ndim));
  return axis < 0 ? axis + ndim : axis;
}

}  // namespace phi
