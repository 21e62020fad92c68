// float32 GEMM with a fused epilogue, driven from the core's thread pool.
#pragma once

#include <cstdint>

#include "core/epilogue.h"
#include "core/threadpool.h"

namespace phi {

struct GemmArgs {
  int64_t m = 0, n = 0, k = 0;
  const float* a = nullptr;  // m x k (k x m when trans_a), row stride lda
  int64_t lda = 0;
  bool trans_a = false;
  const float* b = nullptr;  // k x n (n x k when trans_b), row stride ldb
  int64_t ldb = 0;
  bool trans_b = false;
  float* c = nullptr;  // m x n, row stride ldc
  int64_t ldc = 0;
  float alpha = 1.0f;
  Epilogue epilogue;
};

// C = epilogue(alpha * op(A) op(B)) on up to `threads` threads. Work is cut into tiles: each tile
// is one single-threaded BLAS call followed by the epilogue while the tile is hot in cache.
void gemm_f32(const GemmArgs& args, int threads);

}  // namespace phi
