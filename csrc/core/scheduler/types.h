// The scheduler's vocabulary: requests, their outcomes, batches and the configuration.
// Times are seconds as doubles: on a virtual clock in the simulator, on the steady clock when real.
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace phi::sched {

inline constexpr double kInf = std::numeric_limits<double>::infinity();

// How a request ended. Every request submitted ends in exactly one of these (pending until then).
enum class Outcome : uint8_t {
  pending,
  completed,    // its batch ran (on time or not: the caller compares finish and deadline)
  shed,         // dropped at dispatch: it could no longer finish by its deadline
  queue_full,   // rejected at arrival: the queue was at its bound
  infeasible,   // rejected at arrival: it could not finish by its deadline given the work ahead
  cancelled,    // withdrawn by the caller before it was dispatched
  closed,       // the scheduler closed without draining
  failed,       // its batch raised
};

const char* outcome_name(Outcome o);

struct Request {
  uint64_t id = 0;
  int cls = 0;              // priority class: 0 low, 1 normal, 2 high, 3 ultra-high, or beyond
  int tenant = 0;
  double cost = 1;          // rows or tokens; a batch's cost is the sum of its members'
  double arrival = 0;
  double deadline = kInf;   // absolute; +inf: best effort (no deadline, never shed)
  // Derived once at admission (the parts of ln Φ that do not move with time).
  double ln_static = 0;     // ln w_c + ln ω_tenant − γ ln p_a
  double inv_slo = 0;       // 1 / (deadline − arrival); 0 for best effort
};

struct Batch {
  uint64_t token = 0;       // names the batch to complete() it
  std::vector<Request> requests;
  double cost = 0;
  double deadline = kInf;   // the earliest of its members'
  double start = 0;
  double min_slo = kInf;    // the tightest of its members' relative deadlines
};

struct Ended {
  uint64_t id;
  Outcome outcome;
};

// What a policy decided at one dispatch point.
struct Decision {
  Batch batch;                 // empty: nothing to run now
  std::vector<Ended> ended;    // shed at this point
  double wake_at = kInf;       // when nothing runs: the time at which deciding again may help
};

struct Config {
  std::string policy = "phi-optimized";
  int max_batch = 32;                  // requests per batch
  double max_batch_cost = 0;           // total cost per batch; 0 means max_batch
  int workers = 1;                     // batches that may run at once
  int64_t max_queue = 100000;          // queued requests beyond this are rejected (queue_full)
  // Φ(a) (DESIGN.md): ln Φ = ln w_c + ln ω_t − γ ln p + θ u + ln(1 + g/G)
  std::vector<double> class_weights{1, 4, 64, 1024};
  std::vector<double> tenant_weights;  // by tenant index; missing tenants weigh 1
  std::vector<double> min_share;       // by class: the least share of dispatched cost a class with
                                       // queued work gets (0 or missing: none)
  double theta = 1;
  double aging = 10;                   // G, seconds
  double gamma = 0.5;
  double margin = 0.15;                // L̂ is planned with (1 + margin)
  // phi-optimized keeps batches short enough that a request of a class weighing at least this much,
  // arriving just after a dispatch, can still make its deadline (+inf: no such headroom).
  double headroom_weight = 64;
  // fifo / throughput: how long the oldest request may wait for a batch to fill.
  double max_queue_delay = 0;
  std::vector<int> preferred_batch_sizes;  // fifo: dispatch as soon as one of these can be formed
  // quantum-optimized (Clipper's AIMD on the batch cap)
  double aimd_step = 1;
  double aimd_backoff = 0.9;
};

}  // namespace phi::sched
