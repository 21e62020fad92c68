// Conversions between numpy / Python values and core views. Called with the GIL held.
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

// A C-contiguous array (copied only if the input was not) together with its view.
struct Input {
  py::array array;  // keeps the memory alive while the GIL is released
  TensorView view;
};

// None -> an absent input (dtype undefined).
Input to_input(const py::handle& obj, const std::string& op, const std::string& what);
std::vector<Input> to_inputs(const py::sequence& objs, const std::string& op);

py::array allocate(const TensorDesc& desc);
TensorView view_of(py::array& array, const TensorDesc& desc);

Attrs to_attrs(const py::dict& attrs, const std::string& op);
py::tuple shape_to_tuple(const Shape& shape);
Shape shape_from_sequence(const py::handle& obj, const std::string& op);

}  // namespace phi::py_bind
