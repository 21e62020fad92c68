// A deterministic discrete-event simulator: the same Core and policies as the real scheduler, on a
// virtual clock, with batch latencies drawn from a table measured on a real model.
#pragma once

#include <cstdint>
#include <vector>

#include "core/scheduler/types.h"

namespace phi::sched {

// Requests in arrival order (structure of arrays).
struct Workload {
  std::vector<double> arrival;
  std::vector<int> cls;
  std::vector<int> tenant;
  std::vector<double> cost;
  std::vector<double> deadline;  // absolute; +inf: best effort
};

// Measured batch latencies: for each batch cost (ascending), the seconds each run took.
struct LatencyTable {
  std::vector<double> cost;
  std::vector<std::vector<double>> seconds;
};

struct SimResult {
  std::vector<uint8_t> outcome;     // per request, an Outcome
  std::vector<double> start;        // when its batch started (NaN if it never ran)
  std::vector<double> finish;       // when it ended, whatever the outcome
  std::vector<int64_t> batch;       // which batch ran it (-1: none)
  std::vector<double> batch_cost;   // per batch
  std::vector<double> batch_seconds;
  std::vector<int64_t> decision_queue;  // per dispatch decision: requests queued when it began
  std::vector<double> decision_ns;      // and the wall time it took
  double submit_ns = 0;                 // wall time spent admitting all requests
};

// Runs the workload to completion. Before the first arrival the latency model is seeded with every
// sample of the table (the warm-up sweep); with `learn` it goes on learning from simulated batches.
SimResult simulate(const Config& config, const Workload& workload, const LatencyTable& table, uint64_t seed,
                   bool learn = true);

}  // namespace phi::sched
