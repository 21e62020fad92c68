// Fused multi-head attention: out = softmax(alpha * Q Kᵀ + mask) V per batch and head, with Q, K,
// V and the output in the layout a projection writes ([batch, seq, heads, head_dim]), so the head
// split and merge of an exported model (Reshape + Transpose, a copy each way) cost nothing.
//
// Per (batch, head) task: Kᵀ and V are packed into panels of the GEMM micro-kernel (a few KiB:
// head_dim x seq and seq x head_dim) as far as the query blocks need them, then query rows go
// through in blocks of the register tile's height: their scores against the keys (micro-kernel,
// Q read in place), the softmax numerators of those rows with the mask (in L1, in place), and
// their product with V, each row scaled by its 1 / sum inside the tile, written straight into the
// output (micro-kernel again, with the narrow panel when a head is 32 wide). The scores never
// reach memory, where the unfused form writes and reads B x H x S x S floats twice.
//
// Keys a mask drops (trailing keys of a padded batch entry, the future keys of a causal block of
// queries) are skipped when their probabilities are provably exactly 0 whatever their scores: see
// "Skipping dropped keys" below. The answer is the one computing them gives (their terms are
// exact zeros), in about half the work for a batch padded to twice its mean length.
#include <algorithm>
#include <atomic>
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

// ---- Skipping dropped keys ----------------------------------------------------------------------
//
// Key j's probability for query i is exp(alpha q_i.k_j + m_ij - M_i), M_i the row's maximum, and
// the softmax makes it exactly 0 when the exponent is below -80. A block of query rows skips the
// keys past `end` (those its mask rows drop, kDrop or lower, after the last one any row keeps)
// when that holds for each of them whatever the scores. With i* the row's largest kept mask value,
//   M_i >= alpha q_i.k_i* + m_ii* >= m_ii* - |alpha| |q_i| |k_i*|   and
//   alpha q_i.k_j + m_ij <= m_ij + |alpha| |q_i| |k_j|             (Cauchy-Schwarz),
// so it holds when, for each row,
//   max_{j >= end} m_ij + |alpha| max_i |q_i| (max_{j >= end} |k_j| + |k_i*|) + 88 < m_ii*
// (88 rather than 80, and a relative margin on the bound, for the rounding of the scores). A
// value that is not finite in q_i, k_j or v_j (0 times it is NaN, which the product would spread)
// fails the test, so NaN and infinities reach the output as they would with every key computed;
// otherwise the skipped terms are exact zeros and the answer is the same.

// Mask values at or below this mark keys that may be skipped (exporters write -1e4, the float's
// lowest value or -inf for a dropped key).
constexpr float kDrop = -1e4f;
constexpr float kInf = std::numeric_limits<float>::infinity();

// Largest Euclidean norm of `rows` rows of n floats (row stride ld); +inf when a value is not
// finite or a sum of squares overflows.
PHI_HOT float max_row_norm(const float* x, int64_t rows, int64_t ld, int64_t n) {
  float most = 0.0f;
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * ld;
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < n; ++i) s += xr[i] * xr[i];
    most = std::max(most, std::isfinite(s) ? s : kInf);
  }
  return std::sqrt(most);
}

// |k| for a key, or +inf when k or its value row v holds a value that is not finite (0 times it
// is NaN, which computing the key would spread to the output).
PHI_HOT float key_bound(const float* k, int64_t d, const float* v, int64_t dv) {
  float s = 0.0f, z = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < d; ++i) s += k[i] * k[i];
#pragma omp simd reduction(+ : z)
  for (int64_t i = 0; i < dv; ++i) z += v[i] * 0.0f;
  return std::isfinite(s) && z == 0.0f ? std::sqrt(s) : kInf;
}

// One query's mask row over n keys: one past the last key it keeps (a value above kDrop, or NaN),
// the largest kept value and its first key, the largest dropped value past `end`.
// (no member initialisers: a block's array of them is not written before use)
struct RowCut {
  int64_t end;
  float kept;
  int64_t star;
  float dropped;
};

PHI_HOT RowCut row_cut(const float* m, int64_t n) {
  RowCut c{n, -kInf, -1, -kInf};
  int64_t end = n;
  while (end > 0 && m[end - 1] <= kDrop) --end;
  c.end = end;
  if (end == 0 || end == n) return c;
  float kept = -kInf, dropped = -kInf;
#pragma omp simd reduction(max : kept)
  for (int64_t j = 0; j < end; ++j) kept = m[j] > kept ? m[j] : kept;  // NaN never wins
#pragma omp simd reduction(max : dropped)
  for (int64_t j = end; j < n; ++j) dropped = m[j] > dropped ? m[j] : dropped;
  c.kept = kept;
  c.dropped = dropped;
  for (int64_t j = 0; j < end; ++j)
    if (m[j] == kept) {
      c.star = j;
      break;
    }
  return c;
}

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
    // Floats of a task's scratch: Kᵀ panels, V panels, and the scores (then the softmax
    // numerators, in place) of one block of query rows.
    const int64_t kt_floats = std::max<int64_t>(d_, 1) * sk_pad, v_floats = sk_ * dv_pad;
    const int64_t s_floats = mr * sk_pad;
    const float scale = alpha_;

    const int64_t tasks = b_ * h_;
    // A task is S_q x S_k x (d + dv) x 2 FLOPs; small ones are not worth a helper thread.
    const double task_flops = 2.0 * sq_ * sk_ * (d_ + dv_);
    const int threads = static_cast<int>(std::clamp<double>(tasks * task_flops / 1e6, 1.0, ctx.resolved_threads()));
    // Tells one run's per-thread caches from another's.
    static std::atomic<uint64_t> runs{0};
    const uint64_t run_id = runs.fetch_add(1, std::memory_order_relaxed) + 1;
    auto head_task = [&](int64_t task) {
      thread_local std::vector<float> scratch;
      const size_t need = static_cast<size_t>(kt_floats + v_floats + s_floats);
      if (scratch.size() < need) scratch.assign(need, 0.0f);
      float* kt = scratch.data();
      float* vp = kt + kt_floats;
      float* s = vp + v_floats;
      const int64_t bi = task / h_, hi = task % h_;
      const float* qh = q + (bi * sq_ * h_ + hi) * d_;  // query i at qh + i * h_ * d_
      const float* kh = k + ((kb_ ? bi : 0) * sk_ * hk_ + (kh_ ? hi : 0)) * d_;  // key j at kh + j * hk_ * d_
      const float* vh = v + ((vb_ ? bi : 0) * sk_ * hv_ + (vh_ ? hi : 0)) * dv_;
      float* oh = o + (bi * sq_ * h_ + hi) * dv_;
      const float* mask_bh = mask ? mask + bi * mask_strides_[0] + hi * mask_strides_[1] : nullptr;
      // Kᵀ and V are packed as far as the row blocks need them, `packed` keys so far (a block
      // may need fewer than all: see "Skipping dropped keys" above).
      int64_t packed = 0;
      auto pack_to = [&](int64_t keys) {
        if (keys <= packed) return;
        // Kᵀ: op(B) = Kᵀ (d x keys) from K given keys x d, whole panels from the one holding
        // `packed`; V: keys x dv as it is, the new rows only.
        for (int64_t j0 = packed / nr * nr; j0 < keys; j0 += nr)
          pack_b_panel(kh, hk_ * d_, true, 0, d_, j0, std::min<int64_t>(nr, keys - j0), nr, kt + j0 * d_);
        for (int64_t c0 = 0; c0 < dv_pad; c0 += nrv)
          pack_b_panel(vh, hv_ * dv_, false, packed, keys - packed, c0, std::min<int64_t>(nrv, dv_ - c0), nrv,
                       vp + c0 * sk_ + packed * nrv);
        packed = keys;
      };
      const float* entry_bounds = nullptr;  // the batch entry's bounds for this head, when shared
      // The keys' bounds past `bound_lo`: suffix maxima of key_bound, extended downwards on demand.
      thread_local std::vector<float> bounds;
      const bool cuts = mask_bh && mask_strides_[3];  // a mask value per key: some may be cut
      if (cuts) {
        bounds.resize(static_cast<size_t>(sk_ + 1));
        bounds[sk_] = 0.0f;
      }
      int64_t bound_lo = sk_;
      auto skip_bound = [&](int64_t end) {
        if (entry_bounds) return entry_bounds[end];  // (set below: end is then its `lo`)
        // The rows are scattered (a head's slice of each key's row): their loads overlap.
        for (int64_t j = end; j < bound_lo; ++j) {
          for (int64_t i = 0; i < d_; i += 16) __builtin_prefetch(kh + j * hk_ * d_ + i);
          for (int64_t i = 0; i < dv_; i += 16) __builtin_prefetch(vh + j * hv_ * dv_ + i);
        }
        for (; bound_lo > end; --bound_lo)
          bounds[bound_lo - 1] = std::max(bounds[bound_lo], key_bound(kh + (bound_lo - 1) * hk_ * d_, d_,
                                                                      vh + (bound_lo - 1) * hv_ * dv_, dv_));
        return bounds[end];
      };
      // A block's rows' cuts and |k_i*| (rows <= mr <= 8, the micro-kernel's row tiles); when
      // every query shares one mask row, the first entry, once for the task.
      RowCut cut[8];
      float star[8];
      const bool shared = !mask_strides_[2];
      if (cuts && shared) {
        cut[0] = row_cut(mask_bh, sk_);
        star[0] = cut[0].star >= 0 ? max_row_norm(kh + cut[0].star * hk_ * d_, 1, 0, d_) : kInf;
        const int64_t lo = cut[0].end;
        if (!mask_strides_[1] && lo > 0 && lo < sk_) {
          // One mask row for every head and query of the batch entry: the skipped keys' bounds
          // for all heads at once, from whole rows of K and V (contiguous, where one head's
          // slice is a scattered 128 bytes or so), kept for the entry's heads this thread runs.
          thread_local struct {
            uint64_t run = 0;
            int64_t entry = -1;
            std::vector<float> bounds;  // per head: sk + 1 suffix maxima, valid from lo
          } entry;
          const int64_t stride = sk_ + 1;
          if (entry.run != run_id || entry.entry != bi) {
            entry.bounds.resize(static_cast<size_t>(h_ * stride));
            const float* krows = k + (kb_ ? bi : 0) * sk_ * hk_ * d_;
            const float* vrows = v + (vb_ ? bi : 0) * sk_ * hv_ * dv_;
            for (int64_t j = lo; j < sk_; ++j)
              for (int64_t hh = 0; hh < h_; ++hh)
                entry.bounds[hh * stride + j] = key_bound(krows + (j * hk_ + (kh_ ? hh : 0)) * d_, d_,
                                                          vrows + (j * hv_ + (vh_ ? hh : 0)) * dv_, dv_);
            for (int64_t hh = 0; hh < h_; ++hh) {
              float* b = entry.bounds.data() + hh * stride;
              b[sk_] = 0.0f;
              for (int64_t j = sk_ - 1; j >= lo; --j) b[j] = std::max(b[j], b[j + 1]);
            }
            entry.run = run_id;
            entry.entry = bi;
          }
          entry_bounds = entry.bounds.data() + hi * stride;
        }
      }
      for (int64_t i0 = 0; i0 < sq_; i0 += mr) {
        const int rows = static_cast<int>(std::min<int64_t>(mr, sq_ - i0));
        const float* qi = qh + i0 * h_ * d_;
        // The rows' outputs are written at the block's end: their lines (not in cache: the
        // output is B x S x H x dv floats) are fetched now, while the scores are computed.
        for (int r = 0; r < rows; ++r)
          for (int64_t c = 0; c < dv_; c += 16) __builtin_prefetch(oh + (i0 + r) * h_ * dv_ + c, 1);
        // The next block's queries likewise (scattered rows: the prefetchers miss them).
        for (int64_t r = i0 + mr; r < std::min<int64_t>(sq_, i0 + 2 * mr); ++r)
          for (int64_t c = 0; c < d_; c += 16) __builtin_prefetch(qh + r * h_ * d_ + c);
        // Scores of these rows against keys [j0, j1) (padded keys score 0 and are never read).
        auto scores = [&](int64_t j0, int64_t j1) {
          pack_to(j1);
          for (; j0 < j1; j0 += nr) micro_tile(rows, d_, qi, h_ * d_, kt + j0 * d_, nr, s + j0, sk_pad, nr, 1.0f, false);
        };
        int64_t nk = sk_;
        if (cuts) {
          const int distinct = shared ? 1 : rows;
          int64_t end = shared ? cut[0].end : 0;
          for (int r = 0; r < distinct && !shared; ++r) {
            cut[r] = row_cut(mask_bh + (i0 + r) * mask_strides_[2], sk_);
            star[r] = cut[r].star >= 0 ? max_row_norm(kh + cut[r].star * hk_ * d_, 1, 0, d_) : kInf;
            end = std::max(end, cut[r].end);
          }
          if (end > 0 && end < sk_) {
            // The kept keys' scores first: the test reads q's rows, which they bring into cache.
            scores(0, end);
            const float scale_q = std::fabs(scale) * max_row_norm(qi, rows, h_ * d_, d_), kskip = skip_bound(end);
            bool skip = true;
            for (int r = 0; r < distinct && skip; ++r) {
              // (a NaN or infinity anywhere on the left fails the test)
              const float bound = scale_q * (kskip + star[r]) * 1.001f + 88.0f;
              skip = cut[r].star >= 0 && cut[r].dropped + bound < cut[r].kept;
            }
            if (skip) nk = end;
            else scores(end / nr * nr, sk_);  // the panel holding `end` again, with its keys packed
          } else {
            scores(0, sk_);
          }
        } else {
          scores(0, sk_);
        }
        // The softmax of these rows but its normalisation, in place (L1), then their outputs:
        // E (rows x keys) V, each row scaled by its 1 / sum, written straight into the output.
        const float* mrows[8];
        float addends[8], inv[8];
        for (int r = 0; r < rows; ++r) {
          const float* m = mask_bh ? mask_bh + (i0 + r) * mask_strides_[2] : nullptr;
          mrows[r] = m;  // the keys' stride is 1 when the mask has them
          addends[r] = m && !mask_strides_[3] ? *m : 0.0f;
        }
        softmax_numerators(rows, s, sk_pad, cuts ? mrows : nullptr, addends, scale, s, sk_pad, nk, inv);
        float* out_rows = oh + i0 * h_ * dv_;
        for (int64_t c0 = 0; c0 < dv_; c0 += nrv)
          micro_tile(rows, nk, s, sk_pad, vp + c0 * sk_, nrv, out_rows + c0, h_ * dv_,
                     static_cast<int>(std::min<int64_t>(nrv, dv_ - c0)), 1.0f, narrow, inv);
      }
    };
    // A thread takes whole batch entries when there are enough to share out: their heads share
    // the entry's mask and key bounds (computed once per entry and thread), and a head of the
    // next entry is not interleaved with another thread's.
    if (b_ >= 4 * threads) {
      ThreadPool::global().parallel_for(b_, threads, [&](int64_t bi) {
        for (int64_t hi = 0; hi < h_; ++hi) head_task(bi * h_ + hi);
      });
    } else {
      ThreadPool::global().parallel_for(tasks, threads, head_task);
    }
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
