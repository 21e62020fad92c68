// Fused multi-head attention: out = softmax(alpha * Q Kᵀ + mask) V per batch and head, with Q, K,
// V and the output in the layout a projection writes ([batch, seq, heads, head_dim]), so the head
// split and merge of an exported model (Reshape + Transpose, a copy each way) cost nothing.
//
// Per (batch, head) task: Kᵀ and V are packed once into panels of the GEMM micro-kernel (a few
// KiB: head_dim x seq and seq x head_dim), then query rows go through in blocks of the register
// tile's height: their scores against every key (micro-kernel, Q read in place), the softmax of
// those rows with the mask (in L1), and their product with V written straight into the output
// (micro-kernel again, with the narrow panel when a head is 32 wide). The scores never reach
// memory, where the unfused form writes and reads B x H x S x S floats twice.
#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "core/normalization.h"
#include "core/op_registry.h"
#include "core/packed_gemm.h"

namespace phi {

namespace {

int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

class AttentionKernel final : public Kernel {
 public:
  AttentionKernel(const std::vector<TensorDesc>& in, const Attrs& attrs) {
    const std::string op = "attention";
    const TensorDesc &q = in[0], &k = in[1], &v = in[2];
    expect_float(op, q, "q");
    expect_float(op, k, "k");
    expect_float(op, v, "v");
    expect_rank(op, q, 4, "q");
    expect_rank(op, k, 4, "k");
    expect_rank(op, v, 4, "v");
    b_ = q.shape[0];
    sq_ = q.shape[1];
    h_ = q.shape[2];
    d_ = q.shape[3];
    sk_ = k.shape[1];
    dv_ = v.shape[3];
    // k and v may share one batch entry or one head among all of q's (numpy broadcasting, as the
    // unfused products have it): multi-query attention has a single key/value head.
    auto fits = [](int64_t dim, int64_t of_q) { return dim == of_q || dim == 1; };
    PHI_CHECK(fits(k.shape[0], b_) && fits(k.shape[2], h_) && k.shape[3] == d_, op,
              "k must be (batch, keys, heads, head_dim) with batch " + std::to_string(b_) + " or 1, heads " +
                  std::to_string(h_) + " or 1 and head_dim " + std::to_string(d_) + " to match q " + shape_str(q.shape) +
                  ", got " + shape_str(k.shape));
    PHI_CHECK(fits(v.shape[0], b_) && v.shape[1] == sk_ && fits(v.shape[2], h_), op,
              "v must be (batch, keys, heads, *) with batch " + std::to_string(b_) + " or 1, " + std::to_string(sk_) +
                  " keys and heads " + std::to_string(h_) + " or 1 to match q and k, got " + shape_str(v.shape));
    kb_ = k.shape[0] == b_;
    kh_ = k.shape[2] == h_;
    vb_ = v.shape[0] == b_;
    vh_ = v.shape[2] == h_;
    hk_ = k.shape[2];
    hv_ = v.shape[2];
    alpha_ = attrs.get_f32(op, "alpha", 1.0f);
    PHI_CHECK(std::isfinite(alpha_), op, "alpha must be finite");
    if (in[3].present()) {
      const TensorDesc& mask = in[3];
      expect_float(op, mask, "mask");
      PHI_CHECK(mask.ndim() <= 4, op, "mask must have rank <= 4, got " + shape_str(mask.shape));
      // Element strides of the mask over (batch, heads, queries, keys), 0 where it broadcasts.
      const Shape full{b_, h_, sq_, sk_};
      int64_t stride = 1;
      for (int64_t d = mask.ndim() - 1, fd = 3; d >= 0; --d, --fd) {
        PHI_CHECK(mask.shape[d] == full[fd] || mask.shape[d] == 1, op,
                  "mask of shape " + shape_str(mask.shape) + " does not broadcast to the scores' shape " +
                      shape_str(full) + " (batch, heads, queries, keys)");
        if (mask.shape[d] != 1) mask_strides_[fd] = stride;
        stride *= mask.shape[d];
      }
    }
    outputs_ = {TensorDesc{DType::f32, {b_, sq_, h_, dv_}}};
  }

  void run(const TensorView* in, TensorView* out, void*, const ExecContext& ctx) const override {
    const float* q = in[0].ptr<const float>();
    const float* k = in[1].ptr<const float>();
    const float* v = in[2].ptr<const float>();
    const float* mask = in[3].present() ? in[3].ptr<const float>() : nullptr;
    float* o = out[0].ptr<float>();
    if (b_ == 0 || h_ == 0 || sq_ == 0 || dv_ == 0) return;
    if (sk_ == 0) {  // a sum over no keys, as the unfused products give
      std::fill(o, o + out[0].numel(), 0.0f);
      return;
    }
    const int mr = packed_tile().mr;
    const bool narrow = dv_ <= micro_nr(true);
    const int nr = micro_nr(false), nrv = micro_nr(narrow);
    const int64_t sk_pad = round_up(sk_, nr), dv_pad = round_up(dv_, nrv);
    // Floats of a task's scratch: Kᵀ panels, V panels, and the scores and probabilities of one
    // block of query rows.
    const int64_t kt_floats = std::max<int64_t>(d_, 1) * sk_pad, v_floats = sk_ * dv_pad;
    const int64_t s_floats = mr * sk_pad;
    const float scale = alpha_;

    const int64_t tasks = b_ * h_;
    // A task is S_q x S_k x (d + dv) x 2 FLOPs; small ones are not worth a helper thread.
    const double task_flops = 2.0 * sq_ * sk_ * (d_ + dv_);
    const int threads = static_cast<int>(std::clamp<double>(tasks * task_flops / 1e6, 1.0, ctx.resolved_threads()));
    ThreadPool::global().parallel_for(tasks, threads, [&](int64_t task) {
      thread_local std::vector<float> scratch;
      const size_t need = static_cast<size_t>(kt_floats + v_floats + 2 * s_floats);
      if (scratch.size() < need) scratch.assign(need, 0.0f);
      float* kt = scratch.data();
      float* vp = kt + kt_floats;
      float* s = vp + v_floats;
      float* p = s + s_floats;
      const int64_t bi = task / h_, hi = task % h_;
      const float* qh = q + (bi * sq_ * h_ + hi) * d_;  // query i at qh + i * h_ * d_
      const float* kh = k + ((kb_ ? bi : 0) * sk_ * hk_ + (kh_ ? hi : 0)) * d_;  // key j at kh + j * hk_ * d_
      const float* vh = v + ((vb_ ? bi : 0) * sk_ * hv_ + (vh_ ? hi : 0)) * dv_;
      float* oh = o + (bi * sq_ * h_ + hi) * dv_;
      // Kᵀ: op(B) = Kᵀ (d x keys) from K given keys x d; V: keys x dv as it is.
      for (int64_t j0 = 0; j0 < sk_pad; j0 += nr)
        pack_b_panel(kh, hk_ * d_, true, 0, d_, j0, std::min<int64_t>(nr, sk_ - j0), nr, kt + j0 * d_);
      for (int64_t c0 = 0; c0 < dv_pad; c0 += nrv)
        pack_b_panel(vh, hv_ * dv_, false, 0, sk_, c0, std::min<int64_t>(nrv, dv_ - c0), nrv, vp + c0 * sk_);
      const float* mask_bh = mask ? mask + bi * mask_strides_[0] + hi * mask_strides_[1] : nullptr;
      for (int64_t i0 = 0; i0 < sq_; i0 += mr) {
        const int rows = static_cast<int>(std::min<int64_t>(mr, sq_ - i0));
        // Scores of these rows against every key (padded keys score 0 and are never read).
        for (int64_t j0 = 0; j0 < sk_pad; j0 += nr)
          micro_tile(rows, d_, qh + i0 * h_ * d_, h_ * d_, kt + j0 * d_, nr, s + j0, sk_pad, nr, 1.0f, false);
        for (int r = 0; r < rows; ++r) {
          const float* mrow = nullptr;
          float addend = 0.0f;
          if (mask_bh) {
            const float* m = mask_bh + (i0 + r) * mask_strides_[2];
            if (mask_strides_[3]) mrow = m;  // the keys' stride is 1 when the mask has them
            else addend = *m;
          }
          softmax_row(s + r * sk_pad, mrow, addend, scale, p + r * sk_pad, sk_, false);
        }
        // Their outputs: P (rows x keys) V, written in place into the output's rows.
        for (int64_t c0 = 0; c0 < dv_; c0 += nrv)
          micro_tile(rows, sk_, p, sk_pad, vp + c0 * sk_, nrv, oh + i0 * h_ * dv_ + c0, h_ * dv_,
                     static_cast<int>(std::min<int64_t>(nrv, dv_ - c0)), 1.0f, narrow);
      }
    });
  }

 private:
  int64_t b_ = 0, sq_ = 0, sk_ = 0, h_ = 0, d_ = 0, dv_ = 0;
  int64_t hk_ = 0, hv_ = 0;                            // heads of k and v (h_ or 1)
  bool kb_ = true, kh_ = true, vb_ = true, vh_ = true;  // k's / v's batch and heads are q's (else 1)
  float alpha_ = 1.0f;
  int64_t mask_strides_[4] = {0, 0, 0, 0};
};

std::unique_ptr<Kernel> make_attention(const std::vector<TensorDesc>& in, const Attrs& attrs) {
  return std::make_unique<AttentionKernel>(in, attrs);
}

}  // namespace

PHI_REGISTER_OP("attention", 3, 4, make_attention);

}  // namespace phi
