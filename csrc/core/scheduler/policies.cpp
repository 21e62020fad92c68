// The policies. phi-optimized is DESIGN.md's Φ(a); the others are the baselines it is measured
// against, each as its authors describe it:
//   fifo               Triton's dynamic batcher: arrival order, max batch, preferred sizes, max queue
//                      delay; no deadlines.
//   priority           strict priority levels, arrival order within a level; no deadlines.
//   edf                earliest deadline first; late requests still run.
//   clockwork          EDF that drops requests it can no longer serve in time and sizes each batch
//                      as the longest EDF prefix meeting every member's deadline (Clockwork, OSDI '20).
//   quantum-optimized  Clipper's AIMD (NSDI '17): arrival order, the batch cap grows by a step while
//                      batches meet their deadlines and backs off multiplicatively when one does not.
//                      The quantum is the batching slice, nothing quantum-physical.
//   latency            the smallest batches: one request at a time, earliest deadline first.
//   throughput         the largest batches: waits until a batch is full or the oldest request has
//                      waited the window (max_queue_delay, or one full batch's latency).
#include "core/scheduler/policies.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <numeric>

#include "core/common.h"
#include "core/scheduler/core.h"

namespace phi::sched {

namespace {

constexpr double kBacklogBatches = 1.5;  // phi-optimized: a queue this many full batches long is a burst

// Takes queue indices from `order` while the batch has room (count and cost), stopping at the first
// that does not fit so the batch stays a prefix of the order.
void take_fitting(const Core& core, const std::vector<int>& order, size_t limit, std::vector<int>& batch) {
  const auto& q = core.queue();
  double cost = 0;
  for (int i : order) {
    if (batch.size() >= limit) break;
    if (cost + q[i].cost > core.max_batch_cost()) break;
    cost += q[i].cost;
    batch.push_back(i);
  }
}

// The queue's first indices in the order `before` defines, at most `k` of them.
template <class Before>
void top_k(const Core& core, size_t k, std::vector<int>& order, Before before) {
  order.resize(core.queue().size());
  std::iota(order.begin(), order.end(), 0);
  k = std::min(k, order.size());
  std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(k), order.end(), before);
  order.resize(k);
}

// How many queue-front requests fit in one batch.
size_t front_fit(const Core& core) {
  const auto& q = core.queue();
  double cost = 0;
  size_t k = 0;
  while (k < q.size() && k < static_cast<size_t>(core.max_batch()) && cost + q[k].cost <= core.max_batch_cost())
    cost += q[k++].cost;
  return k;
}

void take_front(size_t k, std::vector<int>& batch) {
  for (size_t i = 0; i < k; ++i) batch.push_back(static_cast<int>(i));
}

// ln(1 + x) for x >= 0 to about 1e-9 (the ranking is kept in float, good to 1e-7), branch-free so
// the ranking loop vectorizes: 1 + x = m·2^e with m in [√½, √2), and ln m = 2·atanh(t),
// t = (m − 1)/(m + 1), |t| < 0.172, by its series (error < 2·t¹¹/11 < 1e-9). The exponent is read
// as a double by planting its bits in the mantissa of 2^52, which needs no int-to-float convert.
PHI_ALWAYS_INLINE double ln1p(double x) {
  const double y = 1 + x;
  uint64_t bits;
  std::memcpy(&bits, &y, sizeof bits);
  const uint64_t exp_bits = 0x4330000000000000ULL | (bits >> 52);
  double e;
  std::memcpy(&e, &exp_bits, sizeof e);
  e -= 4503599627370496.0 + 1023.0;
  const uint64_t m_bits = (bits & 0x000fffffffffffffULL) | 0x3ff0000000000000ULL;
  double m;
  std::memcpy(&m, &m_bits, sizeof m);
  const bool high = m > 1.4142135623730951;
  m = high ? m * 0.5 : m;
  e = high ? e + 1 : e;
  const double t = (m - 1) / (m + 1), t2 = t * t;
  const double ln_m = 2 * t * (1 + t2 * (1. / 3 + t2 * (1. / 5 + t2 * (1. / 7 + t2 / 9))));
  return e * 0.6931471805599453 + ln_m;
}

// ln Φ without the minimum-share lift, for every queued request (DESIGN.md):
//   ln w_c + ln ω_t − γ ln p   +   θ·min(1, (g + L̂(p))/SLO)   +   ln(1 + g/G)
// Compiled per ISA (PHI_HOT): the loop is most of a decision's time with a long queue.
PHI_HOT void rank_scores(size_t n, const double* PHI_RESTRICT arrival, const double* PHI_RESTRICT inv_slo,
                         const double* PHI_RESTRICT ln_static, const double* PHI_RESTRICT planned, double now,
                         double theta, double inv_g, float* PHI_RESTRICT out) {
  for (size_t i = 0; i < n; ++i) {
    const double age = now - arrival[i];
    const double u = std::min(1.0, (age + planned[i]) * inv_slo[i]);
    out[i] = static_cast<float>(ln_static[i] + theta * u + ln1p(age * inv_g));
  }
}

// Sorts keys by their upper 32 bits (ln Φ, order-preserving): LSD radix sort, 8 bits a pass,
// skipping a pass whose digit is the same for every key (close scores share their top bytes). No
// comparison branches to mispredict, unlike std::sort on a few hundred keys. Stable: equal scores
// keep the order they had.
void radix_sort_high32(uint64_t* keys, size_t n, std::vector<uint64_t>& scratch) {
  if (n < 64) {  // the passes' 256-entry histograms cost more than a small sort saves
    std::sort(keys, keys + n);
    return;
  }
  if (scratch.size() < n) scratch.resize(n);
  uint64_t* src = keys;
  uint64_t* dst = scratch.data();
  for (int shift = 32; shift < 64; shift += 8) {
    uint32_t count[256] = {};
    for (size_t i = 0; i < n; ++i) ++count[(src[i] >> shift) & 0xff];
    if (count[(src[0] >> shift) & 0xff] == n) continue;  // one digit value: nothing to order
    uint32_t sum = 0;
    for (uint32_t& c : count) {
      const uint32_t here = c;
      c = sum;
      sum += here;
    }
    for (size_t i = 0; i < n; ++i) dst[count[(src[i] >> shift) & 0xff]++] = src[i];
    std::swap(src, dst);
  }
  if (src != keys) std::copy(src, src + n, keys);
}

// How many of score[0, n) are at least `t`: branch-free, so it vectorizes (compiled per ISA).
PHI_HOT size_t count_at_least(const float* PHI_RESTRICT score, size_t n, float t) {
  uint32_t c = 0;
  for (size_t i = 0; i < n; ++i) c += score[i] >= t;
  return c;
}

class PhiPolicy final : public Policy {
 public:
  bool sheds() const override { return true; }
  bool admits_by_deadline() const override { return true; }
  bool needs_arrival_order() const override { return false; }  // it ranks every request itself

  double decide(const Core& core, double now, std::vector<int>& batch) override {
    const Config& c = core.config();
    const auto& col = core.columns();
    const size_t n = core.queued();
    starving_.assign(core.num_classes(), 0);
    for (int k = 0; k < core.num_classes() && k < static_cast<int>(c.min_share.size()); ++k)
      starving_[k] = c.min_share[k] > 0 && core.served_share(k) < c.min_share[k];
    // col.planned: each request's planned latency, computed by the core for this dispatch.
    if (score_.size() < n) score_.resize(n);
    rank_scores(n, col.arrival.data(), col.inv_slo.data(), col.ln_static.data(), col.planned.data(), now, c.theta,
                1.0 / c.aging, score_.data());
    // A class below its minimum share goes first: the ranking is only ever raised, by a constant
    // far above any ln Φ, so order inside the class is still Φ's.
    if (std::find(starving_.begin(), starving_.end(), 1) != starving_.end())
      for (size_t i = 0; i < n; ++i) score_[i] += starving_[col.cls[i]] ? 1e4f : 0.0f;
    // O(n) selection of the top K = 4B, then the order of only as many as the fill reads.
    top_ = std::min(n, static_cast<size_t>(4) * core.max_batch());
    const size_t m = select_candidates(n, top_);
    const auto first = key_.begin(), kth = first + static_cast<std::ptrdiff_t>(top_);
    if (top_ < m) std::nth_element(first, kth, first + static_cast<std::ptrdiff_t>(m));
    // The fill mostly stops within the first B; the rest is sorted only if it reads on.
    sorted_ = std::min(top_, static_cast<size_t>(core.max_batch()));
    const auto sorted_end = first + static_cast<std::ptrdiff_t>(sorted_);
    if (sorted_ < top_) std::nth_element(first, sorted_end, kth);
    radix_sort_high32(key_.data(), sorted_, radix_);
    fill(core, now, batch);
    return kInf;
  }

 private:
  // A candidate as one integer that sorts ascending in the order the fill reads: ln Φ descending
  // (its float bits made order-preserving, then inverted, in the upper 32 bits), its queue index in
  // the lower 32. One integer compare instead of a pair and a lambda makes selection about twice as
  // fast, and the upper half is what the radix sort orders by.
  static PHI_ALWAYS_INLINE uint64_t key_of(float score, size_t index) {
    uint32_t u;
    std::memcpy(&u, &score, sizeof u);
    u ^= (u >> 31) ? 0xffffffffu : 0x80000000u;  // ascending as unsigned, like the floats
    return (static_cast<uint64_t>(~u) << 32) | static_cast<uint32_t>(index);
  }
  static int index_of(uint64_t key) { return static_cast<int>(key & 0xffffffffu); }

  // Writes to key_ the keys of a superset of the k best of score_[0, n), at most about k + k/8 of
  // them unless scores tie, and returns how many. The threshold is found by bisecting the scores'
  // range with branch-free counting passes (vectorized: some 60 ns each over a thousand scores),
  // not by comparison-based selection, whose mispredicted branches cost more than the counting.
  size_t select_candidates(size_t n, size_t k) {
    if (key_.size() < n + 1) key_.resize(n + 1);
    float threshold = -std::numeric_limits<float>::infinity();
    if (k < n) {
      float lo = score_[0], hi = score_[0];
      for (size_t i = 1; i < n; ++i) {
        lo = std::min(lo, score_[i]);
        hi = std::max(hi, score_[i]);
      }
      // Invariant: count(>= lo) >= k; count(>= hi') < k for hi' just above hi.
      const size_t enough = k + k / 8;
      for (int step = 0; step < 40 && lo < hi; ++step) {
        const float mid = lo + (hi - lo) * 0.5f;
        if (!(mid > lo && mid < hi)) break;  // the floats between them are exhausted
        const size_t c = count_at_least(score_.data(), n, mid);
        if (c < k) {
          hi = mid;
        } else {
          lo = mid;
          if (c <= enough) break;
        }
      }
      threshold = lo;
    }
    return compress(n, threshold);
  }

  size_t compress(size_t n, float threshold) {
    uint64_t* out = key_.data();
    const float* score = score_.data();
    size_t kept = 0;
    for (size_t i = 0; i < n; ++i) {
      out[kept] = key_of(score[i], i);
      kept += score[i] >= threshold;
    }
    return kept;
  }

  // The candidate the fill reads k-th, sorting the rest of the K best the first time it is needed.
  int candidate(size_t k) {
    if (k >= sorted_) {
      radix_sort_high32(key_.data() + sorted_, top_ - sorted_, radix_);
      sorted_ = top_;
    }
    return index_of(key_[k]);
  }

  // Φ-ordered feasible fill, done twice, keeping the batch that serves more value per second
  // (Σ w_c·ω_t·p^−γ over its members, divided by its planned latency: Smith's rule, batch by batch):
  //  - as DESIGN.md states it: each candidate joins while the batch still meets every member's
  //    deadline under L̂; one of a lower class than the batch's best may not tighten the batch's
  //    deadline so far that it holds less than it otherwise could;
  //  - with that last rule for every candidate, the first included: in overload the most urgent
  //    requests of a class are due so soon that a batch built around them holds one or two, and
  //    running such batches back to back halves throughput for everyone (EDF's known collapse).
  //    An ultra-high request alone still outweighs a full batch of normal ones, so strict classes
  //    keep their protection through the comparison.
  void fill(const Core& core, double now, std::vector<int>& batch) {
    double offered = 0;
    min_cost_ = kInf;
    for (size_t k = 0; k < top_; ++k) {
      const double c = core.columns().cost[index_of(key_[k])];
      offered += c;
      min_cost_ = std::min(min_cost_, c);
    }
    const double headroom = core.headroom(now);
    double cap = core.max_batch_cost();
    // The headroom is kept in overload and in a burst's backlog (more than kBacklogBatches full
    // batches among the K best): there guarded requests keep arriving during a long drain. A
    // shorter queue below capacity is a loaded server's ordinary queueing, which full batches
    // clear at once; cut short, they left every request behind them waiting longer (Core::headroom).
    if (std::isfinite(headroom) && (core.overloaded(now) || offered > kBacklogBatches * core.max_batch_cost()))
      cap = std::min(cap, core.max_cost_typically_within(headroom));
    const double as_designed = fill_once(core, now, cap, offered, false, batch);
    // A full batch is not the collapse the second fill guards against: keep it.
    if (batch.size() >= static_cast<size_t>(core.max_batch())) return;
    const double alternative = fill_once(core, now, cap, offered, true, other_);
    if (alternative > as_designed) batch.swap(other_);
  }

  // Returns the batch's value per second (0 when empty).
  double fill_once(const Core& core, double now, double cap, double offered, bool guard_all,
                   std::vector<int>& batch) {
    const auto& col = core.columns();
    batch.clear();
    double cost = 0, due = kInf, value = 0;
    double memo_cost = -1, memo_latency = 0;  // L̂ of the last batch cost asked (it rarely changes)
    double holds = std::min(cap, offered);  // what the batch could hold by its current deadline
    int top = -1;
    for (size_t k = 0; k < top_; ++k) {
      if (batch.size() >= static_cast<size_t>(core.max_batch())) break;
      const int i = candidate(k);
      const double r_cost = col.cost[i], r_deadline = col.deadline[i];
      const int r_cls = col.cls[i];
      if (!batch.empty() && cost + r_cost > cap) continue;
      const double due_with = std::min(due, r_deadline);
      if (std::isfinite(due_with)) {
        if (cost + r_cost != memo_cost) {
          memo_cost = cost + r_cost;
          memo_latency = core.plan_latency(memo_cost);
        }
        if (now + memo_latency > due_with) continue;
      }
      if ((guard_all || (!batch.empty() && r_cls < top)) && due_with < due &&
          core.max_cost_within(due_with - now) < holds)
        continue;
      batch.push_back(i);
      cost += r_cost;
      if (due_with < due) holds = std::min({cap, offered, core.max_cost_within(due_with - now)});
      due = due_with;
      top = std::max(top, r_cls);
      value += std::exp(col.ln_static[i]);
      // Full for every candidate left: even the cheapest would pass the cap or, L̂ being
      // non-decreasing, the batch's deadline. In overload this ends the fill early (and spares
      // sorting the rest of the K best).
      if (cost + min_cost_ > cap ||
          (std::isfinite(due) && now + core.plan_latency(cost + min_cost_) > due))
        break;
    }
    if (batch.empty()) return 0;
    return value / std::max(core.plan_latency(cost), 1e-9);
  }

  double min_cost_ = kInf;       // the cheapest of the K best
  std::vector<uint64_t> key_;    // key_of(ln Φ, queue index): key_[0, top_) are the K best
  std::vector<uint64_t> radix_;  // the radix sort's other buffer
  size_t top_ = 0;
  size_t sorted_ = 0;          // key_[0, sorted_) are in the order the fill reads them
  std::vector<float> score_;
  std::vector<int> other_;
  std::vector<uint8_t> starving_;
};

class FifoPolicy final : public Policy {
 public:
  double decide(const Core& core, double now, std::vector<int>& batch) override {
    const auto& q = core.queue();
    const Config& c = core.config();
    const size_t k = front_fit(core);
    if (k == static_cast<size_t>(core.max_batch()) || k < q.size()) {  // a full batch is ready
      take_front(k, batch);
      return kInf;
    }
    size_t preferred = 0;
    for (int p : c.preferred_batch_sizes)
      if (static_cast<size_t>(p) <= k) preferred = std::max(preferred, static_cast<size_t>(p));
    if (preferred > 0) {
      take_front(preferred, batch);
      return kInf;
    }
    const double due = q.front().arrival + c.max_queue_delay;
    if (now >= due) {
      take_front(k, batch);
      return kInf;
    }
    return due;
  }
};

class PriorityPolicy final : public Policy {
 public:
  double decide(const Core& core, double, std::vector<int>& batch) override {
    const auto& q = core.queue();
    top_k(core, core.max_batch(), order_, [&](int a, int b) {
      return q[a].cls != q[b].cls ? q[a].cls > q[b].cls : a < b;
    });
    take_fitting(core, order_, core.max_batch(), batch);
    return kInf;
  }

 private:
  std::vector<int> order_;
};

bool earlier_deadline(const std::vector<Request>& q, int a, int b) {
  return q[a].deadline != q[b].deadline ? q[a].deadline < q[b].deadline : a < b;
}

class EdfPolicy final : public Policy {
 public:
  double decide(const Core& core, double, std::vector<int>& batch) override {
    const auto& q = core.queue();
    top_k(core, core.max_batch(), order_, [&](int a, int b) { return earlier_deadline(q, a, b); });
    take_fitting(core, order_, core.max_batch(), batch);
    return kInf;
  }

 private:
  std::vector<int> order_;
};

class ClockworkPolicy final : public Policy {
 public:
  bool sheds() const override { return true; }

  double decide(const Core& core, double now, std::vector<int>& batch) override {
    const auto& q = core.queue();
    top_k(core, core.max_batch(), order_, [&](int a, int b) { return earlier_deadline(q, a, b); });
    double cost = 0, due = kInf;
    for (int i : order_) {
      const double due_with = std::min(due, q[i].deadline);
      if (cost + q[i].cost > core.max_batch_cost()) break;
      if (!batch.empty() && std::isfinite(due_with) && now + core.plan_latency(cost + q[i].cost) > due_with) break;
      batch.push_back(i);
      cost += q[i].cost;
      due = due_with;
    }
    return kInf;
  }

 private:
  std::vector<int> order_;
};

class QuantumPolicy final : public Policy {
 public:
  explicit QuantumPolicy(const Config& c) : cap_(c.max_batch) {}

  double decide(const Core& core, double, std::vector<int>& batch) override {
    const size_t limit = std::max<size_t>(1, static_cast<size_t>(std::floor(cap_)));
    take_front(std::min(limit, front_fit(core)), batch);
    return kInf;
  }

  // Clipper's test is the batch's own run time against the latency objective, not its members'
  // queueing: judged by finish time, every batch of a queue that has formed would count as late,
  // the cap would collapse to 1 and the queue would never drain. The objective here is the
  // tightest relative deadline among the batch's members.
  void on_complete(const Core& core, const Batch& b, double, double seconds) override {
    const Config& c = core.config();
    if (seconds <= b.min_slo) {
      cap_ = std::min<double>(core.max_batch(), cap_ + c.aimd_step);
    } else {
      cap_ = std::max(1.0, cap_ * c.aimd_backoff);
    }
  }

 private:
  double cap_;
};

class LatencyPolicy final : public Policy {
 public:
  double decide(const Core& core, double, std::vector<int>& batch) override {
    const auto& q = core.queue();
    top_k(core, 1, order_, [&](int a, int b) { return earlier_deadline(q, a, b); });
    batch.push_back(order_.front());
    return kInf;
  }

 private:
  std::vector<int> order_;
};

class ThroughputPolicy final : public Policy {
 public:
  double decide(const Core& core, double now, std::vector<int>& batch) override {
    const auto& q = core.queue();
    const size_t k = front_fit(core);
    const double window =
        core.config().max_queue_delay > 0 ? core.config().max_queue_delay : core.plan_latency(core.max_batch_cost());
    if (k == static_cast<size_t>(core.max_batch()) || k < q.size() || now >= q.front().arrival + window) {
      take_front(k, batch);
      return kInf;
    }
    return q.front().arrival + window;
  }
};

}  // namespace

const std::vector<std::string>& policy_names() {
  static const std::vector<std::string> names{"phi-optimized", "fifo",    "priority", "edf", "clockwork",
                                              "quantum-optimized", "latency", "throughput"};
  return names;
}

std::unique_ptr<Policy> make_policy(const Config& c) {
  const std::string& p = c.policy;
  if (p == "phi-optimized") return std::make_unique<PhiPolicy>();
  if (p == "fifo") return std::make_unique<FifoPolicy>();
  if (p == "priority") return std::make_unique<PriorityPolicy>();
  if (p == "edf") return std::make_unique<EdfPolicy>();
  if (p == "clockwork") return std::make_unique<ClockworkPolicy>();
  if (p == "quantum-optimized") return std::make_unique<QuantumPolicy>(c);
  if (p == "latency") return std::make_unique<LatencyPolicy>();
  if (p == "throughput") return std::make_unique<ThroughputPolicy>();
  std::string known;
  for (const auto& n : policy_names()) known += (known.empty() ? "" : ", ") + n;
  fail("scheduler", "unknown policy '" + p + "'; known: " + known);
}

}  // namespace phi::sched
