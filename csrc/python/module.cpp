// phi_engine._core: the one compiled module. Each area binds itself in its own file.
#include <pybind11/pybind11.h>

namespace py = pybind11;

namespace phi::py_bind {
void init_errors(py::module_& m);
void init_runtime(py::module_& m);
void init_ops(py::module_& m);
void init_plan(py::module_& m);
void init_packed(py::module_& m);
void init_scheduler(py::module_& m);
void init_json(py::module_& m);
}  // namespace phi::py_bind

PYBIND11_MODULE(_core, m) {
  m.doc() = "phi_engine native core: kernels, thread pool, plan executor and scheduler (private; use phi_engine).";
#ifdef PHI_ENGINE_VERSION
  m.attr("__version__") = PHI_ENGINE_VERSION;
#endif
  phi::py_bind::init_errors(m);
  phi::py_bind::init_runtime(m);
  phi::py_bind::init_ops(m);
  phi::py_bind::init_plan(m);
  phi::py_bind::init_packed(m);
  phi::py_bind::init_scheduler(m);
  phi::py_bind::init_json(m);
}
