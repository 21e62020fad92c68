// The GEMM of a build that found no cuBLAS (cmake/cuda.cmake compiles this file instead of
// gemm_cublas.cpp): every other CUDA kernel still works, and gemm says what is missing.
#include "cuda/gemm.h"
#include "cuda/runtime.h"

namespace phi::cuda {

bool has_cublas() { return false; }

size_t blas_workspace_bytes() { return 0; }

void release_stream(cudaStream_t) noexcept {}

void gemm_f32(const GemmArgs&) {
  fail_cuda(ErrorCode::unsupported, "gemm",
            "this build of phi_engine._core_cuda has no cuBLAS (none was found when it was built: "
            "pip install nvidia-cublas, or use a CUDA toolkit that has it, and rebuild)");
}

}  // namespace phi::cuda
