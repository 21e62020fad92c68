#include "convert.h"

#include <cmath>

namespace phi::py_bind {

namespace {
// numpy.ascontiguousarray semantics through pybind11's numpy API table (no numpy headers needed).
PyObject* PyArray_FromAny_(PyObject* obj) {
  auto& api = py::detail::npy_api::get();
  return api.PyArray_FromAny_(obj, nullptr, 0, 0,
                              py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_ | py::detail::npy_api::NPY_ARRAY_ENSUREARRAY_,
                              nullptr);
}
}  // namespace

DType dtype_from_numpy(const py::dtype& dt, const std::string& op, const std::string& what) {
  switch (dt.kind()) {
    case 'f':
      if (dt.itemsize() == 4) return DType::f32;
      if (dt.itemsize() == 8) return DType::f64;
      if (dt.itemsize() == 2) return DType::f16;
      break;
    case 'i':
      if (dt.itemsize() == 4) return DType::i32;
      if (dt.itemsize() == 8) return DType::i64;
      if (dt.itemsize() == 1) return DType::i8;
      break;
    case 'u':
      if (dt.itemsize() == 1) return DType::u8;
      break;
    case 'b':
      if (dt.itemsize() == 1) return DType::boolean;
      break;
    default:
      break;
  }
  fail(op, what + " has unsupported dtype " + std::string(py::str(dt)));
}

py::dtype dtype_to_numpy(DType dt) {
  switch (dt) {
    case DType::f32: return py::dtype::of<float>();
    case DType::f64: return py::dtype::of<double>();
    case DType::f16: return py::dtype(23);  // NPY_HALF: numpy's type number for float16
    case DType::i8: return py::dtype::of<int8_t>();
    case DType::u8: return py::dtype::of<uint8_t>();
    case DType::i32: return py::dtype::of<int32_t>();
    case DType::i64: return py::dtype::of<int64_t>();
    case DType::boolean: return py::dtype::of<bool>();
    case DType::bf16:  // numpy has no bfloat16: stored as raw 16-bit words
      return py::dtype::of<uint16_t>();
    case DType::undefined: break;
  }
  throw Error(ErrorCode::internal, "convert", "no numpy dtype for " + std::string(dtype_name(dt)));
}

DType dtype_from_name(const std::string& name, const std::string& op) {
  for (DType dt : {DType::f32, DType::f16, DType::bf16, DType::f64, DType::i8, DType::u8, DType::i32, DType::i64,
                   DType::boolean})
    if (name == dtype_name(dt)) return dt;
  fail(op, "unknown dtype '" + name + "'");
}

Input to_input(const py::handle& obj, const std::string& op, const std::string& what) {
  Input in;
  if (obj.is_none()) return in;
  // Dense rows for the kernels: numpy converts array-likes and copies only what is not already
  // a C-contiguous array; the dtype is kept (never silently cast) and checked below.
  PyObject* arr = PyArray_FromAny_(obj.ptr());
  if (!arr) {
    PyErr_Clear();
    fail(op, what + " is not array-like (" + std::string(py::str(obj.get_type().attr("__name__"))) + ")");
  }
  in.array = py::reinterpret_steal<py::array>(arr);
  in.view.desc.dtype = dtype_from_numpy(in.array.dtype(), op, what);
  in.view.desc.shape.assign(in.array.shape(), in.array.shape() + in.array.ndim());
  in.view.data = const_cast<void*>(in.array.data());
  return in;
}

std::vector<Input> to_inputs(const py::sequence& objs, const std::string& op) {
  std::vector<Input> inputs;
  inputs.reserve(py::len(objs));
  for (size_t i = 0; i < py::len(objs); ++i) inputs.push_back(to_input(objs[i], op, "input " + std::to_string(i)));
  return inputs;
}

py::array allocate(const TensorDesc& desc) {
  std::vector<py::ssize_t> shape(desc.shape.begin(), desc.shape.end());
  return py::array(dtype_to_numpy(desc.dtype), shape);
}

TensorView view_of(py::array& array, const TensorDesc& desc) {
  TensorView v;
  v.desc = desc;
  v.data = array.mutable_data();
  return v;
}

static double finite_double(const py::handle& v, const std::string& op, const std::string& name) {
  double d = v.cast<double>();
  if (!std::isfinite(d)) fail(op, "attribute '" + name + "' must be finite, got " + std::string(py::repr(v)));
  return d;
}

Attrs to_attrs(const py::dict& attrs, const std::string& op) {
  Attrs out;
  for (auto [key, value] : attrs) {
    std::string name = py::str(key);
    if (value.is_none()) continue;
    if (py::isinstance<py::bool_>(value) || py::isinstance<py::int_>(value)) {
      out.set(name, value.cast<int64_t>());
    } else if (py::isinstance<py::float_>(value)) {
      out.set(name, finite_double(value, op, name));
    } else if (py::isinstance<py::str>(value)) {
      out.set(name, value.cast<std::string>());
    } else if (py::isinstance<py::sequence>(value) || py::isinstance<py::array>(value)) {
      auto seq = py::reinterpret_borrow<py::object>(value);
      if (py::isinstance<py::array>(value)) seq = value.attr("tolist")();
      bool all_int = true;
      for (auto item : seq) all_int = all_int && (py::isinstance<py::int_>(item) || py::isinstance<py::bool_>(item));
      if (all_int) {
        std::vector<int64_t> v;
        for (auto item : seq) v.push_back(item.cast<int64_t>());
        out.set(name, v);
      } else {
        std::vector<double> v;
        for (auto item : seq) {
          if (!py::isinstance<py::float_>(item) && !py::isinstance<py::int_>(item))
            fail(op, "attribute '" + name + "' must be a list of numbers");
          v.push_back(finite_double(item, op, name));
        }
        out.set(name, v);
      }
    } else {
      fail(op, "attribute '" + name + "' has unsupported type " + std::string(py::str(value.get_type().attr("__name__"))));
    }
  }
  return out;
}

py::tuple shape_to_tuple(const Shape& shape) {
  py::tuple t(shape.size());
  for (size_t i = 0; i < shape.size(); ++i) t[i] = shape[i];
  return t;
}

Shape shape_from_sequence(const py::handle& obj, const std::string& op) {
  Shape shape;
  for (auto item : py::reinterpret_borrow<py::sequence>(obj)) {
    int64_t d = item.cast<int64_t>();
    check(d >= 0, op, "shape dimensions must be non-negative");
    shape.push_back(d);
  }
  return shape;
}

}  // namespace phi::py_bind
