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
#include <numeric>

#include "core/common.h"
#include "core/scheduler/core.h"

namespace phi::sched {

namespace {

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

class PhiPolicy final : public Policy {
 public:
  bool sheds() const override { return true; }
  bool admits_by_deadline() const override { return true; }

  double decide(const Core& core, double now, std::vector<int>& batch) override {
    const auto& q = core.queue();
    const Config& c = core.config();
    const size_t n = q.size();
    starving_.assign(core.num_classes(), 0);
    for (int k = 0; k < core.num_classes() && k < static_cast<int>(c.min_share.size()); ++k)
      starving_[k] = c.min_share[k] > 0 && core.served_share(k) < c.min_share[k];
    // The planned latency of each request's own cost (costs repeat: looked up once per run).
    if (planned_.size() < n) planned_.resize(n);
    double last_cost = -1, last_lat = 0;
    for (size_t i = 0; i < n; ++i) {
      if (q[i].cost != last_cost) {
        last_cost = q[i].cost;
        last_lat = core.plan_latency(last_cost);
      }
      planned_[i] = last_lat;
    }
    const auto& col = core.columns();
    if (score_.size() < n) score_.resize(n);
    rank_scores(n, col.arrival.data(), col.inv_slo.data(), col.ln_static.data(), planned_.data(), now, c.theta,
                1.0 / c.aging, score_.data());
    // Scratch vectors only grow: resizing them down and up again would zero them every time.
    if (cand_.size() < n) cand_.resize(n);
    for (size_t i = 0; i < n; ++i) {
      // A class below its minimum share goes first: the ranking is only ever raised, by a constant
      // far above any ln Φ, so order inside the class is still Φ's.
      cand_[i] = {score_[i] + (starving_[q[i].cls] ? 1e4f : 0.0f), static_cast<int>(i)};
    }
    // O(n) selection of the top K = 4B, then O(K log K) to order them.
    top_ = std::min(n, static_cast<size_t>(4) * core.max_batch());
    const size_t m = top_ < n ? prefilter(n, top_) : n;
    const auto first = cand_.begin(), kth = first + static_cast<std::ptrdiff_t>(top_);
    auto higher = [](const std::pair<float, int>& a, const std::pair<float, int>& b) { return a.first > b.first; };
    if (top_ < m) std::nth_element(first, kth, first + static_cast<std::ptrdiff_t>(m), higher);
    std::sort(first, kth, higher);
    fill(core, now, batch);
    return kInf;
  }

 private:
  // Moves to the front of cand_[0, n) a superset of its k best and returns its size, so that the
  // exact selection partitions a few hundred pairs rather than all of them: the threshold is the
  // score at 1.5× the rank k would have among every 8th score. If fewer than k reach it (the
  // sample misled), nothing is moved and n is returned.
  size_t prefilter(size_t n, size_t k) {
    if (n < 4 * k) return n;
    sample_.clear();
    for (size_t i = 0; i < n; i += 8) sample_.push_back(cand_[i].first);
    const size_t rank = std::min(sample_.size() - 1, k * 3 / 2 / 8);
    std::nth_element(sample_.begin(), sample_.begin() + static_cast<std::ptrdiff_t>(rank), sample_.end(),
                     std::greater<float>());
    const float threshold = sample_[rank];
    size_t kept = 0;
    for (size_t i = 0; i < n; ++i)
      if (cand_[i].first >= threshold) std::swap(cand_[kept++], cand_[i]);
    return kept >= k ? kept : n;
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
    const double headroom = core.headroom(now);
    double cap = core.max_batch_cost();
    if (std::isfinite(headroom)) cap = std::min(cap, core.max_cost_typically_within(headroom));
    double offered = 0;
    for (size_t k = 0; k < top_; ++k) offered += core.queue()[cand_[k].second].cost;
    const double as_designed = fill_once(core, now, cap, offered, false, batch);
    const double alternative = fill_once(core, now, cap, offered, true, other_);
    if (alternative > as_designed) batch.swap(other_);
  }

  // Returns the batch's value per second (0 when empty).
  double fill_once(const Core& core, double now, double cap, double offered, bool guard_all,
                   std::vector<int>& batch) const {
    const auto& q = core.queue();
    batch.clear();
    double cost = 0, due = kInf, value = 0;
    int top = -1;
    for (size_t k = 0; k < top_; ++k) {
      const int i = cand_[k].second;
      if (batch.size() >= static_cast<size_t>(core.max_batch())) break;
      const Request& r = q[i];
      if (!batch.empty() && cost + r.cost > cap) continue;
      const double due_with = std::min(due, r.deadline);
      if (std::isfinite(due_with) && now + core.plan_latency(cost + r.cost) > due_with) continue;
      if ((guard_all || (!batch.empty() && r.cls < top)) && due_with < due) {
        const double holds = std::min({cap, offered, std::isfinite(due) ? core.max_cost_within(due - now) : cap});
        if (core.max_cost_within(due_with - now) < holds) continue;
      }
      batch.push_back(i);
      cost += r.cost;
      due = due_with;
      top = std::max(top, r.cls);
      value += std::exp(r.ln_static);
    }
    if (batch.empty()) return 0;
    return value / std::max(core.plan_latency(cost), 1e-9);
  }

  std::vector<std::pair<float, int>> cand_;  // (ln Φ, queue index); float halves what selection moves
  size_t top_ = 0;                           // cand_[0, top_) are the K best, in order
  std::vector<float> sample_;
  std::vector<double> planned_;
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
    double slo = kInf;
    for (const Request& r : b.requests) slo = std::min(slo, r.deadline - r.arrival);
    if (seconds <= slo) {
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
