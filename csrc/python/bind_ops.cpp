// Eager execution of any registered op: validate and allocate with the GIL, run without it.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>

#include "convert.h"
#include "core/op_registry.h"

namespace py = pybind11;

namespace phi::py_bind {

static py::list run_op(const py::object& name_obj, const py::object& inputs, const py::object& attrs,
                       const py::object& threads) {
  const std::string name = str_from(name_obj, "run_op", "the op name");
  auto in = to_inputs(inputs, name);
  std::vector<TensorDesc> descs;
  std::vector<TensorView> views;
  for (auto& i : in) {
    descs.push_back(i.view.desc);
    views.push_back(i.view);
  }
  ExecContext ctx;
  ctx.threads = threads_from(threads, name);
  auto kernel = make_kernel(name, descs, to_attrs(attrs, name));
  views.resize(kernel->arity());
  py::list result;
  std::vector<py::array> arrays;
  std::vector<TensorView> outs;
  for (const auto& d : kernel->outputs()) {
    arrays.push_back(allocate(d, name));
    outs.push_back(view_of(arrays.back(), d));
  }
  std::unique_ptr<std::byte[]> workspace;
  if (size_t ws = kernel->workspace_bytes()) workspace.reset(new std::byte[ws]);
  {
    py::gil_scoped_release release;
    kernel->run(views.data(), outs.data(), workspace.get(), ctx);
  }
  for (auto& a : arrays) result.append(a);
  return result;
}

// One declared input of infer(): None, or a (dtype, shape) pair.
static TensorDesc desc_from(const py::handle& item, const std::string& op) {
  TensorDesc d;
  if (item.is_none()) return d;
  const bool pair = (py::isinstance<py::tuple>(item) || py::isinstance<py::list>(item)) && py::len(item) == 2;
  check(pair, op, "each input must be (dtype, shape) or None");
  auto seq = py::reinterpret_borrow<py::sequence>(item);
  d.dtype = dtype_from_object(seq[0], op);
  d.shape = shape_from_sequence(seq[1], op);
  return d;
}

static py::list infer(const py::object& name_obj, const py::object& inputs, const py::object& attrs) {
  const std::string name = str_from(name_obj, "infer", "the op name");
  if (!py::isinstance<py::list>(inputs) && !py::isinstance<py::tuple>(inputs))
    fail(name, "inputs must be a list of (dtype, shape) pairs or None");
  std::vector<TensorDesc> descs;
  for (auto item : inputs) descs.push_back(desc_from(item, name));
  auto kernel = make_kernel(name, descs, to_attrs(attrs, name));
  py::list out;
  for (const auto& d : kernel->outputs()) out.append(py::make_tuple(dtype_name(d.dtype), shape_to_tuple(d.shape)));
  return out;
}

void init_ops(py::module_& m) {
  m.def("run_op", &run_op, py::arg("name"), py::arg("inputs"), py::arg("attrs") = py::dict(),
        py::arg("threads") = py::int_(0),
        R"doc(Run a registered op eagerly.

Args:
    name: Op name (see op_names()).
    inputs: Numpy arrays, or None for an absent optional input.
    attrs: Attributes by name (int, float, str, or lists of numbers).
    threads: Threads to use; 0 means the default (set_num_threads).

Returns:
    The op's outputs as new numpy arrays.

Raises:
    InvalidRequestError: a bad input, dtype, shape, attribute or thread count (the message
        names the op).
    ResourceError: an output too large to allocate.
    NotFoundError: no op of that name.
)doc");
  m.def("infer", &infer, py::arg("name"), py::arg("inputs"), py::arg("attrs") = py::dict(),
        R"doc(Infer an op's outputs from input (dtype, shape) pairs without running it.

Args:
    name: Op name (see op_names()).
    inputs: (dtype, shape) pairs, or None for an absent optional input.
    attrs: Attributes by name, as for run_op.

Returns:
    A list of (dtype name, shape tuple) pairs.

Raises:
    InvalidRequestError: a malformed pair, or shapes, dtypes or attributes the op refuses.
    ResourceError: an input or output would exceed the size one tensor may have.
    NotFoundError: no op of that name.
)doc");
  m.def("op_names", &op_names, "Names of all registered ops, sorted.");
}

}  // namespace phi::py_bind
