// The real-time scheduler: Core behind a mutex, on the steady clock, with blocking calls for the
// worker threads (acquire a batch, release it) and for a reaper (requests that ended without
// running: shed as they expire, or closed). Callers may be any threads; nothing here knows Python.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <vector>

#include "core/scheduler/core.h"

namespace phi::sched {

struct DecisionStats {
  int64_t count = 0;
  double total_ns = 0;
  double max_ns = 0;
};

struct SchedulerStats {
  int64_t queued = 0;
  int64_t in_flight = 0;
  int64_t submitted = 0;
  std::vector<int64_t> ended;          // by Outcome
  double submit_ns = 0;                // total time spent in submit()
  std::vector<DecisionStats> decisions;  // by queue length: [0,1], (1,2], (2,4], ... (log2 buckets)
};

class Scheduler {
 public:
  explicit Scheduler(Config config);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Seconds on the steady clock (the clock every time here is on).
  static double now();

  // Queues a request arriving now, due `deadline_in` seconds from now (+inf: best effort). Returns
  // pending, or the reason it was rejected (queue_full, infeasible, closed).
  Outcome submit(uint64_t id, int cls, int tenant, double cost, double deadline_in);
  // submit() for a caller willing to run its own request. When the queue was empty and a worker
  // is free, the caller makes the dispatch decision that worker would make on waking; if that
  // decision is to run the request now, `batch` holds it and the caller runs it and calls
  // release() like a worker. This saves two thread hand-offs on an idle deployment and changes no
  // decision: the policy still chooses, and in-flight batches never exceed `workers`.
  Outcome submit_inline(uint64_t id, int cls, int tenant, double cost, double deadline_in, Batch& batch);
  // For a free worker: blocks until a batch is ready (true, batch filled), `timeout` seconds pass
  // (true, batch empty), or the scheduler is closed with nothing left to run (false).
  bool acquire(double timeout, Batch& batch);
  // The worker finished the batch; `ok` false when it failed (L̂ then learns nothing from it).
  void release(uint64_t token, bool ok);
  // Blocks until requests have ended without running (returned in `ended`; true), `timeout` passes
  // (true, nothing), or the scheduler is closed and nothing more can end this way (false).
  bool reap(double timeout, std::vector<Ended>& ended);
  // Withdraws a queued request; false once it was dispatched or ended.
  bool cancel(uint64_t id);
  // Stops accepting. With `drain` the queue is still served; without, queued requests end `closed`.
  void close(bool drain);

  void record_latency(double cost, double seconds);
  std::vector<LatencyPoint> latency_table() const;
  SchedulerStats stats() const;
  const Config& config() const { return core_.config(); }

 private:
  Decision timed_dispatch(double t);
  void wake_reaper_if_sooner(double t);

  mutable std::mutex mu_;
  std::condition_variable work_cv_;
  std::condition_variable reap_cv_;
  Core core_;
  std::vector<Ended> outbox_;
  bool closing_ = false;
  bool drain_ = true;
  double reaper_until_ = kInf;    // when the sleeping reaper will look again
  SchedulerStats stats_;
};

}  // namespace phi::sched
