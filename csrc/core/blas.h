// The BLAS seam: OpenBLAS (scipy-openblas32 build, symbols prefixed scipy_), always called
// single-threaded; parallelism comes from the core's thread pool (threadpool.h).
#pragma once

#include <cstdint>
#include <string>

namespace phi {

// Row-major C = alpha * op(A) * op(B) + beta * C, on the calling thread only.
void sgemm_rowmajor(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                    int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

// Row-major y = alpha * op(A) x + beta * y for an m x n matrix A, on the calling thread only.
void sgemv_rowmajor(bool trans_a, int64_t m, int64_t n, float alpha, const float* a, int64_t lda, const float* x,
                    int64_t incx, float beta, float* y, int64_t incy);

std::string blas_config();

}  // namespace phi
