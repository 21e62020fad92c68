// The scheduler's logic on one clock it is told: a queue, the latency model, the batches in flight
// and a policy. Not thread-safe and never reads a clock, so the simulator drives exactly the code the
// real scheduler runs (scheduler.h adds the locking, the steady clock and the waiting).
#pragma once

#include <memory>
#include <vector>

#include "core/scheduler/latency_model.h"
#include "core/scheduler/types.h"

namespace phi::sched {

class Policy;

class Core {
 public:
  explicit Core(Config config);
  ~Core();
  Core(const Core&) = delete;
  Core& operator=(const Core&) = delete;

  // Queues the request (returns pending) or says why it was rejected (queue_full, infeasible).
  // Throws phi::Error for a malformed request (unknown class, cost outside (0, max batch cost]).
  Outcome submit(Request r, double now);
  // A worker is free: the batch it should run now (possibly none), and what was shed on the way.
  Decision dispatch(double now);
  // The batch named by `token` finished at `now`, having run for `seconds` (NaN: since its start).
  // `measured` false (the batch failed): L̂ learns nothing from it.
  // Returns how many requests the batch held.
  size_t complete(uint64_t token, double now, double seconds, bool measured = true);
  // Sheds the queued requests that can no longer finish in time (shedding policies only).
  std::vector<Ended> expire(double now);
  // The earliest time at which expire() would shed something (+inf: never).
  double next_expiry() const;
  bool cancel(uint64_t id);
  // Ends every queued request as `closed`.
  std::vector<Ended> close();

  // ---- for policies -------------------------------------------------------------------------
  const Config& config() const { return cfg_; }
  const std::vector<Request>& queue() const { return queue_; }
  // The queue's hot fields as columns in queue order, kept in step with queue(): the shedding pass
  // and the ranking loop read them for every queued request at every decision; columns let those
  // loops run in SIMD and read 8 bytes a field instead of a 56-byte request's cache lines.
  struct Columns {
    std::vector<double> arrival, inv_slo, ln_static, cost, deadline;
    std::vector<int32_t> cls;
    // L̂(cost) with the margin, of each request's own cost: computed once per dispatch (shedding
    // policies), before the shedding pass, which both it and the policy's ranking read.
    std::vector<double> planned;
  };
  const Columns& columns() const { return cols_; }
  const LatencyModel& latency() const { return lat_; }
  LatencyModel& latency() { return lat_; }
  int max_batch() const { return cfg_.max_batch; }
  double max_batch_cost() const { return max_cost_; }
  // L̂(P) with the safety margin: what batches are planned with.
  double plan_latency(double cost) const { return lat_.estimate(cost) * (1 + cfg_.margin); }
  // The median L̂ with the margin: what a batch of this cost typically takes.
  double typical_latency(double cost) const { return lat_.median(cost) * (1 + cfg_.margin); }
  // The largest batch cost whose planned latency fits in `seconds`.
  double max_cost_within(double seconds) const { return lat_.max_cost_within(seconds / (1 + cfg_.margin)); }
  // The same with the median latency (with the margin): what a batch typically takes.
  double max_cost_typically_within(double seconds) const {
    return lat_.max_cost_within_median(seconds / (1 + cfg_.margin));
  }
  // Share of recently dispatched cost that went to class c (decaying over about a second).
  double served_share(int cls) const;
  // How long a batch may typically take so that a request of a guarded class (weight at least
  // headroom_weight) arriving just after its dispatch could still run after it in time: the 1st
  // percentile, over the recent requests of each guarded class seen within the last second, of
  // its relative deadline less its own planned latency. +inf when no guarded class is active.
  // Batches are held to it by their median latency, not their tail: guarding against the 1 %
  // slowest batches and the 1 % tightest deadlines at once would be far rarer than either, and,
  // with heavy-tailed latencies, would cap every batch at one request. phi-optimized holds batches
  // to it only while overloaded() or while a burst's backlog is queued: below capacity, a queue of
  // a batch or so is ordinary queueing, and batches cut short to keep room for a guarded arrival
  // would drain it slower, adding their delay to every request behind it, while Φ's order still
  // puts a guarded request first in the next batch.
  double headroom(double now) const;
  // Cost per second offered by recent submissions (rejected ones included), decaying over about a
  // second; and whether it exceeds what the workers serve in full batches of typical (median)
  // latency: then no schedule serves everyone, and phi-optimized reserves its headroom.
  double offered_rate(double now) const;
  bool overloaded(double now) const;
  int in_flight() const { return static_cast<int>(flight_.size()); }
  size_t queued() const { return queue_.size(); }
  int num_classes() const { return static_cast<int>(cfg_.class_weights.size()); }

 private:
  struct Flight {
    uint64_t token;
    double expected_end;  // by the typical (median) latency
    Batch batch;          // without its requests (the caller has them): no copy per dispatch
    size_t members;
  };
  bool admissible(const Request& r, double now) const;
  void plan_all();
  void shed_pass(double now, std::vector<Ended>& ended);
  void remove_marked();
  void remove_swapped(const int* idx, size_t k);
  void push_columns(const Request& r);
  void move_entry(size_t from, size_t to);
  void resize_entries(size_t n);
  void account(const Batch& b, double now);

  Config cfg_;
  double max_cost_;
  LatencyModel lat_;
  std::unique_ptr<Policy> policy_;
  std::vector<Request> queue_;      // in arrival order
  Columns cols_;
  std::vector<uint8_t> mark_;       // scratch: 1 = leaves the queue at remove_marked()
  std::vector<int> picked_;         // scratch: queue indices of the batch being formed
  std::vector<int> gone_;           // scratch: queue indices shed at this pass
  std::vector<Flight> flight_;
  uint64_t next_token_ = 1;
  std::vector<double> served_;      // decaying dispatched cost per class
  double served_at_ = 0;
  struct Guard {
    std::vector<float> slack;       // the last requests' relative deadline less their planned latency
    int64_t seen = 0;
    double tight = kInf;            // its 1st percentile
    double last_arrival = -kInf;
  };
  std::vector<Guard> guard_;        // by class
  double offered_ = 0;              // decaying submitted cost
  double offered_at_ = 0;           // when offered_ was last brought up to date
  double first_arrival_ = kInf;
  void observe_guarded(const Request& r, double now);
};

}  // namespace phi::sched
