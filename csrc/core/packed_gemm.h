// Weights-stationary float32 GEMM (first written for few rows, inference at batch 1..~64; it now
// beats BLAS at every size measured when B is packed ahead): B is packed once into
// column panels that a register-tiled SIMD micro-kernel streams contiguously, and the epilogue
// (alpha, bias, residual, activation) is applied to the register tile before its one store to C.
//
// Why: for a few rows the product is dominated by reading B. BLAS re-packs B on every call (as
// much memory traffic as the product itself when M <= 32) and its kernels are tuned for large M;
// here B is packed when a plan is built (or by ops.pack_weights) and read once per call.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "core/gemm.h"

namespace phi {

// The register tile of the kernel this CPU runs, chosen once from cpu_features(): rows x columns
// of C held in vector registers (AVX-512: 6 x 64, AVX2+FMA: 6 x 16, portable: 6 x 8).
struct PackedTile {
  int mr = 0;
  int nr = 0;
  const char* isa = "";
};
const PackedTile& packed_tile();

// op(B) (k x n) in panels of nr() columns: panel p holds columns [p*nr, p*nr + nr) as k rows of nr
// floats (k-major, zero-padded past n), on a 64-byte boundary, so the micro-kernel reads each panel
// as one contiguous stream.
class PackedB {
 public:
  // Packs op(B): B is k x n (n x k when trans_b, the layout of a linear layer's weight), row-major
  // with row stride ldb, on up to `threads` threads of the core's pool. With `bf16` the panels
  // hold bfloat16 (rounded to nearest even): half the bytes, 8 significant bits; products still
  // accumulate in float32.
  PackedB(const float* b, int64_t ldb, bool trans_b, int64_t k, int64_t n, int threads, bool bf16 = false);

  int64_t k() const { return k_; }
  int64_t n() const { return n_; }
  int nr() const { return nr_; }
  int64_t panels() const { return (n_ + nr_ - 1) / nr_; }
  bool bf16() const { return bf16_; }
  const float* panel(int64_t p) const { return data_.get() + p * k_ * nr_; }
  const uint16_t* panel_bf16(int64_t p) const { return reinterpret_cast<const uint16_t*>(data_.get()) + p * k_ * nr_; }
  size_t nbytes() const { return static_cast<size_t>(panels() * k_ * nr_) * (bf16_ ? 2 : sizeof(float)); }

 private:
  struct AlignedFree {
    void operator()(float* p) const;
  };
  std::unique_ptr<float, AlignedFree> data_;
  int64_t k_ = 0, n_ = 0;
  int nr_ = 0;
  bool bf16_ = false;
};

// The packed form of a plan constant, shared by every kernel packing the same bytes the same way
// (the plans of one model's shape buckets share their constants, so they share the packing too).
// `b` must stay alive and unchanged while any holder of the result is: true of a plan's constants,
// which outlive its kernels.
std::shared_ptr<const PackedB> shared_packed_b(const float* b, int64_t ldb, bool trans_b, int64_t k, int64_t n,
                                               bool bf16 = false);

// A weights dtype named by a caller ("float32" or "bfloat16"): true for bfloat16; anything else
// raises InvalidRequestError naming `op`.
bool bf16_weights(const std::string& op, const std::string& dtype);

// Whether the packed kernel beats BLAS for a product of m rows (measured; see packed_gemm.cpp):
// with B packed ahead of time (plan constants, PackedWeights), and with B as given per call.
bool packed_gemm_prepacked_wins(int64_t m, bool fused);
bool packed_gemm_unpacked_wins(int64_t m, bool trans_b);
// B as given per call, packed whole first (a PackedB per call), for a product this large.
bool packed_gemm_per_call_wins(int64_t m, int64_t n, int64_t k);

// C = epilogue(alpha * op(A) op(B)) on up to `threads` threads (N panels split between them, the
// caller taking part). op(B) is `packed` when given (g.b and g.trans_b are then ignored), else
// g.b read in place (row-major k x n) or packed panel by panel as it is used (trans_b).
void packed_gemm_f32(const GemmArgs& g, const PackedB* packed, int threads);

// ---- the micro-kernel, for kernels built on it (attention) ----------------------------------------

// Panel width of the kernel micro_tile runs: the tile's nr, or with `narrow` a panel of half that
// on AVX-512 (32 columns, for products as narrow as an attention head), the same elsewhere.
int micro_nr(bool narrow);

// C[rows x cols] = alpha * A B for rows <= packed_tile().mr: A row-major (row i at a + i * lda, kc
// floats used), B kc rows of micro_nr(narrow) floats from b, row stride bs, read in full (zero
// past `cols`, or at least readable), C row stride ldc, only `cols` columns written.
// With `row_alpha`, row i of C is also scaled by row_alpha[i].
void micro_tile(int rows, int64_t kc, const float* a, int64_t lda, const float* b, int64_t bs, float* c, int64_t ldc,
                int cols, float alpha, bool narrow, const float* row_alpha = nullptr);

// Columns [j0, j0 + cols) of rows [k0, k0 + kc) of op(B) into kc rows of nr floats, zero-padded
// (op(B) = B, k x n row-major with row stride ldb, or with trans_b its transpose: B given n x k).
void pack_b_panel(const float* b, int64_t ldb, bool trans_b, int64_t k0, int64_t kc, int64_t j0, int64_t cols, int nr,
                  float* dst);

}  // namespace phi
