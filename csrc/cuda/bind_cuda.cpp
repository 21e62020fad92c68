// phi_engine._core_cuda: the Python face of the CUDA kernels. The only pybind11 code of the CUDA
// module. It works on device addresses (Python ints) so that callers can pass memory of their
// own (DeviceBuffer, CuPy, anything with __cuda_array_interface__); phi_engine.runtime.cuda
// checks shapes and dtypes against the arrays and is the API users see.
//
// Importing the module needs no GPU: the CUDA runtime is linked statically and loads the driver
// on first use, so on a machine without one device_count() is 0 and device_status() says why.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <cstdint>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "cuda/gemm.h"
#include "cuda/kernels.h"
#include "cuda/runtime.h"

namespace py = pybind11;

namespace phi::cuda {
namespace {

using Dims = std::vector<int64_t>;

const char* error_class(ErrorCode code) {
  switch (code) {
    case ErrorCode::invalid_argument: return "InvalidRequestError";
    case ErrorCode::unsupported: return "UnsupportedError";
    case ErrorCode::not_found: return "NotFoundError";
    case ErrorCode::resource: return "ResourceError";
    case ErrorCode::internal: return "PhiEngineError";
  }
  return "PhiEngineError";
}

void raise(const char* cls, const char* message) {
  py::object errors = py::module_::import("phi_engine.errors");
  PyErr_SetString(errors.attr(cls).ptr(), message);
}

[[noreturn]] void invalid(const std::string& op, const std::string& message) {
  fail_cuda(ErrorCode::invalid_argument, op, message);
}

template <typename T>
T* device_ptr(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

cudaStream_t stream_of(uintptr_t address) { return reinterpret_cast<cudaStream_t>(address); }

void check_dims(const std::string& op, const Dims& dims, const char* name) {
  if (dims.size() > static_cast<size_t>(kMaxDims)) {
    invalid(op, std::string(name) + " has " + std::to_string(dims.size()) + " dimensions; at most " +
                    std::to_string(kMaxDims) + " are supported");
  }
  for (int64_t d : dims) {
    if (d < 0) invalid(op, std::string(name) + " has a negative dimension");
  }
}

void check_sizes(const std::string& op, std::initializer_list<int64_t> sizes) {
  for (int64_t s : sizes) {
    if (s < 0) invalid(op, "sizes must be non-negative");
  }
}

void check_address(const std::string& op, uintptr_t address, const char* name, bool needed) {
  if (needed && address == 0) invalid(op, std::string(name) + " is a null device address");
}

// Left-pads `dims` with 1s to `ndim` dimensions.
Dims pad_to(const Dims& dims, size_t ndim) {
  Dims padded(ndim - dims.size(), 1);
  padded.insert(padded.end(), dims.begin(), dims.end());
  return padded;
}

Act parse_act(const std::string& op, const std::string& name) {
  if (name.empty() || name == "none" || name == "identity") return Act::none;
  if (name == "relu") return Act::relu;
  if (name == "gelu") return Act::gelu;
  if (name == "gelu_tanh") return Act::gelu_tanh;
  if (name == "tanh") return Act::tanh;
  if (name == "sigmoid") return Act::sigmoid;
  if (name == "clip") return Act::clip;
  invalid(op, "unknown activation '" + name + "' (expected none, relu, gelu, gelu_tanh, tanh, sigmoid or clip)");
}

BinaryOp parse_binary(const std::string& name) {
  if (name == "add") return BinaryOp::add;
  if (name == "sub") return BinaryOp::sub;
  if (name == "mul") return BinaryOp::mul;
  if (name == "div") return BinaryOp::div;
  if (name == "maximum") return BinaryOp::maximum;
  if (name == "minimum") return BinaryOp::minimum;
  if (name == "pow") return BinaryOp::pow;
  invalid("binary", "unknown op '" + name + "' (expected add, sub, mul, div, maximum, minimum or pow)");
}

UnaryOp parse_unary(const std::string& name) {
  static const std::pair<const char*, UnaryOp> names[] = {
      {"neg", UnaryOp::neg},          {"abs", UnaryOp::abs},
      {"exp", UnaryOp::exp},          {"log", UnaryOp::log},
      {"sqrt", UnaryOp::sqrt},        {"reciprocal", UnaryOp::reciprocal},
      {"erf", UnaryOp::erf},          {"relu", UnaryOp::relu},
      {"gelu", UnaryOp::gelu},        {"gelu_tanh", UnaryOp::gelu_tanh},
      {"tanh", UnaryOp::tanh},        {"sigmoid", UnaryOp::sigmoid},
      {"clip", UnaryOp::clip},        {"leaky_relu", UnaryOp::leaky_relu},
  };
  for (const auto& [text, op] : names) {
    if (name == text) return op;
  }
  invalid("unary", "unknown op '" + name +
                       "' (expected neg, abs, exp, log, sqrt, reciprocal, erf, relu, gelu, gelu_tanh, tanh, "
                       "sigmoid, clip or leaky_relu)");
}

Epilogue make_epilogue(const std::string& op, uintptr_t bias, uintptr_t residual, const std::string& activation,
                       double clip_min, double clip_max) {
  Epilogue ep;
  ep.bias = device_ptr<const float>(bias);
  ep.residual = device_ptr<const float>(residual);
  ep.act = parse_act(op, activation);
  ep.clip_min = static_cast<float>(clip_min);
  ep.clip_max = static_cast<float>(clip_max);
  if (ep.act == Act::clip && !(ep.clip_min <= ep.clip_max)) invalid(op, "clip_min must not exceed clip_max");
  return ep;
}

// The bytes of a host buffer, which must be C-contiguous.
py::buffer_info contiguous_info(const py::buffer& buffer, bool writable, const char* op) {
  py::buffer_info info = buffer.request(writable);
  py::ssize_t expected = info.itemsize;
  for (py::ssize_t d = info.ndim - 1; d >= 0; --d) {
    if (info.shape[d] != 1 && info.strides[d] != expected) invalid(op, "host array must be C-contiguous");
    expected *= info.shape[d];
  }
  return info;
}

void gemm(uintptr_t a, uintptr_t b, uintptr_t c, int64_t m, int64_t n, int64_t k, bool trans_a, bool trans_b,
          double alpha, uintptr_t bias, uintptr_t residual, const std::string& activation, double clip_min,
          double clip_max, bool tf32, int64_t batch, int64_t stride_a, int64_t stride_b, const std::string& operand,
          uintptr_t stream) {
  check_sizes("gemm", {m, n, k, batch, stride_a, stride_b});
  const bool any = m > 0 && n > 0;
  check_address("gemm", c, "c", any);
  check_address("gemm", a, "a", any && k > 0);
  check_address("gemm", b, "b", any && k > 0);
  GemmArgs g;
  g.m = m;
  g.n = n;
  g.k = k;
  g.a = device_ptr<const void>(a);
  g.b = device_ptr<const void>(b);
  if (operand == "float32") {
    g.operand = Operand::f32;
  } else if (operand == "float16") {
    g.operand = Operand::f16;
  } else if (operand == "bfloat16") {
    g.operand = Operand::bf16;
  } else {
    invalid("gemm", "operand must be float32, float16 or bfloat16, got '" + operand + "'");
  }
  g.c = device_ptr<float>(c);
  g.trans_a = trans_a;
  g.trans_b = trans_b;
  g.alpha = static_cast<float>(alpha);
  g.tf32 = tf32;
  g.batch = batch;
  g.stride_a = stride_a;
  g.stride_b = stride_b;
  g.stream = stream_of(stream);
  g.epilogue = make_epilogue("gemm", bias, residual, activation, clip_min, clip_max);
  gemm_f32(g);
}

void gemm_epilogue(uintptr_t c, int64_t m, int64_t n, uintptr_t bias, uintptr_t residual,
                   const std::string& activation, double clip_min, double clip_max, uintptr_t stream) {
  check_sizes("gemm_epilogue", {m, n});
  check_address("gemm_epilogue", c, "c", m > 0 && n > 0);
  const Epilogue ep = make_epilogue("gemm_epilogue", bias, residual, activation, clip_min, clip_max);
  check_cuda(launch_gemm_epilogue(device_ptr<float>(c), m, n, ep, stream_of(stream)), "gemm_epilogue");
}

void binary(const std::string& op, uintptr_t a, const Dims& a_shape, uintptr_t b, const Dims& b_shape,
            uintptr_t out, const Dims& out_shape, const std::string& activation, double clip_min,
            double clip_max, uintptr_t stream) {
  const BinaryOp kind = parse_binary(op);
  ActParams act;
  act.act = parse_act(op, activation);
  act.lo = static_cast<float>(clip_min);
  act.hi = static_cast<float>(clip_max);
  if (act.act == Act::clip && !(act.lo <= act.hi)) invalid(op, "clip_min must not exceed clip_max");
  check_dims(op, a_shape, "a");
  check_dims(op, b_shape, "b");
  check_dims(op, out_shape, "out");
  if (a_shape.size() > out_shape.size() || b_shape.size() > out_shape.size()) {
    invalid(op, "out must have as many dimensions as the larger operand");
  }
  const Dims pa = pad_to(a_shape, out_shape.size());
  const Dims pb = pad_to(b_shape, out_shape.size());
  int64_t n = 1;
  for (size_t d = 0; d < out_shape.size(); ++d) {
    const bool agree = pa[d] == pb[d] || pa[d] == 1 || pb[d] == 1;
    if (!agree || out_shape[d] != (pa[d] == 1 ? pb[d] : pa[d])) {
      invalid(op, "shapes do not broadcast to the output shape (dimension " + std::to_string(d) + ")");
    }
    n *= out_shape[d];
  }
  check_address(op, a, "a", n > 0);
  check_address(op, b, "b", n > 0);
  check_address(op, out, "out", n > 0);
  check_cuda(launch_binary(kind, device_ptr<const float>(a), pa.data(), device_ptr<const float>(b), pb.data(),
                           device_ptr<float>(out), out_shape.data(), static_cast<int>(out_shape.size()), act,
                           stream_of(stream)),
             op);
}

void unary(const std::string& op, uintptr_t x, uintptr_t out, int64_t n, double p0, double p1, uintptr_t stream) {
  const UnaryOp kind = parse_unary(op);
  check_sizes(op, {n});
  check_address(op, x, "x", n > 0);
  check_address(op, out, "out", n > 0);
  if (kind == UnaryOp::clip && !(p0 <= p1)) invalid(op, "min must not exceed max");
  check_cuda(launch_unary(kind, device_ptr<const float>(x), device_ptr<float>(out), n, static_cast<float>(p0),
                          static_cast<float>(p1), stream_of(stream)),
             op);
}

SoftmaxMask make_mask(uintptr_t mask, const Dims& mask_shape, const Dims& shape) {
  SoftmaxMask m;
  if (mask == 0) return m;
  check_dims("softmax", mask_shape, "mask");
  if (mask_shape.size() > shape.size()) invalid("softmax", "mask has more dimensions than x");
  const Dims pm = pad_to(mask_shape, shape.size());
  // Element strides of the dense mask, 0 along the dimensions it broadcasts over.
  Dims stride(shape.size());
  int64_t s = 1;
  for (size_t d = shape.size(); d-- > 0;) {
    if (pm[d] != 1 && pm[d] != shape[d]) {
      invalid("softmax", "mask does not broadcast to x (dimension " + std::to_string(d) + ")");
    }
    stride[d] = pm[d] == 1 ? 0 : s;
    s *= pm[d];
  }
  m.data = device_ptr<const float>(mask);
  m.outer_ndim = static_cast<int>(shape.size()) - 1;
  for (int d = 0; d < m.outer_ndim; ++d) {
    m.outer_shape[d] = shape[d];
    m.outer_stride[d] = stride[d];
  }
  m.col_stride = stride.back();
  return m;
}

void softmax(uintptr_t x, uintptr_t out, const Dims& shape, double scale, uintptr_t mask, const Dims& mask_shape,
             uintptr_t stream) {
  check_dims("softmax", shape, "x");
  if (shape.empty()) invalid("softmax", "x must have at least one dimension");
  if (!std::isfinite(scale)) invalid("softmax", "scale must be finite");
  int64_t rows = 1;
  for (size_t d = 0; d + 1 < shape.size(); ++d) rows *= shape[d];
  const int64_t cols = shape.back();
  const SoftmaxMask m = make_mask(mask, mask_shape, shape);
  const bool any = rows > 0 && cols > 0;
  check_address("softmax", x, "x", any);
  check_address("softmax", out, "out", any);
  check_cuda(launch_softmax(device_ptr<const float>(x), device_ptr<float>(out), rows, cols,
                            static_cast<float>(scale), m, stream_of(stream)),
             "softmax");
}

void layer_norm(uintptr_t x, uintptr_t out, int64_t rows, int64_t cols, uintptr_t gamma, uintptr_t beta,
                uintptr_t residual, double epsilon, uintptr_t stream) {
  check_sizes("layer_norm", {rows, cols});
  if (!std::isfinite(epsilon) || !(static_cast<float>(epsilon) > 0.0f)) {
    invalid("layer_norm", "epsilon must be finite and > 0 in float32");
  }
  const bool any = rows > 0 && cols > 0;
  check_address("layer_norm", x, "x", any);
  check_address("layer_norm", out, "out", any);
  check_address("layer_norm", gamma, "gamma", any);
  check_cuda(launch_layer_norm(device_ptr<const float>(x), device_ptr<const float>(residual),
                               device_ptr<const float>(gamma), device_ptr<const float>(beta), device_ptr<float>(out),
                               rows, cols, static_cast<float>(epsilon), stream_of(stream)),
             "layer_norm");
}

DType parse_dtype(const std::string& op, const std::string& name) {
  static const std::pair<const char*, DType> names[] = {
      {"float32", DType::f32}, {"float64", DType::f64}, {"float16", DType::f16}, {"int8", DType::i8},
      {"uint8", DType::u8},    {"int32", DType::i32},   {"int64", DType::i64},   {"bool", DType::boolean},
      {"bfloat16", DType::bf16},
  };
  for (const auto& [text, dtype] : names) {
    if (name == text) return dtype;
  }
  invalid(op, "unsupported dtype '" + name +
                  "' (float32, float64, float16, bfloat16, int8, uint8, int32, int64 or bool)");
}

void strided_copy(uintptr_t src, uintptr_t dst, int elem_size, const Dims& shape, const Dims& src_strides,
                  uintptr_t stream) {
  check_dims("strided_copy", shape, "shape");
  if (src_strides.size() != shape.size()) invalid("strided_copy", "src_strides must have one stride per dimension");
  if (elem_size != 1 && elem_size != 2 && elem_size != 4 && elem_size != 8) {
    invalid("strided_copy", "elem_size must be 1, 2, 4 or 8");
  }
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  check_address("strided_copy", src, "src", n > 0);
  check_address("strided_copy", dst, "dst", n > 0);
  check_cuda(launch_strided_copy(device_ptr<const void>(src), device_ptr<void>(dst), elem_size,
                                 static_cast<int>(shape.size()), shape.data(), src_strides.data(), stream_of(stream)),
             "strided_copy");
}

void gather(uintptr_t data, int elem_size, uintptr_t indices, const std::string& index_dtype, uintptr_t out,
            int64_t outer, int64_t count, int64_t dim, int64_t row, uintptr_t error, uintptr_t stream) {
  check_sizes("gather", {outer, count, dim, row});
  if (elem_size != 1 && elem_size != 2 && elem_size != 4 && elem_size != 8) {
    invalid("gather", "elem_size must be 1, 2, 4 or 8");
  }
  if (index_dtype != "int32" && index_dtype != "int64") invalid("gather", "indices must be int32 or int64");
  const bool any = outer * count * row > 0;
  if (any && dim == 0) invalid("gather", "cannot gather from an empty axis");
  check_address("gather", data, "data", any);
  check_address("gather", indices, "indices", any);
  check_address("gather", out, "out", any);
  check_cuda(launch_gather(device_ptr<const void>(data), elem_size, device_ptr<const void>(indices),
                           index_dtype == "int64", device_ptr<void>(out), outer, count, dim, row,
                           device_ptr<unsigned long long>(error), stream_of(stream)),
             "gather");
}

void cast(uintptr_t x, const std::string& from, uintptr_t out, const std::string& to, int64_t n, uintptr_t stream) {
  const DType f = parse_dtype("cast", from), t = parse_dtype("cast", to);
  check_sizes("cast", {n});
  check_address("cast", x, "x", n > 0);
  check_address("cast", out, "out", n > 0);
  check_cuda(launch_cast(device_ptr<const void>(x), f, device_ptr<void>(out), t, n, stream_of(stream)), "cast");
}

void reduce(const std::string& op, uintptr_t x, uintptr_t out, int64_t outer, int64_t len, int64_t inner,
            uintptr_t stream) {
  static const std::pair<const char*, ReduceOp> names[] = {
      {"sum", ReduceOp::sum}, {"mean", ReduceOp::mean}, {"max", ReduceOp::max},
      {"min", ReduceOp::min}, {"prod", ReduceOp::prod},
  };
  const ReduceOp* kind = nullptr;
  for (const auto& [text, value] : names) {
    if (op == text) kind = &value;
  }
  if (kind == nullptr) invalid("reduce", "unknown reduction '" + op + "' (sum, mean, max, min or prod)");
  check_sizes("reduce", {outer, len, inner});
  const bool any = outer * inner > 0;
  check_address("reduce", x, "x", any && len > 0);
  check_address("reduce", out, "out", any);
  check_cuda(launch_reduce(*kind, device_ptr<const float>(x), device_ptr<float>(out), outer, len, inner,
                           stream_of(stream)),
             "reduce");
}

Conv2dGeometry geometry(const std::string& op, const Dims& x_shape, const Dims& out_hw, const Dims& kernel,
                        const Dims& strides, const Dims& dilations, const Dims& pads) {
  if (x_shape.size() != 4 || out_hw.size() != 2 || kernel.size() != 2 || strides.size() != 2 ||
      dilations.size() != 2 || pads.size() != 2) {
    invalid(op, "x_shape has 4 values (N, C, H, W); out_hw, kernel, strides, dilations and pads (top, left) 2");
  }
  for (int64_t v : {x_shape[0], x_shape[1], x_shape[2], x_shape[3], out_hw[0], out_hw[1], kernel[0], kernel[1]}) {
    if (v < 0) invalid(op, "sizes must be non-negative");
  }
  for (int64_t v : {strides[0], strides[1], dilations[0], dilations[1]}) {
    if (v < 1) invalid(op, "strides and dilations must be positive");
  }
  Conv2dGeometry g;
  g.n = x_shape[0];
  g.c = x_shape[1];
  g.h = x_shape[2];
  g.w = x_shape[3];
  g.oh = out_hw[0];
  g.ow = out_hw[1];
  g.kh = kernel[0];
  g.kw = kernel[1];
  g.sh = strides[0];
  g.sw = strides[1];
  g.dh = dilations[0];
  g.dw = dilations[1];
  g.pt = pads[0];
  g.pl = pads[1];
  return g;
}

void im2col(uintptr_t x, uintptr_t cols, const Dims& x_shape, const Dims& out_hw, const Dims& kernel,
            const Dims& strides, const Dims& dilations, const Dims& pads, uintptr_t stream) {
  const Conv2dGeometry g = geometry("im2col", x_shape, out_hw, kernel, strides, dilations, pads);
  const bool any = g.n * g.c * g.kh * g.kw * g.oh * g.ow > 0;
  check_address("im2col", x, "x", any);
  check_address("im2col", cols, "cols", any);
  check_cuda(launch_im2col(device_ptr<const float>(x), device_ptr<float>(cols), g, stream_of(stream)), "im2col");
}

void pool2d(const std::string& op, uintptr_t x, uintptr_t out, const Dims& x_shape, const Dims& out_hw,
            const Dims& kernel, const Dims& strides, const Dims& dilations, const Dims& pads, uintptr_t inv_count,
            uintptr_t stream) {
  if (op != "max" && op != "avg") invalid("pool2d", "op must be max or avg, got '" + op + "'");
  const Conv2dGeometry g = geometry("pool2d", x_shape, out_hw, kernel, strides, dilations, pads);
  const bool any = g.n * g.c * g.oh * g.ow > 0;
  check_address("pool2d", x, "x", any);
  check_address("pool2d", out, "out", any);
  check_address("pool2d", inv_count, "inv_count", any && op == "avg");
  check_cuda(launch_pool2d(op == "max", device_ptr<const float>(x), device_ptr<float>(out), g,
                           device_ptr<const float>(inv_count), stream_of(stream)),
             "pool2d");
}

// Element strides of an operand of `shape` broadcast to `out` (right-aligned; 0 where it repeats).
Dims broadcast_strides(const std::string& op, const Dims& shape, const Dims& out, const char* name) {
  check_dims(op, shape, name);
  if (shape.size() > out.size()) invalid(op, std::string(name) + " has more dimensions than the output");
  const Dims padded = pad_to(shape, out.size());
  Dims strides(out.size(), 0);
  int64_t s = 1;
  for (size_t d = out.size(); d-- > 0;) {
    if (padded[d] != 1 && padded[d] != out[d]) {
      invalid(op, std::string(name) + " does not broadcast to the output (dimension " + std::to_string(d) + ")");
    }
    strides[d] = padded[d] == 1 ? 0 : s;
    s *= padded[d];
  }
  return strides;
}

int64_t count_of(const Dims& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

void compare(const std::string& op, const std::string& dtype, uintptr_t a, const Dims& a_shape, uintptr_t b,
             const Dims& b_shape, uintptr_t out, const Dims& out_shape, uintptr_t stream) {
  static const std::pair<const char*, CompareOp> names[] = {
      {"equal", CompareOp::equal}, {"less", CompareOp::less}, {"less_equal", CompareOp::less_equal},
      {"greater", CompareOp::greater}, {"greater_equal", CompareOp::greater_equal},
  };
  const CompareOp* kind = nullptr;
  for (const auto& [text, value] : names) {
    if (op == text) kind = &value;
  }
  if (kind == nullptr) invalid("compare", "unknown comparison '" + op + "'");
  const DType t = parse_dtype("compare", dtype);
  if (t != DType::f32 && t != DType::i32 && t != DType::i64) invalid("compare", "dtype must be float32, int32 or int64");
  check_dims("compare", out_shape, "out");
  const Dims sa = broadcast_strides("compare", a_shape, out_shape, "a");
  const Dims sb = broadcast_strides("compare", b_shape, out_shape, "b");
  const bool any = count_of(out_shape) > 0;
  check_address("compare", a, "a", any);
  check_address("compare", b, "b", any);
  check_address("compare", out, "out", any);
  check_cuda(launch_compare(*kind, t, device_ptr<const void>(a), sa.data(), device_ptr<const void>(b), sb.data(),
                            device_ptr<bool>(out), out_shape.data(), static_cast<int>(out_shape.size()),
                            stream_of(stream)),
             "compare");
}

void where(uintptr_t cond, const Dims& cond_shape, int elem_size, uintptr_t a, const Dims& a_shape, uintptr_t b,
           const Dims& b_shape, uintptr_t out, const Dims& out_shape, uintptr_t stream) {
  if (elem_size != 1 && elem_size != 2 && elem_size != 4 && elem_size != 8) {
    invalid("where", "elem_size must be 1, 2, 4 or 8");
  }
  check_dims("where", out_shape, "out");
  const Dims sc = broadcast_strides("where", cond_shape, out_shape, "cond");
  const Dims sa = broadcast_strides("where", a_shape, out_shape, "a");
  const Dims sb = broadcast_strides("where", b_shape, out_shape, "b");
  const bool any = count_of(out_shape) > 0;
  check_address("where", cond, "cond", any);
  check_address("where", a, "a", any);
  check_address("where", b, "b", any);
  check_address("where", out, "out", any);
  check_cuda(launch_where(elem_size, device_ptr<const bool>(cond), sc.data(), device_ptr<const void>(a), sa.data(),
                          device_ptr<const void>(b), sb.data(), device_ptr<void>(out), out_shape.data(),
                          static_cast<int>(out_shape.size()), stream_of(stream)),
             "where");
}

void log_softmax(uintptr_t x, uintptr_t out, int64_t rows, int64_t cols, uintptr_t stream) {
  check_sizes("log_softmax", {rows, cols});
  const bool any = rows > 0 && cols > 0;
  check_address("log_softmax", x, "x", any);
  check_address("log_softmax", out, "out", any);
  check_cuda(launch_log_softmax(device_ptr<const float>(x), device_ptr<float>(out), rows, cols, stream_of(stream)),
             "log_softmax");
}

void rms_norm(uintptr_t x, uintptr_t out, int64_t rows, int64_t cols, uintptr_t gamma, double epsilon,
              uintptr_t stream) {
  check_sizes("rms_norm", {rows, cols});
  if (!std::isfinite(epsilon) || !(static_cast<float>(epsilon) > 0.0f)) {
    invalid("rms_norm", "epsilon must be finite and > 0 in float32");
  }
  const bool any = rows > 0 && cols > 0;
  check_address("rms_norm", x, "x", any);
  check_address("rms_norm", out, "out", any);
  check_address("rms_norm", gamma, "gamma", any);
  check_cuda(launch_rms_norm(device_ptr<const float>(x), device_ptr<const float>(gamma), device_ptr<float>(out), rows,
                             cols, static_cast<float>(epsilon), stream_of(stream)),
             "rms_norm");
}

void arg(const std::string& op, uintptr_t x, uintptr_t out, int64_t outer, int64_t len, int64_t inner, bool last,
         uintptr_t stream) {
  if (op != "max" && op != "min") invalid("arg", "op must be max or min, got '" + op + "'");
  check_sizes("arg", {outer, len, inner});
  const bool any = outer * inner > 0;
  if (any && len == 0) invalid("arg", "cannot take the index of an extreme over an empty axis");
  check_address("arg", x, "x", any);
  check_address("arg", out, "out", any);
  check_cuda(launch_arg(op == "max", last, device_ptr<const float>(x), device_ptr<int64_t>(out), outer, len, inner,
                        stream_of(stream)),
             "arg");
}

py::list device_list() {
  py::list devices;
  for (int i = 0; i < device_count(); ++i) {
    const DeviceInfo info = device_info(i);
    py::dict d;
    d["index"] = info.index;
    d["name"] = info.name;
    d["memory_bytes"] = info.memory_bytes;
    d["compute_capability"] = std::to_string(info.major) + "." + std::to_string(info.minor);
    d["multiprocessors"] = info.multiprocessors;
    d["l2_bytes"] = info.l2_bytes;
    d["shared_per_block_optin"] = info.shared_per_block_optin;
    devices.append(d);
  }
  return devices;
}

void bind_runtime(py::module_& m) {
  m.def("device_count", &device_count, "CUDA devices visible here (0 without a driver or a GPU).");
  m.def("device_status", &device_status, "Why there is no device (the runtime's message), or '' when there is one.");
  m.def("device_list", &device_list,
        "One dict per device: index, name, memory_bytes, compute_capability, multiprocessors, l2_bytes, "
        "shared_per_block_optin.");
  m.def("runtime_version", &runtime_version, "The CUDA runtime version built in, as 1000 * major + 10 * minor.");
  m.def("driver_version", &driver_version, "The driver's CUDA version (0 without a driver).");
  m.def("synchronize", [] {
    py::gil_scoped_release release;
    synchronize();
  }, "Wait for all queued work on the current device.");

  py::class_<DeviceBuffer>(m, "DeviceBuffer", "Device memory, freed when the object goes away.")
      .def(py::init<size_t>(), py::arg("nbytes"))
      .def_property_readonly("ptr", [](const DeviceBuffer& b) { return reinterpret_cast<uintptr_t>(b.data()); })
      .def_property_readonly("nbytes", &DeviceBuffer::nbytes);

  py::class_<Event>(m, "Event", "A CUDA event for timing work on the default stream.")
      .def(py::init<>())
      .def("record", [](Event& e, uintptr_t stream) { e.record(stream_of(stream)); }, py::arg("stream") = 0,
           "Record the event after the work queued so far on `stream` (0: the default stream).")
      .def("synchronize", [](Event& e) {
        py::gil_scoped_release release;
        e.synchronize();
      }, "Wait until the event has completed.")
      .def("elapsed_ms", &Event::elapsed_ms, py::arg("end"), "Milliseconds from this event to `end`.");

  m.def("copy_to_device", [](uintptr_t dst, const py::buffer& src, uintptr_t stream) {
    const py::buffer_info info = contiguous_info(src, false, "copy_to_device");
    const size_t nbytes = static_cast<size_t>(info.size * info.itemsize);
    check_address("copy_to_device", dst, "dst", nbytes > 0);
    py::gil_scoped_release release;
    copy_to_device(device_ptr<void>(dst), info.ptr, nbytes, stream_of(stream));
  }, py::arg("dst"), py::arg("src"), py::kw_only(), py::arg("stream") = 0,
     "Copy a C-contiguous host array to device address `dst`, ordered on `stream`; waits for it.");
  m.def("copy_to_host", [](const py::buffer& dst, uintptr_t src, uintptr_t stream) {
    const py::buffer_info info = contiguous_info(dst, true, "copy_to_host");
    const size_t nbytes = static_cast<size_t>(info.size * info.itemsize);
    check_address("copy_to_host", src, "src", nbytes > 0);
    py::gil_scoped_release release;
    copy_to_host(info.ptr, device_ptr<const void>(src), nbytes, stream_of(stream));
  }, py::arg("dst"), py::arg("src"), py::kw_only(), py::arg("stream") = 0,
     "Fill a C-contiguous, writable host array from device address `src` after the work queued on `stream`.");
  m.def("copy_device", [](uintptr_t dst, uintptr_t src, size_t nbytes, uintptr_t stream) {
    check_address("copy_device", dst, "dst", nbytes > 0);
    check_address("copy_device", src, "src", nbytes > 0);
    copy_device(device_ptr<void>(dst), device_ptr<const void>(src), nbytes, stream_of(stream));
  }, py::arg("dst"), py::arg("src"), py::arg("nbytes"), py::kw_only(), py::arg("stream") = 0,
     "Queue a device-to-device copy.");
  m.def("copy_async", [](uintptr_t dst, uintptr_t src, size_t nbytes, uintptr_t stream) {
    check_address("copy_async", dst, "dst", nbytes > 0);
    check_address("copy_async", src, "src", nbytes > 0);
    copy_async(device_ptr<void>(dst), device_ptr<const void>(src), nbytes, stream_of(stream));
  }, py::arg("dst"), py::arg("src"), py::arg("nbytes"), py::kw_only(), py::arg("stream") = 0,
     "Queue a copy in any direction (host addresses must be pinned: HostBuffer).");
  m.def("copy_2d", [](uintptr_t dst, size_t dpitch, uintptr_t src, size_t spitch, size_t width, size_t height,
                      uintptr_t stream) {
    const bool any = width > 0 && height > 0;
    check_address("copy_2d", dst, "dst", any);
    check_address("copy_2d", src, "src", any);
    if (any && (dpitch < width || spitch < width)) invalid("copy_2d", "a pitch is smaller than the row width");
    copy_2d(device_ptr<void>(dst), dpitch, device_ptr<const void>(src), spitch, width, height, stream_of(stream));
  }, py::arg("dst"), py::arg("dpitch"), py::arg("src"), py::arg("spitch"), py::arg("width"), py::arg("height"),
     py::kw_only(), py::arg("stream") = 0,
     "Queue a device-to-device copy of `height` rows of `width` bytes between pitched layouts.");
  m.def("fill_bytes", [](uintptr_t dst, int value, size_t nbytes, uintptr_t stream) {
    check_address("fill_bytes", dst, "dst", nbytes > 0);
    fill_bytes(device_ptr<void>(dst), value, nbytes, stream_of(stream));
  }, py::arg("dst"), py::arg("value"), py::arg("nbytes"), py::kw_only(), py::arg("stream") = 0,
     "Queue a memset of `nbytes` bytes to `value`.");

  py::class_<Stream>(m, "Stream", "A non-blocking CUDA stream, destroyed with the object.")
      .def(py::init<>())
      .def_property_readonly("ptr", [](const Stream& s) { return reinterpret_cast<uintptr_t>(s.get()); })
      .def("synchronize", [](Stream& s) {
        py::gil_scoped_release release;
        s.synchronize();
      }, "Wait for everything queued on the stream.");

  py::class_<HostBuffer>(m, "HostBuffer", py::buffer_protocol(),
                         "Pinned host memory (a writable buffer: numpy.frombuffer views it).")
      .def(py::init<size_t>(), py::arg("nbytes"))
      .def_property_readonly("ptr", [](const HostBuffer& b) { return reinterpret_cast<uintptr_t>(b.data()); })
      .def_property_readonly("nbytes", &HostBuffer::nbytes)
      .def_buffer([](HostBuffer& b) {
        return py::buffer_info(b.data(), 1, py::format_descriptor<uint8_t>::format(), 1,
                               {static_cast<py::ssize_t>(b.nbytes())}, {1});
      });

  py::class_<Graph>(m, "Graph", "An instantiated CUDA graph (see begin_capture / end_capture).")
      .def("launch", [](Graph& g, uintptr_t stream) { g.launch(stream_of(stream)); }, py::arg("stream"),
           "Queue one replay of the graph on `stream`.")
      .def_property_readonly("nodes", &Graph::nodes);
  m.def("begin_capture", [](uintptr_t stream) { begin_capture(stream_of(stream)); }, py::arg("stream"),
        "Start capturing the work queued on `stream` (not the default stream) into a graph.");
  m.def("end_capture", [](uintptr_t stream) { return end_capture(stream_of(stream)); }, py::arg("stream"),
        py::return_value_policy::take_ownership, "End the capture on `stream` and instantiate it as a Graph.");
  m.def("abort_capture", [](uintptr_t stream) { abort_capture(stream_of(stream)); }, py::arg("stream"),
        "End a capture on `stream`, if one is running, and drop it.");
}

void bind_kernels(py::module_& m) {
  constexpr double inf = INFINITY;
  m.def("gemm", &gemm, py::arg("a"), py::arg("b"), py::arg("c"), py::arg("m"), py::arg("n"), py::arg("k"),
        py::kw_only(), py::arg("trans_a") = false, py::arg("trans_b") = false, py::arg("alpha") = 1.0,
        py::arg("bias") = 0, py::arg("residual") = 0, py::arg("activation") = "none", py::arg("clip_min") = -inf,
        py::arg("clip_max") = inf, py::arg("tf32") = false, py::arg("batch") = 1, py::arg("stride_a") = 0,
        py::arg("stride_b") = 0, py::arg("operand") = "float32", py::arg("stream") = 0,
        "Queue c = act(alpha * op(a) @ op(b) + bias + residual) (row-major, device addresses; 0 = absent); a and b "
        "hold `operand` (float32, or float16 / bfloat16 on the tensor cores with float32 accumulation), c and the "
        "epilogue are float32; with batch > 1, batch products reading a + i * stride_a, b + i * stride_b "
        "(elements) into c + i * m * n.");
  m.def("gemm_epilogue", &gemm_epilogue, py::arg("c"), py::arg("m"), py::arg("n"), py::kw_only(),
        py::arg("bias") = 0, py::arg("residual") = 0, py::arg("activation") = "none", py::arg("clip_min") = -inf,
        py::arg("clip_max") = inf, py::arg("stream") = 0,
        "Queue c = act(c + bias + residual) in place on the m x n matrix c.");
  m.def("binary", &binary, py::arg("op"), py::arg("a"), py::arg("a_shape"), py::arg("b"), py::arg("b_shape"),
        py::arg("out"), py::arg("out_shape"), py::kw_only(), py::arg("activation") = "none",
        py::arg("clip_min") = -inf, py::arg("clip_max") = inf, py::arg("stream") = 0,
        "Queue out = act(op(a, b)) with numpy broadcasting; op is add, sub, mul, div, maximum, minimum or pow.");
  m.def("unary", &unary, py::arg("op"), py::arg("x"), py::arg("out"), py::arg("n"), py::kw_only(),
        py::arg("p0") = 0.0, py::arg("p1") = 0.0, py::arg("stream") = 0,
        "Queue out = op(x) over n float32 elements (clip: bounds p0, p1; leaky_relu: slope p0).");
  m.def("softmax", &softmax, py::arg("x"), py::arg("out"), py::arg("shape"), py::kw_only(), py::arg("scale") = 1.0,
        py::arg("mask") = 0, py::arg("mask_shape") = Dims{}, py::arg("stream") = 0,
        "Queue softmax over the last axis of x (shape `shape`) of x * scale + mask, the float32 mask "
        "(0 = none) of shape `mask_shape` broadcasting to x.");
  m.def("layer_norm", &layer_norm, py::arg("x"), py::arg("out"), py::arg("rows"), py::arg("cols"),
        py::arg("gamma"), py::kw_only(), py::arg("beta") = 0, py::arg("residual") = 0, py::arg("epsilon") = 1e-5,
        py::arg("stream") = 0, "Queue layer normalisation of each row of x (+ residual), scaled by gamma and shifted by beta.");
  m.def("strided_copy", &strided_copy, py::arg("src"), py::arg("dst"), py::arg("elem_size"), py::arg("shape"),
        py::arg("src_strides"), py::kw_only(), py::arg("stream") = 0,
        "Queue dst[i] = src[sum coord(i) * src_strides] over the dense `shape` (strides in elements).");
  m.def("gather", &gather, py::arg("data"), py::arg("elem_size"), py::arg("indices"), py::arg("index_dtype"),
        py::arg("out"), py::arg("outer"), py::arg("count"), py::arg("dim"), py::arg("row"), py::kw_only(),
        py::arg("error") = 0, py::arg("stream") = 0,
        "Queue out[o, j, :] = data[o, indices[j], :]; a bad index sets error[0] = 1, error[1] = the index "
        "(two uint64 words, 0 = not reported).");
  m.def("im2col", &im2col, py::arg("x"), py::arg("cols"), py::arg("x_shape"), py::arg("out_hw"), py::arg("kernel"),
        py::arg("strides"), py::arg("dilations"), py::arg("pads"), py::kw_only(), py::arg("stream") = 0,
        "Queue cols[n, (c, i, j), (oh, ow)] = the NCHW float32 input's patch values (0 in the padding; pads are "
        "top, left).");
  m.def("pool2d", &pool2d, py::arg("op"), py::arg("x"), py::arg("out"), py::arg("x_shape"), py::arg("out_hw"),
        py::arg("kernel"), py::arg("strides"), py::arg("dilations"), py::arg("pads"), py::kw_only(),
        py::arg("inv_count") = 0, py::arg("stream") = 0,
        "Queue max or average pooling of an NCHW float32 tensor; avg multiplies each window's sum of in-input "
        "taps by inv_count[oh * out_w + ow].");
  m.def("compare", &compare, py::arg("op"), py::arg("dtype"), py::arg("a"), py::arg("a_shape"), py::arg("b"),
        py::arg("b_shape"), py::arg("out"), py::arg("out_shape"), py::kw_only(), py::arg("stream") = 0,
        "Queue out = a op b (bool) with numpy broadcasting; op is equal, less, less_equal, greater or "
        "greater_equal, dtype float32, int32 or int64.");
  m.def("where", &where, py::arg("cond"), py::arg("cond_shape"), py::arg("elem_size"), py::arg("a"),
        py::arg("a_shape"), py::arg("b"), py::arg("b_shape"), py::arg("out"), py::arg("out_shape"), py::kw_only(),
        py::arg("stream") = 0, "Queue out = cond ? a : b with numpy broadcasting (cond bool).");
  m.def("log_softmax", &log_softmax, py::arg("x"), py::arg("out"), py::arg("rows"), py::arg("cols"), py::kw_only(),
        py::arg("stream") = 0, "Queue log-softmax over each row of the rows x cols float32 matrix x.");
  m.def("rms_norm", &rms_norm, py::arg("x"), py::arg("out"), py::arg("rows"), py::arg("cols"), py::arg("gamma"),
        py::kw_only(), py::arg("epsilon") = 1e-6, py::arg("stream") = 0,
        "Queue RMS normalisation of each row of x, scaled by gamma.");
  m.def("arg", &arg, py::arg("op"), py::arg("x"), py::arg("out"), py::arg("outer"), py::arg("len"), py::arg("inner"),
        py::kw_only(), py::arg("last") = false, py::arg("stream") = 0,
        "Queue out[o, i] = argmax (op max) or argmin (op min) over l of x[o, l, i], as int64.");
  m.def("cast", &cast, py::arg("x"), py::arg("from_dtype"), py::arg("out"), py::arg("to_dtype"), py::arg("n"),
        py::kw_only(), py::arg("stream") = 0, "Queue out = x.astype(to_dtype) over n elements.");
  m.def("reduce", &reduce, py::arg("op"), py::arg("x"), py::arg("out"), py::arg("outer"), py::arg("len"),
        py::arg("inner"), py::kw_only(), py::arg("stream") = 0,
        "Queue out[o, i] = op over l of x[o, l, i] (float32; op is sum, mean, max, min or prod).");
}

}  // namespace
}  // namespace phi::cuda

PYBIND11_MODULE(_core_cuda, m) {
  m.doc() = "phi_engine CUDA kernels (private; use phi_engine.runtime.cuda).";
#ifdef PHI_CUDA_ARCHITECTURES
  m.attr("architectures") = PHI_CUDA_ARCHITECTURES;
#else
  m.attr("architectures") = "";
#endif
  m.attr("has_cublas") = phi::cuda::has_cublas();
  m.attr("blas_workspace_bytes") = phi::cuda::blas_workspace_bytes();
  py::register_local_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const phi::Error& e) {
      phi::cuda::raise(phi::cuda::error_class(e.code()), e.what());
    } catch (const std::bad_alloc&) {
      phi::cuda::raise("ResourceError", "[cuda:alloc] out of host memory");
    }
  });
  phi::cuda::bind_runtime(m);
  phi::cuda::bind_kernels(m);
}
