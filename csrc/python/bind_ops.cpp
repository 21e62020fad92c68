// Eager execution of any registered op: validate and allocate with the GIL, run without it.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>

#include "convert.h"
#include "core/op_registry.h"

namespace py = pybind11;

namespace phi::py_bind {

static py::list run_op(const std::string& name, const py::sequence& inputs, const py::dict& attrs, int threads) {
  auto in = to_inputs(inputs, name);
  std::vector<TensorDesc> descs;
  std::vector<TensorView> views;
  for (auto& i : in) {
    descs.push_back(i.view.desc);
    views.push_back(i.view);
  }
  auto kernel = make_kernel(name, descs, to_attrs(attrs, name));
  views.resize(kernel->arity());
  py::list result;
  std::vector<py::array> arrays;
  std::vector<TensorView> outs;
  for (const auto& d : kernel->outputs()) {
    arrays.push_back(allocate(d));
    outs.push_back(view_of(arrays.back(), d));
  }
  std::unique_ptr<std::byte[]> workspace;
  if (size_t ws = kernel->workspace_bytes()) workspace.reset(new std::byte[ws]);
  ExecContext ctx;
  ctx.threads = threads;
  {
    py::gil_scoped_release release;
    kernel->run(views.data(), outs.data(), workspace.get(), ctx);
  }
  for (auto& a : arrays) result.append(a);
  return result;
}

static py::list infer(const std::string& name, const py::sequence& inputs, const py::dict& attrs) {
  std::vector<TensorDesc> descs;
  for (auto item : inputs) {
    TensorDesc d;
    if (!item.is_none()) {
      auto pair = item.cast<py::tuple>();
      check(pair.size() == 2, name, "each input must be (dtype, shape) or None");
      d.dtype = dtype_from_name(pair[0].cast<std::string>(), name);
      d.shape = shape_from_sequence(pair[1], name);
    }
    descs.push_back(d);
  }
  auto kernel = make_kernel(name, descs, to_attrs(attrs, name));
  py::list out;
  for (const auto& d : kernel->outputs()) out.append(py::make_tuple(dtype_name(d.dtype), shape_to_tuple(d.shape)));
  return out;
}

void init_ops(py::module_& m) {
  m.def("run_op", &run_op, py::arg("name"), py::arg("inputs"), py::arg("attrs") = py::dict(),
        py::arg("threads") = 0,
        R"doc(Run a registered op eagerly.

Args:
    name: Op name (see op_names()).
    inputs: Numpy arrays, or None for an absent optional input.
    attrs: Attributes by name (int, float, str, or lists of numbers).
    threads: Threads to use; 0 means the default (set_num_threads).

Returns:
    The op's outputs as new numpy arrays.

Raises:
    InvalidRequestError: a bad dtype, shape or attribute (the message names the op).
    NotFoundError: no op of that name.
)doc");
  m.def("infer", &infer, py::arg("name"), py::arg("inputs"), py::arg("attrs") = py::dict(),
        R"doc(Infer an op's outputs from input (dtype, shape) pairs without running it.

Returns:
    A list of (dtype name, shape tuple) pairs.
)doc");
  m.def("op_names", &op_names, "Names of all registered ops, sorted.");
}

}  // namespace phi::py_bind
