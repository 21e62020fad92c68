// The batching policies, behind one interface. Each sees the queue after the shedding pass (in
// arrival order, unless it says it does not need that) and picks the members of the next batch, or
// says when to look again.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/scheduler/types.h"

namespace phi::sched {

class Core;

class Policy {
 public:
  virtual ~Policy() = default;
  // Drop requests that can no longer finish by their deadline, at dispatch and as they expire.
  virtual bool sheds() const { return false; }
  // Reject at arrival a request that cannot finish in time given the work queued ahead of it.
  virtual bool admits_by_deadline() const { return false; }
  // Whether the queue must stay in arrival order. A policy that ranks every request itself says
  // no, and requests leaving the queue are then replaced by its last ones (O(batch), not O(queue)).
  virtual bool needs_arrival_order() const { return true; }
  // Fills `batch` with queue indices (in the order they will run); returns when to decide again if
  // it leaves `batch` empty while requests wait (+inf: at the next arrival or completion).
  virtual double decide(const Core& core, double now, std::vector<int>& batch) = 0;
  // A batch finished; `batch` carries its cost, deadline, start and tightest SLO, not its requests.
  virtual void on_complete(const Core& core, const Batch& batch, double finish, double seconds) {}
};

// phi-optimized, fifo, priority, edf, clockwork, quantum-optimized, latency, throughput.
std::unique_ptr<Policy> make_policy(const Config& config);
const std::vector<std::string>& policy_names();

}  // namespace phi::sched
