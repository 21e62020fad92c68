#include "convert.h"

#include <algorithm>
#include <cmath>
#include <limits>

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

DType dtype_from_object(const py::handle& obj, const std::string& op) {
  if (py::isinstance<py::str>(obj)) return dtype_from_name(obj.cast<std::string>(), op);
  py::dtype dt;
  try {
    dt = py::dtype::from_args(py::reinterpret_borrow<py::object>(obj));
  } catch (const py::error_already_set&) {
    fail(op, "dtype must be a dtype name or a numpy dtype, got " + std::string(py::repr(obj)));
  }
  return dtype_from_numpy(dt, op, "dtype");
}

namespace {

std::string type_name(const py::handle& obj) { return py::str(py::type::handle_of(obj).attr("__name__")); }

bool is_bytes(const py::handle& obj) { return PyBytes_Check(obj.ptr()) || PyByteArray_Check(obj.ptr()); }

// A list, tuple or other sequence of values, but not a str or bytes (which are sequences too).
bool is_value_list(const py::handle& obj) {
  return py::isinstance<py::sequence>(obj) && !py::isinstance<py::str>(obj) && !is_bytes(obj);
}

// numpy scalars (np.int64, np.float32, np.bool_) as the Python scalar they hold, numpy arrays as
// (nested) lists or, when 0-d, a scalar; anything else unchanged.
py::object plain(const py::handle& obj) {
  // Leaked on purpose: a static py::object would be released after the interpreter is gone.
  static PyObject* const generic = py::object(py::module_::import("numpy").attr("generic")).release().ptr();
  if (py::isinstance<py::array>(obj)) return obj.attr("tolist")();
  if (PyObject_IsInstance(obj.ptr(), generic) == 1) return obj.attr("item")();
  return py::reinterpret_borrow<py::object>(obj);
}

// An int-like (int, bool, or anything with __index__) as int64; fails on overflow.
int64_t index_value(const py::handle& obj, const std::string& op, const std::string& what) {
  py::object index = py::reinterpret_steal<py::object>(PyNumber_Index(obj.ptr()));
  if (!index) {
    PyErr_Clear();
    fail(op, what + " must be an integer, got " + type_name(obj));
  }
  int overflow = 0;
  const long long v = PyLong_AsLongLongAndOverflow(index.ptr(), &overflow);
  if (overflow != 0 || (v == -1 && PyErr_Occurred())) {
    PyErr_Clear();
    fail(op, what + " = " + std::string(py::repr(obj)) + " does not fit in a 64-bit integer");
  }
  return static_cast<int64_t>(v);
}

bool is_int_like(const py::handle& obj) { return PyIndex_Check(obj.ptr()) != 0 && !is_value_list(obj); }

// A real number (float, or anything with __float__) that must be finite.
double finite_double(const py::handle& obj, const std::string& op, const std::string& what) {
  const double d = PyFloat_AsDouble(obj.ptr());
  if (d == -1.0 && PyErr_Occurred()) {
    const bool overflow = PyErr_ExceptionMatches(PyExc_OverflowError);
    PyErr_Clear();
    if (overflow) fail(op, what + " must be finite, got " + std::string(py::repr(obj)));
    fail(op, what + " must be a number, got " + type_name(obj));
  }
  if (!std::isfinite(d)) fail(op, what + " must be finite, got " + std::string(py::repr(obj)));
  return d;
}

// One element of a list attribute: an integer, or a finite real number.
AttrValue list_item(const py::handle& raw, const std::string& op, const std::string& what) {
  py::object item = plain(raw);
  if (is_int_like(item)) return index_value(item, op, what);
  if (is_value_list(item) || py::isinstance<py::str>(item) || is_bytes(item))
    fail(op, what + " must be a list of numbers");
  return finite_double(item, op, what);
}

AttrValue list_value(const py::handle& seq, const std::string& op, const std::string& what) {
  std::vector<int64_t> ints;
  std::vector<double> reals;
  bool all_int = true;
  for (auto raw : seq) {
    AttrValue item = list_item(raw, op, what);
    if (const int64_t* i = std::get_if<int64_t>(&item)) {
      ints.push_back(*i);
      reals.push_back(static_cast<double>(*i));
    } else {
      all_int = false;
      reals.push_back(std::get<double>(item));
    }
  }
  if (all_int) return ints;
  return reals;
}

AttrValue attr_value(const py::handle& raw, const std::string& op, const std::string& name) {
  // Plain Python ints and finite floats, by far the most common, skip the numpy checks below.
  PyObject* p = raw.ptr();
  if (PyFloat_CheckExact(p) && std::isfinite(PyFloat_AS_DOUBLE(p))) return PyFloat_AS_DOUBLE(p);
  if (PyLong_CheckExact(p)) {
    int overflow = 0;
    const long long v = PyLong_AsLongLongAndOverflow(p, &overflow);
    if (overflow == 0) return static_cast<int64_t>(v);
  }
  const std::string what = "attribute '" + name + "'";
  py::object value = plain(raw);
  if (py::isinstance<py::str>(value)) return value.cast<std::string>();
  if (is_int_like(value)) return index_value(value, op, what);
  if (is_value_list(value)) return list_value(value, op, what);
  if (!is_bytes(value) && PyNumber_Check(value.ptr()) != 0) return finite_double(value, op, what);
  fail(op, what + " has unsupported type " + type_name(raw));
}

}  // namespace

Input to_input(const py::handle& obj, const std::string& op, const std::string& what) {
  Input in;
  if (obj.is_none()) return in;
  // Dense rows for the kernels: numpy converts array-likes and copies only what is not already
  // a C-contiguous array; the dtype is kept (never silently cast) and checked below.
  PyObject* arr = PyArray_FromAny_(obj.ptr());
  if (!arr) {
    const bool memory = PyErr_ExceptionMatches(PyExc_MemoryError);
    PyErr_Clear();
    if (memory) throw Error(ErrorCode::resource, op, "out of memory converting " + what + " to an array");
    fail(op, what + " is not array-like (" + type_name(obj) + ")");
  }
  in.array = py::reinterpret_steal<py::array>(arr);
  in.view.desc.dtype = dtype_from_numpy(in.array.dtype(), op, what);
  in.view.desc.shape.assign(in.array.shape(), in.array.shape() + in.array.ndim());
  in.view.data = const_cast<void*>(in.array.data());
  return in;
}

std::vector<Input> to_inputs(const py::handle& objs, const std::string& op) {
  if (!py::isinstance<py::list>(objs) && !py::isinstance<py::tuple>(objs))
    fail(op, "inputs must be a list of arrays (None for an absent optional input), got " + type_name(objs));
  auto seq = py::reinterpret_borrow<py::sequence>(objs);
  std::vector<Input> inputs;
  inputs.reserve(py::len(seq));
  for (size_t i = 0; i < py::len(seq); ++i) inputs.push_back(to_input(seq[i], op, "input " + std::to_string(i)));
  return inputs;
}

py::array allocate(const TensorDesc& desc, const std::string& op) {
  std::vector<py::ssize_t> shape(desc.shape.begin(), desc.shape.end());
  try {
    return py::array(dtype_to_numpy(desc.dtype), shape);
  } catch (const py::error_already_set& e) {
    if (!e.matches(PyExc_MemoryError) && !e.matches(PyExc_ValueError)) throw;
    throw Error(ErrorCode::resource, op,
                "cannot allocate an output of shape " + shape_str(desc.shape) + " (" + std::to_string(desc.nbytes()) +
                    " bytes)");
  }
}

TensorView view_of(py::array& array, const TensorDesc& desc) {
  TensorView v;
  v.desc = desc;
  v.data = array.mutable_data();
  return v;
}

Attrs to_attrs(const py::handle& attrs, const std::string& op) {
  Attrs out;
  if (attrs.is_none()) return out;
  if (!py::isinstance<py::dict>(attrs)) fail(op, "attrs must be a dict of name -> value, got " + type_name(attrs));
  for (auto [key, value] : py::reinterpret_borrow<py::dict>(attrs)) {
    if (!py::isinstance<py::str>(key)) fail(op, "attribute names must be strings, got " + std::string(py::repr(key)));
    if (value.is_none()) continue;
    const std::string name = key.cast<std::string>();
    out.set(name, attr_value(value, op, name));
  }
  return out;
}

py::tuple shape_to_tuple(const Shape& shape) {
  py::tuple t(shape.size());
  for (size_t i = 0; i < shape.size(); ++i) t[i] = shape[i];
  return t;
}

Shape shape_from_sequence(const py::handle& obj, const std::string& op) {
  py::object seq = plain(obj);
  if (!is_value_list(seq)) fail(op, "a shape must be a sequence of integers, got " + type_name(obj));
  Shape shape;
  for (auto item : seq) {
    const int64_t d = int_from(plain(item), op, "a shape dimension");
    check(d >= 0, op, "shape dimensions must be non-negative");
    shape.push_back(d);
  }
  return shape;
}

int64_t int_from(const py::handle& obj, const std::string& op, const std::string& what) {
  if (py::isinstance<py::bool_>(obj) || !is_int_like(obj)) fail(op, what + " must be an integer, got " + type_name(obj));
  return index_value(obj, op, what);
}

std::string str_from(const py::handle& obj, const std::string& op, const std::string& what) {
  if (!py::isinstance<py::str>(obj)) fail(op, what + " must be a str, got " + type_name(obj));
  return obj.cast<std::string>();
}

int threads_from(const py::handle& obj, const std::string& op) {
  const int64_t v = int_from(obj, op, "threads");
  PHI_CHECK(v >= 0, op, "threads must be >= 0, got " + std::to_string(v));
  return static_cast<int>(std::min<int64_t>(v, std::numeric_limits<int>::max()));
}

}  // namespace phi::py_bind
