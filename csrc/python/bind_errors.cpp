// The one place where native error codes become phi_engine.errors exceptions.
#include <pybind11/pybind11.h>

#include <new>
#include <stdexcept>
#include <string>

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
    } catch (const py::error_already_set&) {
      throw;  // a Python exception passing through: pybind11 restores it as it was
    } catch (const py::builtin_exception&) {
      throw;  // pybind11's own (cast_error, ...): its translator maps them
    } catch (const Error& e) {
      raise(error_class(e.code()), e.what());
    } catch (const std::bad_alloc&) {
      raise("ResourceError", "[alloc] out of memory");
    } catch (const std::length_error& e) {
      // A container asked for more elements than it can ever hold: a size no memory can back.
      raise("ResourceError", ("[alloc] " + std::string(e.what())).c_str());
    } catch (const std::exception& e) {
      // Nothing else should escape the core; if something does, it is still a phi error.
      raise("PhiEngineError", ("[internal] " + std::string(e.what())).c_str());
    }
  });
}

}  // namespace phi::py_bind
