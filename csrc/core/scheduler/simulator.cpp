#include "core/scheduler/simulator.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <random>

#include "core/common.h"
#include "core/scheduler/core.h"

namespace phi::sched {

namespace {

const std::string kOp = "simulate";

// Draws batch latencies: a uniform quantile q, read off the sorted samples of the two measured
// costs around the batch's and interpolated linearly in cost (the same q on both sides, so the
// draw is the q-quantile of a distribution between the two). Past the largest measured cost the
// draw scales in proportion to cost.
class Sampler {
 public:
  Sampler(const LatencyTable& t, uint64_t seed) : cost_(t.cost), sorted_(t.seconds), rng_(seed) {
    PHI_CHECK(!cost_.empty() && cost_.size() == sorted_.size(), kOp, "the latency table is empty or ragged");
    for (size_t i = 0; i < cost_.size(); ++i) {
      PHI_CHECK(!sorted_[i].empty(), kOp, "the latency table has a cost with no samples");
      PHI_CHECK(cost_[i] > 0 && (i == 0 || cost_[i] > cost_[i - 1]), kOp,
                "latency table costs must be positive and ascending");
      for (double s : sorted_[i]) PHI_CHECK(std::isfinite(s) && s >= 0, kOp, "latency samples must be finite and >= 0");
      std::sort(sorted_[i].begin(), sorted_[i].end());
    }
  }

  double draw(double cost) {
    const double q = uni_(rng_);
    const size_t hi = static_cast<size_t>(std::lower_bound(cost_.begin(), cost_.end(), cost) - cost_.begin());
    if (hi == 0) return at(0, q);
    if (hi == cost_.size()) return at(hi - 1, q) * cost / cost_.back();
    const double f = (cost - cost_[hi - 1]) / (cost_[hi] - cost_[hi - 1]);
    return at(hi - 1, q) * (1 - f) + at(hi, q) * f;
  }

 private:
  double at(size_t i, double q) const {
    const auto& s = sorted_[i];
    return s[std::min(s.size() - 1, static_cast<size_t>(q * static_cast<double>(s.size())))];
  }

  std::vector<double> cost_;
  std::vector<std::vector<double>> sorted_;
  std::mt19937_64 rng_;
  std::uniform_real_distribution<double> uni_{0.0, 1.0};
};

void check_workload(const Workload& w) {
  const size_t n = w.arrival.size();
  PHI_CHECK(w.cls.size() == n && w.tenant.size() == n && w.cost.size() == n && w.deadline.size() == n, kOp,
            "workload arrays must all have one entry per request");
  for (size_t i = 0; i < n; ++i) {
    PHI_CHECK(std::isfinite(w.arrival[i]), kOp, "arrival times must be finite");
    PHI_CHECK(i == 0 || w.arrival[i] >= w.arrival[i - 1], kOp, "arrival times must be in ascending order");
  }
}

struct Worker {
  double end = kInf;  // +inf: idle
  Batch batch;
};

}  // namespace

SimResult simulate(const Config& config, const Workload& w, const LatencyTable& table, uint64_t seed, bool learn) {
  check_workload(w);
  Sampler sampler(table, seed);
  Core core(config);
  for (size_t i = 0; i < table.cost.size(); ++i) core.latency().record_many(table.cost[i], table.seconds[i]);

  const size_t n = w.arrival.size();
  SimResult res;
  res.outcome.assign(n, static_cast<uint8_t>(Outcome::pending));
  res.start.assign(n, std::nan(""));
  res.finish.assign(n, std::nan(""));
  res.batch.assign(n, -1);
  auto end_as = [&](const Ended& e, double t) {
    res.outcome[e.id] = static_cast<uint8_t>(e.outcome);
    res.finish[e.id] = t;
  };

  std::vector<Worker> workers(config.workers);
  size_t next = 0;
  double wake = kInf;
  double last = -kInf;  // the previous event's time
  using Clock = std::chrono::steady_clock;
  while (true) {
    double t = std::min(next < n ? w.arrival[next] : kInf, wake);
    for (const Worker& k : workers) t = std::min(t, k.end);
    // As the real scheduler's reaper does, shed a queued request the moment it can no longer
    // finish in time, not at the next dispatch. An expiry at or before the previous event was
    // already handled there (or shed nothing), so only a later one is an event: time always moves.
    const double expiry = core.next_expiry();
    if (expiry > last && expiry < t) t = expiry;
    if (std::isinf(t)) break;
    for (Worker& k : workers) {
      if (k.end > t) continue;
      for (const Request& r : k.batch.requests) end_as({r.id, Outcome::completed}, k.end);
      core.complete(k.batch.token, k.end, k.end - k.batch.start, learn);
      k.end = kInf;
    }
    for (; next < n && w.arrival[next] <= t; ++next) {
      Request r;
      r.id = next;
      r.cls = w.cls[next];
      r.tenant = w.tenant[next];
      r.cost = w.cost[next];
      r.arrival = w.arrival[next];
      r.deadline = w.deadline[next];
      const auto t0 = Clock::now();
      const Outcome o = core.submit(r, t);
      res.submit_ns += std::chrono::duration<double, std::nano>(Clock::now() - t0).count();
      if (o != Outcome::pending) end_as({next, o}, t);
    }
    for (const Ended& e : core.expire(t)) end_as(e, t);
    last = t;
    wake = kInf;
    for (Worker& k : workers) {
      if (!std::isinf(k.end) || core.queued() == 0) continue;
      res.decision_queue.push_back(static_cast<int64_t>(core.queued()));
      const auto t0 = Clock::now();
      Decision d = core.dispatch(t);
      res.decision_ns.push_back(std::chrono::duration<double, std::nano>(Clock::now() - t0).count());
      for (const Ended& e : d.ended) end_as(e, t);
      if (d.batch.requests.empty()) {
        // A policy waiting for its batch to fill: look again when it says (strictly later).
        wake = d.wake_at > t ? d.wake_at : std::nextafter(t, kInf);
        if (core.queued() == 0) wake = kInf;
        break;
      }
      const double seconds = sampler.draw(d.batch.cost);
      const auto batch_id = static_cast<int64_t>(res.batch_cost.size());
      res.batch_cost.push_back(d.batch.cost);
      res.batch_seconds.push_back(seconds);
      for (const Request& r : d.batch.requests) {
        res.start[r.id] = t;
        res.batch[r.id] = batch_id;
      }
      k.end = t + seconds;
      k.batch = std::move(d.batch);
    }
  }
  for (const Ended& e : core.close()) end_as(e, w.arrival.empty() ? 0.0 : w.arrival.back());
  return res;
}

}  // namespace phi::sched
