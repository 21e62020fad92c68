#include "core/gemm.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "core/blas.h"
#include "core/op_registry.h"
#include "core/packed_gemm.h"

namespace phi {

namespace {

constexpr double kFlopsPerThread = 2e6;    // below this a helper thread costs more than it saves
// A product of few rows runs at memory speed (one row: a matrix-vector product that reads all of
// B for 2 FLOPs a weight), so B's bytes count as work too: 1x384x1536 has too few FLOPs for a
// second thread but reads 2.4 MB, which two cores stream in half the time.
constexpr double kBBytesPerThread = 512.0 * 1024;
constexpr int64_t kEpilogueTile = 1 << 16;  // floats: a 256 KiB tile stays in L2 for the epilogue

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

struct Grid {
  int64_t gm = 1, gn = 1;  // tiles along m and n
  int64_t tm = 0, tn = 0;  // tile sizes
};

// Splitting n re-packs A once per extra tile (m*k), splitting m re-packs B (k*n): cut the
// dimension whose re-packing is cheaper, then cut further until epilogue tiles fit in cache.
Grid plan_grid(const GemmArgs& g, int threads) {
  Grid grid;
  if (threads > 1) {
    if (g.m < g.n) grid.gn = threads; else grid.gm = threads;
  }
  if (!g.epilogue.empty()) {
    while (ceil_div(g.m, grid.gm) * ceil_div(g.n, grid.gn) > kEpilogueTile) {
      if (ceil_div(g.m, grid.gm) >= ceil_div(g.n, grid.gn) * 2 || ceil_div(g.n, grid.gn) <= 64) grid.gm *= 2;
      else grid.gn *= 2;
      if (ceil_div(g.m, grid.gm) < 16 && ceil_div(g.n, grid.gn) <= 64) break;
    }
  }
  grid.gm = std::clamp<int64_t>(grid.gm, 1, std::max<int64_t>(1, g.m));
  grid.tm = ceil_div(g.m, grid.gm);
  grid.gm = ceil_div(g.m, grid.tm);
  // n tiles are multiples of 16 floats so every tile starts on a 64-byte boundary of a row.
  grid.tn = std::max<int64_t>(16, ceil_div(ceil_div(g.n, grid.gn), 16) * 16);
  grid.tn = std::min(grid.tn, std::max<int64_t>(g.n, 1));
  grid.gn = ceil_div(g.n, grid.tn);
  return grid;
}

void run_tile(const GemmArgs& g, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
  const float* a = g.trans_a ? g.a + i0 : g.a + i0 * g.lda;
  const float* b = g.trans_b ? g.b + j0 * g.ldb : g.b + j0;
  float* c = g.c + i0 * g.ldc + j0;
  if (g.k == 0) {
    for (int64_t i = 0; i < i1 - i0; ++i) std::memset(c + i * g.ldc, 0, sizeof(float) * (j1 - j0));
  } else if (i1 - i0 == 1) {
    // One row (batch-1 inference): a matrix-vector product, which BLAS does at memory speed,
    // where its GEMM path would pack B for a single row. c = op(B)^T a_row.
    int64_t inc_a = g.trans_a ? g.lda : 1;
    if (g.trans_b) sgemv_rowmajor(false, j1 - j0, g.k, g.alpha, b, g.ldb, a, inc_a, 0.0f, c, 1);
    else sgemv_rowmajor(true, g.k, j1 - j0, g.alpha, b, g.ldb, a, inc_a, 0.0f, c, 1);
  } else {
    sgemm_rowmajor(g.trans_a, g.trans_b, i1 - i0, j1 - j0, g.k, g.alpha, a, g.lda, b, g.ldb, 0.0f, c, g.ldc);
  }
  apply_epilogue(c, i1 - i0, j1 - j0, g.ldc, g.epilogue, i0, j0);
}

}  // namespace

void gemm_f32(const GemmArgs& g, int threads) {
  if (g.m == 0 || g.n == 0) return;
  double flops = 2.0 * g.m * g.n * std::max<int64_t>(g.k, 1);
  double work = std::max(flops / kFlopsPerThread, 4.0 * g.k * g.n / kBBytesPerThread);
  int t = static_cast<int>(std::clamp<double>(work, 1.0, std::max(1, threads)));
  Grid grid = plan_grid(g, t);
  int64_t tiles = grid.gm * grid.gn;
  if (tiles == 1) return run_tile(g, 0, g.m, 0, g.n);
  ThreadPool::global().parallel_for(tiles, t, [&](int64_t idx) {
    int64_t bi = idx / grid.gn, bj = idx % grid.gn;
    int64_t i0 = bi * grid.tm, j0 = bj * grid.tn;
    run_tile(g, i0, std::min(g.m, i0 + grid.tm), j0, std::min(g.n, j0 + grid.tn));
  });
}

// ---- ops ------------------------------------------------------------------------------------

namespace {

// Resolves an optional bias input to a per-column vector (copying only for a broadcast scalar).
struct BiasSpec {
  bool present = false;
  bool scalar = false;
};

BiasSpec check_bias(const std::string& op, const TensorDesc& bias, int64_t n) {
  BiasSpec spec;
  if (!bias.present()) return spec;
  expect_float(op, bias, "bias");
  spec.present = true;
  int64_t count = bias.numel();
  bool row_vector = bias.ndim() <= 1 || (bias.ndim() == 2 && bias.shape[0] == 1);
  PHI_CHECK(row_vector && (count == n || count == 1), op,
        "bias must have shape (" + std::to_string(n) + ",) or be a scalar, got " + shape_str(bias.shape));
  spec.scalar = count == 1 && n != 1;
  return spec;
}

// Shared run-time epilogue setup for gemm and matmul: bias, residual, activation.
struct FusedEpilogue {
  Epilogue base;
  BiasSpec bias;
  int64_t n = 0;

  Epilogue bind(const TensorView& bias_view, const TensorView* residual, int64_t ldr, std::vector<float>& scratch) const {
    Epilogue ep = base;
    if (bias.present) {
      if (bias.scalar) {
        scratch.assign(n, *bias_view.ptr<const float>());
        ep.bias = scratch.data();
      } else {
        ep.bias = bias_view.ptr<const float>();
      }
    }
    if (residual && residual->present()) {
      ep.residual = residual->ptr<const float>();
      ep.ldr = ldr;
    }
    return ep;
  }
};

// Which GEMM a gemm or matmul kernel runs: BLAS tiles, or the packed kernel (packed_gemm.h) on B
// as given per call or on B packed once (a plan constant, or weights packed by the caller).
class PathChoice {
 public:
  // Prepared shapes: rows (all of A's rows the product covers) and k; eligible: B has no batch.
  // fused: the product has an epilogue (bias, residual or activation).
  void prepare(int64_t rows, int64_t k, bool trans_b, bool eligible, bool fused) {
    rows_ = rows;
    k_ = k;
    eligible_ = eligible;
    fused_ = fused;
    if (eligible && packed_gemm_unpacked_wins(rows, trans_b)) path_ = Path::unpacked;
  }
  // B is a plan constant (k x n, or n x k when trans_b, row stride ldb): pack it where that wins,
  // and always when it is to be stored as bfloat16 (the `weights` attribute).
  void bind(const TensorView& b, int64_t ldb, bool trans_b, int64_t n) {
    if (b.data == nullptr || !eligible_ || (!bf16_ && !packed_gemm_prepacked_wins(rows_, fused_))) return;
    use(shared_packed_b(b.ptr<const float>(), ldb, trans_b, k_, n, bf16_));
  }
  // The `weights` attribute: "float32" (default) or "bfloat16", for constant weights only.
  void parse_weights(const std::string& op, const Attrs& attrs) {
    bf16_ = bf16_weights(op, attrs.get_string(op, "weights", "float32"));
  }
  void use(std::shared_ptr<const PackedB> packed) {
    packed_ = std::move(packed);
    path_ = Path::packed;
  }
  void run(const GemmArgs& g, int threads) const {
    if (path_ == Path::blas && packed_gemm_per_call_wins(g.m, g.n, g.k)) {
      PackedB packed(g.b, g.ldb, g.trans_b, g.k, g.n, threads);
      return packed_gemm_f32(g, &packed, threads);
    }
    if (path_ == Path::blas) return gemm_f32(g, threads);
    packed_gemm_f32(g, packed_.get(), threads);
  }

 private:
  enum class Path : uint8_t { blas, unpacked, packed };
  Path path_ = Path::blas;
  int64_t rows_ = 0, k_ = 0;
  bool eligible_ = false, fused_ = false, bf16_ = false;
  std::shared_ptr<const PackedB> packed_;
};

// ONNX Gemm semantics with our fused extras: Y = act(alpha * A' B' + bias + residual).
class GemmKernel final : public Kernel {
 public:
  GemmKernel(const std::vector<TensorDesc>& in, const Attrs& attrs) {
    const std::string op = "gemm";
    const TensorDesc& a = in[0];
    const TensorDesc& b = in[1];
    expect_float(op, a, "A");
    expect_float(op, b, "B");
    expect_rank(op, a, 2, "A");
    expect_rank(op, b, 2, "B");
    ta_ = attrs.get_int(op, "trans_a", 0) != 0;
    tb_ = attrs.get_int(op, "trans_b", 0) != 0;
    alpha_ = attrs.get_f32(op, "alpha", 1.0f);
    m_ = ta_ ? a.shape[1] : a.shape[0];
    k_ = ta_ ? a.shape[0] : a.shape[1];
    int64_t kb = tb_ ? b.shape[1] : b.shape[0];
    n_ = tb_ ? b.shape[0] : b.shape[1];
    PHI_CHECK(k_ == kb, op,
          "inner dimensions differ: A" + std::string(ta_ ? "ᵀ" : "") + " is " + std::to_string(m_) + "x" + std::to_string(k_) +
              ", B" + std::string(tb_ ? "ᵀ" : "") + " is " + std::to_string(kb) + "x" + std::to_string(n_));
    ep_.n = n_;
    ep_.bias = check_bias(op, in[2], n_);
    if (in[3].present()) {
      expect_float(op, in[3], "residual");
      PHI_CHECK((in[3].shape == Shape{m_, n_}), op,
            "residual must have the output shape " + shape_str({m_, n_}) + ", got " + shape_str(in[3].shape));
    }
    parse_activation(op, attrs, ep_.base);
    outputs_ = {TensorDesc{DType::f32, {m_, n_}}};
    path_.prepare(m_, k_, tb_, true, in[2].present() || in[3].present() || ep_.base.act != math::Act::none);
    path_.parse_weights(op, attrs);
  }

  void bind_constants(const TensorView* in) override { path_.bind(in[1], in[1].shape()[1], tb_, n_); }
  void use_packed(std::shared_ptr<const PackedB> packed) { path_.use(std::move(packed)); }

  void run(const TensorView* in, TensorView* out, void*, const ExecContext& ctx) const override {
    GemmArgs g;
    g.m = m_; g.n = n_; g.k = k_;
    g.a = in[0].ptr<const float>(); g.lda = in[0].shape()[1]; g.trans_a = ta_;
    g.b = in[1].ptr<const float>(); g.ldb = in[1].shape()[1]; g.trans_b = tb_;
    g.c = out[0].ptr<float>(); g.ldc = n_;
    g.alpha = alpha_;
    std::vector<float> scratch;
    g.epilogue = ep_.bind(in[2], &in[3], n_, scratch);
    path_.run(g, ctx.resolved_threads());
  }

 private:
  bool ta_ = false, tb_ = false;
  float alpha_ = 1.0f;
  int64_t m_ = 0, n_ = 0, k_ = 0;
  FusedEpilogue ep_;
  PathChoice path_;
};

// numpy.matmul semantics (broadcast batch dimensions, 1-D operands promoted and squeezed), with
// the same fused bias / residual / activation as gemm.
class MatMulKernel final : public Kernel {
 public:
  MatMulKernel(const std::vector<TensorDesc>& in, const Attrs& attrs) {
    const std::string op = "matmul";
    TensorDesc a = in[0], b = in[1];
    expect_float(op, a, "A");
    expect_float(op, b, "B");
    PHI_CHECK(a.ndim() >= 1 && b.ndim() >= 1, op, "operands must have rank >= 1");
    tb_ = attrs.get_int(op, "trans_b", 0) != 0;
    alpha_ = attrs.get_f32(op, "alpha", 1.0f);
    bool a_vec = a.ndim() == 1, b_vec = b.ndim() == 1;
    PHI_CHECK(!(b_vec && tb_), op, "trans_b needs B of rank >= 2");
    if (a_vec) a.shape.insert(a.shape.begin(), 1);
    if (b_vec) b.shape.push_back(1);
    m_ = a.shape[a.ndim() - 2];
    k_ = a.shape[a.ndim() - 1];
    int64_t kb = tb_ ? b.shape[b.ndim() - 1] : b.shape[b.ndim() - 2];
    n_ = tb_ ? b.shape[b.ndim() - 2] : b.shape[b.ndim() - 1];
    PHI_CHECK(k_ == kb, op, "inner dimensions differ: A is " + shape_str(in[0].shape) + ", B is " + shape_str(in[1].shape) +
                            (tb_ ? " (transposed)" : ""));
    // Broadcast batch dimensions (numpy rules, right-aligned).
    Shape ba(a.shape.begin(), a.shape.end() - 2), bb(b.shape.begin(), b.shape.end() - 2);
    size_t nb = std::max(ba.size(), bb.size());
    ba.insert(ba.begin(), nb - ba.size(), 1);
    bb.insert(bb.begin(), nb - bb.size(), 1);
    Shape batch(nb);
    for (size_t i = 0; i < nb; ++i) {
      PHI_CHECK(ba[i] == bb[i] || ba[i] == 1 || bb[i] == 1, op,
            "batch dimensions do not broadcast: " + shape_str(in[0].shape) + " and " + shape_str(in[1].shape));
      batch[i] = ba[i] == 1 ? bb[i] : ba[i];  // a 0 broadcast against 1 stays 0
    }
    batch_a_ = ba;
    batch_b_ = bb;
    batch_ = batch;
    Shape out = batch;
    if (!a_vec) out.push_back(m_);
    if (!b_vec) out.push_back(n_);
    // When B has no real batch, A's batch rows fold into M: one big GEMM instead of many small.
    fold_ = numel(bb) == 1 && (numel(ba) == numel(batch));
    ep_.n = n_;
    ep_.bias = check_bias(op, in[2], n_);
    if (in[3].present()) {
      expect_float(op, in[3], "residual");
      PHI_CHECK(in[3].shape == out, op, "residual must have the output shape " + shape_str(out) + ", got " + shape_str(in[3].shape));
    }
    parse_activation(op, attrs, ep_.base);
    outputs_ = {TensorDesc{DType::f32, out}};
    int64_t batches = numel(batch_);
    path_.prepare(m_ * batches, k_, tb_, fold_ || batches == 1,
                  in[2].present() || in[3].present() || ep_.base.act != math::Act::none);
    path_.parse_weights(op, attrs);
  }

  void bind_constants(const TensorView* in) override { path_.bind(in[1], tb_ ? k_ : n_, tb_, n_); }

  void run(const TensorView* in, TensorView* out, void*, const ExecContext& ctx) const override {
    const float* a = in[0].ptr<const float>();
    const float* b = in[1].ptr<const float>();
    float* c = out[0].ptr<float>();
    std::vector<float> scratch;
    Epilogue ep = ep_.bind(in[2], &in[3], n_, scratch);
    int threads = ctx.resolved_threads();
    int64_t batches = numel(batch_);
    auto args = [&](int64_t rows) {
      GemmArgs g;
      g.m = rows; g.n = n_; g.k = k_;
      g.lda = k_; g.ldb = tb_ ? k_ : n_; g.trans_b = tb_; g.ldc = n_;
      g.alpha = alpha_;
      return g;
    };
    if (fold_ || batches == 1) {
      GemmArgs g = args(m_ * batches);
      g.a = a; g.b = b; g.c = c; g.epilogue = ep;
      return path_.run(g, threads);
    }
    // Many small products (attention heads): one thread per batch item when there are enough.
    int inner = batches >= threads ? 1 : threads;
    ThreadPool::global().parallel_for(batches, threads, [&](int64_t idx) {
      int64_t ia = 0, ib = 0, rem = idx, sa = 1, sb = 1;
      for (int64_t d = static_cast<int64_t>(batch_.size()) - 1; d >= 0; --d) {
        int64_t coord = rem % batch_[d];
        rem /= batch_[d];
        ia += (batch_a_[d] == 1 ? 0 : coord) * sa;
        ib += (batch_b_[d] == 1 ? 0 : coord) * sb;
        sa *= batch_a_[d];
        sb *= batch_b_[d];
      }
      GemmArgs g = args(m_);
      g.a = a + ia * m_ * k_;
      g.b = b + ib * k_ * n_;
      g.c = c + idx * m_ * n_;
      g.epilogue = ep;
      if (ep.residual) g.epilogue.residual = ep.residual + idx * m_ * n_;
      gemm_f32(g, inner);
    });
  }

 private:
  bool tb_ = false, fold_ = false;
  float alpha_ = 1.0f;
  int64_t m_ = 0, n_ = 0, k_ = 0;
  Shape batch_, batch_a_, batch_b_;
  FusedEpilogue ep_;
  PathChoice path_;
};

std::unique_ptr<Kernel> make_gemm(const std::vector<TensorDesc>& in, const Attrs& attrs) {
  return std::make_unique<GemmKernel>(in, attrs);
}
std::unique_ptr<Kernel> make_matmul(const std::vector<TensorDesc>& in, const Attrs& attrs) {
  return std::make_unique<MatMulKernel>(in, attrs);
}

}  // namespace

std::unique_ptr<Kernel> make_gemm_packed(const std::vector<TensorDesc>& inputs, const Attrs& attrs,
                                         std::shared_ptr<const PackedB> packed) {
  check(packed != nullptr, "gemm", "packed weights are null");
  check(attrs.get_int("gemm", "trans_b", 0) == 0, "gemm", "packed weights hold their orientation: trans_b must be False");
  auto kernel = make_kernel("gemm", inputs, attrs);
  static_cast<GemmKernel&>(*kernel).use_packed(std::move(packed));
  return kernel;
}

PHI_REGISTER_OP("gemm", 2, 4, make_gemm);
PHI_REGISTER_OP("matmul", 2, 4, make_matmul);

}  // namespace phi
