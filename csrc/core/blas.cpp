#include "core/blas.h"

#include <climits>

#include <cblas.h>

#include "core/common.h"

namespace phi {

namespace {
// OpenBLAS keeps its own pthread pool; we never want it (two pools alternating on the same cores
// halve throughput), so its thread count is pinned to 1. Checked before every call, because
// threadpoolctl (which scikit-learn and others call) resets every BLAS in the process, ours too,
// and each tile would then start OpenBLAS threads of its own on top of our pool.
void ensure_single_threaded() {
  if (scipy_openblas_get_num_threads() != 1) scipy_openblas_set_num_threads(1);
}

int blas_int(int64_t v) {
  if (v > INT_MAX) throw Error(ErrorCode::unsupported, "gemm", "dimension " + std::to_string(v) + " exceeds the BLAS 32-bit index range");
  return static_cast<int>(v);
}
}  // namespace

void sgemm_rowmajor(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                    int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  ensure_single_threaded();
  scipy_cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
                    blas_int(m), blas_int(n), blas_int(k), alpha, a, blas_int(lda), b, blas_int(ldb), beta, c,
                    blas_int(ldc));
}

void sgemv_rowmajor(bool trans_a, int64_t m, int64_t n, float alpha, const float* a, int64_t lda, const float* x,
                    int64_t incx, float beta, float* y, int64_t incy) {
  ensure_single_threaded();
  scipy_cblas_sgemv(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, blas_int(m), blas_int(n), alpha, a,
                    blas_int(lda), x, blas_int(incx), beta, y, blas_int(incy));
}

std::string blas_config() {
  ensure_single_threaded();
  return std::string(scipy_openblas_get_config()) + " (core: " + scipy_openblas_get_corename() + ")";
}

}  // namespace phi
