// Plans built from Python and run without the GIL: inputs are checked and outputs allocated as
// numpy arrays with the GIL held, then the whole run happens with it released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "convert.h"
#include "core/plan.h"

namespace py = pybind11;

namespace phi::py_bind {

namespace {

const std::string kPlan = "plan";

py::tuple desc_tuple(const TensorDesc& d) { return py::make_tuple(dtype_name(d.dtype), shape_to_tuple(d.shape)); }

bool is_list(const py::handle& obj) { return py::isinstance<py::list>(obj) || py::isinstance<py::tuple>(obj); }

TensorDesc desc_from_pair(const py::handle& item) {
  check(is_list(item) && py::len(item) == 2, kPlan, "an output desc must be a (dtype, shape) pair");
  auto pair = py::reinterpret_borrow<py::sequence>(item);
  return TensorDesc{dtype_from_object(pair[0], kPlan), shape_from_sequence(pair[1], kPlan)};
}

// A slot number; the plan itself checks it against the values it has.
int slot_from(const py::handle& obj, const std::string& what) {
  const int64_t slot = int_from(obj, kPlan, what);
  PHI_CHECK(slot >= 0, kPlan, "slot numbers are non-negative, got " + std::to_string(slot));
  PHI_CHECK(slot <= std::numeric_limits<int>::max(), kPlan,
            what + " refers to slot " + std::to_string(slot) + ", past the most a plan may have");
  return static_cast<int>(slot);
}

// None -> -1 (an absent optional input); slots themselves are never negative.
std::vector<int> slots_from(const py::handle& seq) {
  check(is_list(seq), kPlan, "step inputs must be a list of slot numbers or None");
  std::vector<int> slots;
  slots.reserve(py::len(seq));
  for (auto item : seq) slots.push_back(item.is_none() ? -1 : slot_from(item, "a step input"));
  return slots;
}

std::shared_ptr<Constant> constant_from_array(const py::handle& obj) {
  Input in = to_input(obj, kPlan, "constant");
  check(in.view.present(), kPlan, "a constant cannot be None");
  return std::make_shared<Constant>(in.view.desc, in.view.data);
}

std::string input_list(const Plan& plan) {
  std::string names;
  for (size_t i = 0; i < plan.num_inputs(); ++i) names += (i ? ", '" : "'") + plan.input_name(i) + "'";
  return names.empty() ? "none" : names;
}

// Inputs in declaration order (kept alive while the GIL is released) and freshly allocated outputs.
struct Bound {
  std::vector<Input> inputs;
  std::vector<TensorView> in_views;
  std::vector<py::array> outputs;
  std::vector<TensorView> out_views;
};

Bound bind_run(const Plan& plan, const py::object& inputs) {
  check(plan.finalized(), kPlan, "run() needs a finalized plan (call finalize() first)");
  Bound b;
  const size_t n = plan.num_inputs();
  b.inputs.reserve(n);
  if (py::isinstance<py::dict>(inputs)) {
    auto d = py::reinterpret_borrow<py::dict>(inputs);
    for (size_t i = 0; i < n; ++i) {
      const std::string& name = plan.input_name(i);
      py::str key(name);
      if (!d.contains(key)) fail(kPlan, "missing input '" + name + "' (the plan takes " + input_list(plan) + ")");
      b.inputs.push_back(to_input(d[key], kPlan, "input '" + name + "'"));
    }
    if (py::len(d) != n) {
      for (auto [key, _] : d) {
        bool known = false;
        for (size_t i = 0; i < n && !known; ++i) known = py::str(key).cast<std::string>() == plan.input_name(i);
        if (!known)
          fail(kPlan, "unknown input " + std::string(py::repr(key)) + " (the plan takes " + input_list(plan) + ")");
      }
    }
  } else if ((py::isinstance<py::list>(inputs) || py::isinstance<py::tuple>(inputs))) {
    auto seq = py::reinterpret_borrow<py::sequence>(inputs);
    check(py::len(seq) == n, kPlan,
          "expects " + std::to_string(n) + " inputs (" + input_list(plan) + "), got " + std::to_string(py::len(seq)));
    for (size_t i = 0; i < n; ++i) b.inputs.push_back(to_input(seq[i], kPlan, "input '" + plan.input_name(i) + "'"));
  } else {
    fail(kPlan, "inputs must be a dict of name -> numpy array or a list of arrays in input order");
  }
  for (const Input& in : b.inputs) {
    check(in.view.present(), kPlan, "inputs cannot be None");
    b.in_views.push_back(in.view);
  }
  b.outputs.reserve(plan.num_outputs());
  for (size_t j = 0; j < plan.num_outputs(); ++j) {
    b.outputs.push_back(allocate(plan.output_desc(j), kPlan));
    b.out_views.push_back(view_of(b.outputs.back(), plan.output_desc(j)));
  }
  return b;
}

py::dict outputs_dict(const Plan& plan, const Bound& b) {
  py::dict out;
  for (size_t j = 0; j < plan.num_outputs(); ++j) out[py::str(plan.output_name(j))] = b.outputs[j];
  return out;
}

py::dict run(const Plan& plan, const py::object& inputs, const py::object& threads) {
  RunOptions options;
  options.threads = threads_from(threads, kPlan);
  Bound b = bind_run(plan, inputs);
  {
    py::gil_scoped_release release;
    plan.run(b.in_views, b.out_views, options);
  }
  return outputs_dict(plan, b);
}

py::tuple run_profiled(const Plan& plan, const py::object& inputs, const py::object& threads) {
  RunOptions options;
  options.threads = threads_from(threads, kPlan);
  Bound b = bind_run(plan, inputs);
  std::vector<int64_t> step_ns(plan.num_steps(), 0);
  options.step_ns = step_ns.data();
  {
    py::gil_scoped_release release;
    plan.run(b.in_views, b.out_views, options);
  }
  return py::make_tuple(outputs_dict(plan, b), py::cast(step_ns));
}

const char* kind_name(ValueKind kind) {
  switch (kind) {
    case ValueKind::input: return "input";
    case ValueKind::constant: return "constant";
    case ValueKind::intermediate: return "intermediate";
  }
  return "intermediate";
}

py::list ports(const Plan& plan, bool inputs) {
  py::list out;
  size_t n = inputs ? plan.num_inputs() : plan.num_outputs();
  for (size_t i = 0; i < n; ++i) {
    const TensorDesc& d = inputs ? plan.input_desc(i) : plan.output_desc(i);
    out.append(py::make_tuple(inputs ? plan.input_name(i) : plan.output_name(i), inputs ? plan.input_slot(i) : plan.output_slot(i),
                              dtype_name(d.dtype), shape_to_tuple(d.shape)));
  }
  return out;
}

// Constant: shared, immutable weights.
void bind_constant(py::module_& m) {
  py::class_<Constant, std::shared_ptr<Constant>>(m, "Constant", R"doc(An immutable weight tensor in aligned
memory, shareable between plans (one model's plans for several shape buckets hold one copy).)doc")
      .def(py::init([](const py::object& array) { return constant_from_array(array); }), py::arg("array"),
           R"doc(Copy an array (or array-like) into a new constant.

Raises:
    InvalidRequestError: not array-like, or an unsupported dtype.
)doc")
      .def_property_readonly("dtype", [](const Constant& c) { return dtype_name(c.desc().dtype); })
      .def_property_readonly("shape", [](const Constant& c) { return shape_to_tuple(c.desc().shape); })
      .def_property_readonly("nbytes", [](const Constant& c) { return c.desc().nbytes(); })
      .def(
          "numpy",
          [](py::object self) {
            const Constant& c = self.cast<const Constant&>();
            std::vector<py::ssize_t> shape(c.desc().shape.begin(), c.desc().shape.end());
            // A read-only view of the constant's own memory; the array keeps the Constant alive.
            py::array view(dtype_to_numpy(c.desc().dtype), shape, {}, c.data(), self);
            py::detail::array_proxy(view.ptr())->flags &= ~py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
            return view;
          },
          R"doc(A read-only numpy view of the constant's data (no copy).)doc");
}

using PlanClass = py::class_<Plan, std::shared_ptr<Plan>>;

// add_input / add_constant / add_step / mark_output / finalize: one thread, before runs.
void bind_building(PlanClass& cls) {
  cls
      .def(
          "add_input",
          [](Plan& p, const py::object& name, const py::object& dtype, const py::object& shape) {
            return p.add_input(str_from(name, kPlan, "an input name"),
                               TensorDesc{dtype_from_object(dtype, kPlan), shape_from_sequence(shape, kPlan)});
          },
          py::arg("name"), py::arg("dtype"), py::arg("shape"), R"doc(Declare a named input of a fixed dtype and shape.

Args:
    name: The input's name (the key run() looks up).
    dtype: A dtype name such as "float32", or a numpy dtype.
    shape: The exact shape.

Returns:
    The input's slot.

Raises:
    InvalidRequestError: a duplicate name, an unknown dtype, or the plan is finalized.
)doc")
      .def(
          "add_constant",
          [](Plan& p, const py::object& value) {
            if (py::isinstance<Constant>(value)) return p.add_constant(value.cast<std::shared_ptr<Constant>>());
            check(!p.finalized(), kPlan, "cannot add a constant after finalize()");
            return p.add_constant(constant_from_array(value));
          },
          py::arg("value"), R"doc(Add a constant: a numpy array (copied) or a Constant (shared, not copied).

Returns:
    The constant's slot.

Raises:
    InvalidRequestError: not an array or Constant, an unsupported dtype, or the plan is finalized.
)doc")
      .def(
          "add_step",
          [](Plan& p, const py::object& op_obj, const py::object& inputs, const py::object& attrs,
             const py::object& outputs) {
            const std::string op = str_from(op_obj, kPlan, "the op name");
            std::vector<TensorDesc> expected;
            if (!outputs.is_none()) {
              check(is_list(outputs), kPlan, "outputs must be a list of (dtype, shape) pairs");
              for (auto item : outputs) expected.push_back(desc_from_pair(item));
            }
            return p.add_step(op, slots_from(inputs), to_attrs(attrs, op), expected);
          },
          py::arg("op"), py::arg("inputs"), py::arg("attrs") = py::dict(), py::arg("outputs") = py::none(),
          R"doc(Append a call of a registered op and prepare its kernel (shapes are checked now).

Args:
    op: Op name (see op_names()).
    inputs: Slots, or None for an absent optional input.
    attrs: Attributes by name.
    outputs: Optionally the (dtype, shape) of each output as the caller predicts them; a
        mismatch with what the kernel infers is an error naming the step.

Returns:
    One new slot per output of the op (see desc() for their inferred dtypes and shapes).

Raises:
    InvalidRequestError: bad slots, shapes, dtypes or attributes (the message names the step and op).
    NotFoundError: no op of that name.
)doc")
      .def(
          "mark_output",
          [](Plan& p, const py::object& slot, const py::object& name) {
            p.mark_output(slot_from(slot, "an output slot"), str_from(name, kPlan, "an output name"));
          },
          py::arg("slot"), py::arg("name"),
           R"doc(Make a slot a named output of the plan.

A value produced by a step is written straight into the output array; an input or a constant
is copied.

Raises:
    InvalidRequestError: an unknown slot, a duplicate name, or the plan is finalized.
)doc")
      .def("finalize", &Plan::finalize, R"doc(Plan the memory (liveness, then greedy placement) and freeze the plan.

Raises:
    InvalidRequestError: no outputs, or already finalized.
)doc");
}

// run / run_profiled: any number of threads at once, the GIL released.
void bind_running(PlanClass& cls) {
  cls
      .def("run", &run, py::arg("inputs"), py::arg("threads") = py::int_(0),
           R"doc(Run the plan with the GIL released.

Args:
    inputs: A dict of name -> numpy array, or a list of arrays in input order. Dtypes and
        shapes must match the declared ones exactly.
    threads: Threads per kernel; 0 means the default (set_num_threads).

Returns:
    A dict of output name -> new numpy array.

Raises:
    InvalidRequestError: a missing or unknown input, a wrong dtype or shape, or the plan is not finalized.
)doc")
      .def("run_profiled", &run_profiled, py::arg("inputs"), py::arg("threads") = py::int_(0),
           R"doc(Run the plan like run(), timing every step.

Returns:
    (outputs, step_ns): the outputs dict and each step's wall time in nanoseconds.
)doc");
}

// Slots, steps, ports and the memory plan, for the Python face and tests.
void bind_inspection(PlanClass& cls) {
  cls
      .def("desc", [](const Plan& p, const py::object& slot) { return desc_tuple(p.value_desc(slot_from(slot, "slot"))); },
           py::arg("slot"), "The (dtype name, shape tuple) of a slot.")
      .def("kind", [](const Plan& p, const py::object& slot) { return kind_name(p.value_kind(slot_from(slot, "slot"))); },
           py::arg("slot"), "What a slot is: 'input', 'constant' or 'intermediate'.")
      .def("memory_plan", [](const Plan& p) {
            py::list out;
            for (const MemoryRegion& r : p.memory_plan()) {
              py::dict d;
              d["slot"] = r.value >= 0 ? py::object(py::int_(r.value)) : py::object(py::none());
              d["step"] = r.step;
              d["offset"] = r.offset;
              d["bytes"] = r.bytes;
              d["first"] = r.first;
              d["last"] = r.last;
              out.append(d);
            }
            return out;
          },
          R"doc(Where each arena value lives: dicts with slot (None for a step's workspace), step,
offset, bytes and its lifetime first..last (steps, inclusive). Empty before finalize().)doc")
      .def("release_idle_arenas", &Plan::release_idle_arenas,
           "Free the arenas no run is using (the next run allocates one again).")
      .def_property_readonly("finalized", &Plan::finalized)
      .def_property_readonly("num_steps", &Plan::num_steps)
      .def_property_readonly("num_values", &Plan::num_values)
      .def_property_readonly("arena_bytes", &Plan::arena_bytes, "Bytes of one arena (0 before finalize()).")
      .def_property_readonly("naive_bytes", &Plan::naive_bytes,
                             "Bytes without memory reuse: every intermediate its own buffer, plus the largest workspace.")
      .def_property_readonly("arena_count", &Plan::arena_count,
                             "Arenas alive: at most the peak number of concurrent runs.")
      .def_property_readonly("input_names", [](const Plan& p) {
        std::vector<std::string> names;
        for (size_t i = 0; i < p.num_inputs(); ++i) names.push_back(p.input_name(i));
        return names;
      })
      .def_property_readonly("output_names", [](const Plan& p) {
        std::vector<std::string> names;
        for (size_t i = 0; i < p.num_outputs(); ++i) names.push_back(p.output_name(i));
        return names;
      })
      .def_property_readonly("inputs", [](const Plan& p) { return ports(p, true); },
                             "(name, slot, dtype, shape) of each input, in order.")
      .def_property_readonly("outputs", [](const Plan& p) { return ports(p, false); },
                             "(name, slot, dtype, shape) of each output, in order.")
      .def_property_readonly("steps", [](const Plan& p) {
            py::list out;
            for (size_t s = 0; s < p.num_steps(); ++s)
              out.append(py::make_tuple(p.step_op(s), py::cast(p.step_inputs(s)), py::cast(p.step_outputs(s))));
            return out;
          },
          "(op, input slots, output slots) of each step; -1 marks an absent optional input.");
}

}  // namespace

void init_plan(py::module_& m) {
  bind_constant(m);
  PlanClass cls(m, "Plan", R"doc(An ordered list of prepared kernel calls over
numbered values (slots), run on a preallocated arena with the GIL released.

Build it with add_input / add_constant / add_step / mark_output, then finalize() once; after
that it is immutable and run() may be called from many threads at once.)doc");
  cls.def(py::init<>());
  bind_building(cls);
  bind_running(cls);
  bind_inspection(cls);
}

}  // namespace phi::py_bind
