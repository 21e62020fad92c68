// float32 GEMM with a fused epilogue, driven from the core's thread pool.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/epilogue.h"
#include "core/op_registry.h"
#include "core/threadpool.h"

namespace phi {

class PackedB;

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

// The gemm op on weights packed ahead of time (ops.pack_weights): inputs and attributes as for
// "gemm", with B's desc the packed op(B) (k x n, trans_b 0); run() never reads B's view.
std::unique_ptr<Kernel> make_gemm_packed(const std::vector<TensorDesc>& inputs, const Attrs& attrs,
                                         std::shared_ptr<const PackedB> packed);

}  // namespace phi
