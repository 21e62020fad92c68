// The one place where native error codes become phi_engine.errors exceptions.
#include <pybind11/pybind11.h>

#include <new>

#include "core/common.h"

namespace py = pybind11;

namespace phi::py_bind {

static const char* error_class(ErrorCode code) {
  switch (code) {
    case ErrorCode::invalid_argument: return "InvalidRequestError";
    case ErrorCode::unsupported: return "UnsupportedError";
    case ErrorCode::not_found: return "NotFoundError";
    case ErrorCode::resource: return "ResourceError";
    case ErrorCode::internal: return "PhiEngineError";
  }
  return "PhiEngineError";
}

static void raise(const char* cls, const char* message) {
  py::object errors = py::module_::import("phi_engine.errors");
  PyErr_SetString(errors.attr(cls).ptr(), message);
}

void init_errors(py::module_& m) {
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Error& e) {
      raise(error_class(e.code()), e.what());
    } catch (const std::bad_alloc&) {
      raise("ResourceError", "[alloc] out of memory");
    }
  });
}

}  // namespace phi::py_bind
