// Weights packed once for the packed GEMM kernel (ops.pack_weights), and gemm calls on them.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <memory>

#include "convert.h"
#include "core/gemm.h"
#include "core/packed_gemm.h"
#include "core/plan.h"

namespace py = pybind11;

namespace phi::py_bind {

namespace {

const std::string kPack = "pack_weights";

std::shared_ptr<PackedB> pack_weights(const py::object& weights, const py::object& trans_obj, const py::object& threads,
                                      const std::string& dtype) {
  const bool bf16 = bf16_weights(kPack, dtype);
  Input w = to_input(weights, kPack, "weights");
  check(w.view.present(), kPack, "weights cannot be None");
  expect_float(kPack, w.view.desc, "weights");
  expect_rank(kPack, w.view.desc, 2, "weights");
  const bool trans_b = py::bool_(trans_obj);
  const int t = threads_from(threads, kPack);
  const Shape& s = w.view.shape();
  const int64_t k = trans_b ? s[1] : s[0], n = trans_b ? s[0] : s[1];
  py::gil_scoped_release release;
  return std::make_shared<PackedB>(w.view.ptr<const float>(), s[1], trans_b, k, n, t > 0 ? t : default_threads(),
                                   bf16);
}

py::array gemm_packed(const py::object& a, const std::shared_ptr<PackedB>& packed, const py::object& bias,
                      const py::object& residual, const py::object& attrs, const py::object& threads) {
  const std::string op = "gemm";
  check(packed != nullptr, op, "b must be PackedWeights");
  Input in_a = to_input(a, op, "A"), in_bias = to_input(bias, op, "bias"), in_res = to_input(residual, op, "residual");
  ExecContext ctx;
  ctx.threads = threads_from(threads, op);
  TensorDesc b_desc{DType::f32, {packed->k(), packed->n()}};
  auto kernel = make_gemm_packed({in_a.view.desc, b_desc, in_bias.view.desc, in_res.view.desc}, to_attrs(attrs, op), packed);
  std::vector<TensorView> views{in_a.view, TensorView{nullptr, b_desc}, in_bias.view, in_res.view};
  py::array result = allocate(kernel->outputs()[0], op);
  TensorView out = view_of(result, kernel->outputs()[0]);
  {
    py::gil_scoped_release release;
    kernel->run(views.data(), &out, nullptr, ctx);  // gemm needs no workspace
  }
  return result;
}


// The plan kernels' own packing of a constant weight (Kernel::bind_constants finds it in the
// shared cache, keyed by the constant's address and layout), done ahead of the first run.
std::shared_ptr<PackedB> prepack_constant(const std::shared_ptr<Constant>& c, bool trans_b, const std::string& dtype) {
  const bool bf16 = bf16_weights(kPack, dtype);
  const TensorDesc& d = c->desc();
  PHI_CHECK(d.dtype == DType::f32 && d.ndim() == 2, kPack, "prepack_constant needs a 2-D float32 constant");
  const int64_t rows = d.shape[0], cols = d.shape[1];
  const int64_t k = trans_b ? cols : rows, n = trans_b ? rows : cols;
  std::shared_ptr<const PackedB> packed;
  {
    py::gil_scoped_release release;
    packed = shared_packed_b(static_cast<const float*>(c->data()), cols, trans_b, k, n, bf16);
  }
  return std::const_pointer_cast<PackedB>(packed);
}

}  // namespace

void init_packed(py::module_& m) {
  py::class_<PackedB, std::shared_ptr<PackedB>>(m, "PackedWeights", R"doc(A weight matrix packed for the packed GEMM kernel.

Made by pack_weights(); immutable, and safe to share between threads.
)doc")
      .def_property_readonly("k", &PackedB::k, "Rows of op(B): the inner dimension of the product.")
      .def_property_readonly("n", &PackedB::n, "Columns of op(B): the output's columns.")
      .def_property_readonly("nbytes", &PackedB::nbytes, "Bytes of packed storage (panels zero-padded).")
      .def_property_readonly(
          "dtype", [](const PackedB& p) { return std::string(p.bf16() ? "bfloat16" : "float32"); },
          "Element type of the packed storage: 'float32' or 'bfloat16'.");
  m.def("pack_weights", &pack_weights, py::arg("weights"), py::arg("trans_b") = false, py::arg("threads") = py::int_(0),
        py::arg("dtype") = "float32",
        R"doc(Pack a float32 weight matrix once for repeated gemm calls.

Args:
    weights: (K, N) float32, or (N, K) when trans_b.
    trans_b: weights hold op(B) transposed (a linear layer's (out, in) layout).
    threads: Threads to pack on; 0 means the default.
    dtype: Storage of the packed copy: 'float32', or 'bfloat16' (rounded to nearest even; half
        the bytes; products still accumulate in float32).

Returns:
    PackedWeights for op(B) = weights (or weights.T), K x N.

Raises:
    InvalidRequestError: not a 2-D float32 array, or a bad thread count.
)doc");
  m.def("prepack_constant", &prepack_constant, py::arg("constant"), py::arg("trans_b") = false,
        py::arg("dtype") = "float32",
        R"doc(Pack a plan constant (2-D float32) the way plan kernels that multiply by it will.

The result is shared with those kernels (same storage), so a model can pack its weights when it
is compiled instead of during its first run; keep it alive as long as the constant.

Args:
    constant: A Constant holding op(B) (K x N), or its transpose when trans_b.
    trans_b: The constant holds op(B) transposed (a linear layer's (out, in) layout).
    dtype: 'float32', or 'bfloat16' for kernels with weights='bfloat16'.

Returns:
    PackedWeights.

Raises:
    InvalidRequestError: not a 2-D float32 constant.
)doc");
  m.def("gemm_packed", &gemm_packed, py::arg("a"), py::arg("packed"), py::arg("bias") = py::none(),
        py::arg("residual") = py::none(), py::arg("attrs") = py::dict(), py::arg("threads") = py::int_(0),
        R"doc(The gemm op with B given as PackedWeights.

Args:
    a: (M, K) float32 ((K, M) with the trans_a attribute).
    packed: PackedWeights of op(B), K x N.
    bias: (N,) or a scalar, or None.
    residual: (M, N), or None.
    attrs: gemm's attributes (activation, alpha, trans_a, clip_min, clip_max); trans_b must be 0.
    threads: Threads to use; 0 means the default.

Returns:
    The (M, N) float32 result.

Raises:
    InvalidRequestError: shapes, dtypes or attributes the gemm op refuses, or trans_b set.
)doc");
}

}  // namespace phi::py_bind
