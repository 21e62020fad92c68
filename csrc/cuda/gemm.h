// float32 GEMM on the GPU: cuBLAS for the product, then the fused epilogue kernel.
#pragma once

#include <cstddef>
#include <cstdint>

#include "cuda/kernels.h"

namespace phi::cuda {

// The element type of a and b: float32, or float16 / bfloat16 multiplied on the tensor cores with
// float32 accumulation (c and the epilogue stay float32 in every case).
enum class Operand : int { f32, f16, bf16 };

// Row-major operands, dense: a is m x k (k x m when trans_a), b is k x n (n x k when trans_b),
// c is m x n. All pointers are device pointers.
struct GemmArgs {
  int64_t m = 0, n = 0, k = 0;
  const void* a = nullptr;
  bool trans_a = false;
  const void* b = nullptr;
  bool trans_b = false;
  Operand operand = Operand::f32;
  float* c = nullptr;
  float alpha = 1.0f;
  // Let cuBLAS use TF32 tensor cores (10-bit mantissa inputs, ~3e-4 relative error) instead of
  // full float32 FMA.
  bool tf32 = false;
  // `batch` products of these shapes, the i-th reading a + i * stride_a and b + i * stride_b
  // (elements; 0 repeats one operand) and writing c + i * m * n. The epilogue then treats c as
  // one (batch * m) x n matrix, so a residual is dense over the whole batch.
  int64_t batch = 1;
  int64_t stride_a = 0;
  int64_t stride_b = 0;
  Epilogue epilogue;
  cudaStream_t stream = nullptr;
};

// Whether this build links cuBLAS; gemm_f32 throws UnsupportedError when it does not.
bool has_cublas();

// The workspace each stream that runs products holds (its cuBLAS handle's).
size_t blas_workspace_bytes();

// A stream is going away: its cuBLAS handle and workspace go back to a free list for the next.
void release_stream(cudaStream_t stream) noexcept;

// c = epilogue(alpha * op(a) @ op(b)), queued on args.stream.
void gemm_f32(const GemmArgs& args);

}  // namespace phi::cuda
