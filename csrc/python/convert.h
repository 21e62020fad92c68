// Conversions between numpy / Python values and core views. Called with the GIL held.
//
// Every conversion of a caller's value goes through here and fails with a phi::Error naming the op
// (so Python sees phi_engine.errors.InvalidRequestError "[op] ..."), never with the TypeError or
// RuntimeError that pybind11's implicit casts raise.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "core/common.h"

namespace phi::py_bind {

namespace py = pybind11;

DType dtype_from_numpy(const py::dtype& dt, const std::string& op, const std::string& what);
py::dtype dtype_to_numpy(DType dt);
DType dtype_from_name(const std::string& name, const std::string& op);
// A dtype name ("float32") or anything numpy.dtype() accepts.
DType dtype_from_object(const py::handle& obj, const std::string& op);

// A C-contiguous array (copied only if the input was not) together with its view.
struct Input {
  py::array array;  // keeps the memory alive while the GIL is released
  TensorView view;
};

// None -> an absent input (dtype undefined).
Input to_input(const py::handle& obj, const std::string& op, const std::string& what);
// A list or tuple of array-likes (or None).
std::vector<Input> to_inputs(const py::handle& objs, const std::string& op);

// A new array for an output; an allocation numpy refuses is a phi ResourceError naming the op.
py::array allocate(const TensorDesc& desc, const std::string& op);
TensorView view_of(py::array& array, const TensorDesc& desc);

// A dict of attribute name -> int, float, str, or a sequence / array of numbers (None: left out).
Attrs to_attrs(const py::handle& attrs, const std::string& op);
py::tuple shape_to_tuple(const Shape& shape);
Shape shape_from_sequence(const py::handle& obj, const std::string& op);

// A Python int or numpy integer (not a bool) as int64.
int64_t int_from(const py::handle& obj, const std::string& op, const std::string& what);
// A str (not bytes, not any other object).
std::string str_from(const py::handle& obj, const std::string& op, const std::string& what);
// A `threads` argument: a non-negative integer, capped at INT_MAX (more threads than exist
// already means "all of them").
int threads_from(const py::handle& obj, const std::string& op);

}  // namespace phi::py_bind
