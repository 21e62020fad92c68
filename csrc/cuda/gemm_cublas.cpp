// GEMM through cuBLAS. cuBLAS is column-major; a row-major matrix X is the column-major X^T, so
// the row-major C = op(A) op(B) is computed as the column-major C^T = op(B)^T op(A)^T: the same
// call with A and B swapped and m and n swapped, no data moved.
#include <cublas_v2.h>

#include <climits>
#include <map>
#include <mutex>
#include <utility>
#include <vector>

#include "cuda/gemm.h"
#include "cuda/runtime.h"

namespace phi::cuda {

namespace {

ErrorCode code_of(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_NOT_INITIALIZED:
    case CUBLAS_STATUS_ARCH_MISMATCH:
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return ErrorCode::unsupported;
    case CUBLAS_STATUS_ALLOC_FAILED:
      return ErrorCode::resource;
    default:
      return ErrorCode::internal;
  }
}

void check_cublas(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS) {
    fail_cuda(code_of(status), "gemm",
              std::string(what) + ": " + cublasGetStatusName(status) + ": " + cublasGetStatusString(status));
  }
}

// A cuBLAS handle with a workspace of its own. A handle holds mutable state (stream, math mode)
// and streams that run at once must not share a workspace, so each stream in use has one.
struct Blas {
  cublasHandle_t handle = nullptr;
  void* workspace = nullptr;
};

// Handles by (device, stream), created on a stream's first product (outside graph capture: a
// plan's first run is eager, and creating one allocates) and returned to a per-device free list
// when the stream is destroyed (release_stream), so a new stream reuses one instead of leaking
// it: nothing is freed while the process runs, which could synchronize the device under another
// thread's capture. Calls that set a handle's state and enqueue the product hold the mutex;
// enqueueing is asynchronous, so it is held for microseconds. Handles are never destroyed:
// destroying them from a static destructor at exit races the CUDA runtime's own teardown.
std::mutex handles_mutex;
std::map<std::pair<int, cudaStream_t>, Blas> handles;
std::map<int, std::vector<Blas>> spare;

// 32 MiB, the workspace cuBLAS recommends on Hopper.
constexpr size_t kWorkspaceBytes = size_t{32} << 20;

Blas& blas_for(int device, cudaStream_t stream) {
  auto key = std::make_pair(device, stream);
  auto it = handles.find(key);
  if (it != handles.end()) return it->second;
  Blas b;
  auto& free_list = spare[device];
  if (!free_list.empty()) {
    b = free_list.back();
    free_list.pop_back();
  } else {
    check_cublas(cublasCreate(&b.handle), "cublasCreate");
    check_cuda(cudaMalloc(&b.workspace, kWorkspaceBytes), "gemm");
  }
  return handles.emplace(key, b).first->second;
}

void check_fits_int(int64_t value, const char* name) {
  if (value > INT_MAX) {
    fail_cuda(ErrorCode::unsupported, "gemm",
              std::string(name) + " = " + std::to_string(value) + " exceeds cuBLAS's 32-bit dimensions");
  }
}

}  // namespace

bool has_cublas() { return true; }

size_t blas_workspace_bytes() { return kWorkspaceBytes; }

void release_stream(cudaStream_t stream) noexcept {
  std::lock_guard<std::mutex> lock(handles_mutex);
  for (auto it = handles.begin(); it != handles.end();) {
    if (it->first.second == stream) {
      spare[it->first.first].push_back(it->second);
      it = handles.erase(it);
    } else {
      ++it;
    }
  }
}

void gemm_f32(const GemmArgs& g) {
  if (g.m <= 0 || g.n <= 0 || g.batch <= 0) return;
  check_fits_int(g.m, "m");
  check_fits_int(g.n, "n");
  check_fits_int(g.k, "k");
  check_fits_int(g.batch, "batch");
  if (g.k == 0) {
    // An empty sum: C = 0 (cuBLAS would leave C untouched, scaled by beta), then the epilogue.
    fill_bytes(g.c, 0, static_cast<size_t>(g.batch * g.m * g.n) * sizeof(float), g.stream);
  } else {
    const int m = static_cast<int>(g.m), n = static_cast<int>(g.n), k = static_cast<int>(g.k);
    // Column-major views: B stored k x n (or n x k) row-major is n x k (or k x n) column-major.
    const cublasOperation_t op_b = g.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t op_a = g.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    const int ldb = g.trans_b ? k : n;
    const int lda = g.trans_a ? m : k;
    const float beta = 0.0f;
    int device = 0;
    check_cuda(cudaGetDevice(&device), "gemm");
    std::lock_guard<std::mutex> lock(handles_mutex);
    Blas& blas = blas_for(device, g.stream);
    cublasHandle_t handle = blas.handle;
    // cublasSetStream resets the handle's workspace to cuBLAS's own pool: set ours after it.
    check_cublas(cublasSetStream(handle, g.stream), "cublasSetStream");
    check_cublas(cublasSetWorkspace(handle, blas.workspace, kWorkspaceBytes), "cublasSetWorkspace");
    check_cublas(cublasSetMathMode(handle, g.tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH),
                 "cublasSetMathMode");
    const auto* a = static_cast<const float*>(g.a);
    const auto* b = static_cast<const float*>(g.b);
    if (g.operand != Operand::f32) {
      // Half-precision operands on the tensor cores, float32 accumulation and output.
      const cudaDataType t = g.operand == Operand::f16 ? CUDA_R_16F : CUDA_R_16BF;
      if (g.batch == 1) {
        check_cublas(cublasGemmEx(handle, op_b, op_a, n, m, k, &g.alpha, g.b, t, ldb, g.a, t, lda, &beta, g.c,
                                  CUDA_R_32F, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                     "cublasGemmEx");
      } else {
        check_cublas(cublasGemmStridedBatchedEx(handle, op_b, op_a, n, m, k, &g.alpha, g.b, t, ldb, g.stride_b, g.a,
                                                t, lda, g.stride_a, &beta, g.c, CUDA_R_32F, n, g.m * g.n,
                                                static_cast<int>(g.batch), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                     "cublasGemmStridedBatchedEx");
      }
    } else if (g.batch == 1) {
      check_cublas(cublasSgemm(handle, op_b, op_a, n, m, k, &g.alpha, b, ldb, a, lda, &beta, g.c, n), "cublasSgemm");
    } else {
      check_cublas(cublasSgemmStridedBatched(handle, op_b, op_a, n, m, k, &g.alpha, b, ldb, g.stride_b, a, lda,
                                             g.stride_a, &beta, g.c, n, g.m * g.n, static_cast<int>(g.batch)),
                   "cublasSgemmStridedBatched");
    }
  }
  check_cuda(launch_gemm_epilogue(g.c, g.batch * g.m, g.n, g.epilogue, g.stream), "gemm");
}

}  // namespace phi::cuda
