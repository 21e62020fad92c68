#include "core/scheduler/scheduler.h"

#include <algorithm>
#include <chrono>
#include <cmath>

namespace phi::sched {

namespace {

using SteadyClock = std::chrono::steady_clock;

SteadyClock::time_point to_time_point(double seconds) {
  return SteadyClock::time_point(
      std::chrono::duration_cast<SteadyClock::duration>(std::chrono::duration<double>(seconds)));
}

// Waits on `cv` until `until` (seconds on the steady clock); +inf waits for a notification.
void wait_until(std::condition_variable& cv, std::unique_lock<std::mutex>& lk, double until) {
  if (std::isinf(until)) {
    cv.wait(lk);
  } else {
    cv.wait_until(lk, to_time_point(until));
  }
}

size_t queue_bucket(size_t n) {
  size_t b = 0;
  while (n > 1) {
    n = (n + 1) / 2;
    ++b;
  }
  return b;
}

}  // namespace

Scheduler::Scheduler(Config config) : core_(std::move(config)) {
  stats_.ended.assign(static_cast<size_t>(Outcome::failed) + 1, 0);
}

Scheduler::~Scheduler() { close(false); }

double Scheduler::now() { return std::chrono::duration<double>(SteadyClock::now().time_since_epoch()).count(); }

Outcome Scheduler::submit(uint64_t id, int cls, int tenant, double cost, double deadline_in) {
  const auto t0 = SteadyClock::now();
  std::unique_lock lk(mu_);
  const double t = now();
  Outcome out = Outcome::closed;
  if (!closing_) {
    Request r;
    r.id = id;
    r.cls = cls;
    r.tenant = tenant;
    r.cost = cost;
    r.arrival = t;
    r.deadline = t + deadline_in;
    out = core_.submit(r, t);
    if (out == Outcome::pending) {
      work_cv_.notify_one();
      wake_reaper_if_sooner(r.deadline - core_.plan_latency(r.cost));
    }
  }
  ++stats_.submitted;
  if (out != Outcome::pending) ++stats_.ended[static_cast<size_t>(out)];
  stats_.submit_ns += std::chrono::duration<double, std::nano>(SteadyClock::now() - t0).count();
  return out;
}

Outcome Scheduler::submit_inline(uint64_t id, int cls, int tenant, double cost, double deadline_in,
                                 Batch& batch) {
  batch.requests.clear();
  const auto t0 = SteadyClock::now();
  std::unique_lock lk(mu_);
  const double t = now();
  Outcome out = Outcome::closed;
  if (!closing_) {
    const bool idle = core_.queued() == 0 && core_.in_flight() < core_.config().workers;
    Request r;
    r.id = id;
    r.cls = cls;
    r.tenant = tenant;
    r.cost = cost;
    r.arrival = t;
    r.deadline = t + deadline_in;
    out = core_.submit(r, t);
    if (out == Outcome::pending) {
      bool mine = false;
      if (idle) {
        // The queue holds only this request, so a batch the policy forms now is this request.
        Decision d = timed_dispatch(t);
        if (!d.ended.empty()) {
          for (const Ended& e : d.ended) ++stats_.ended[static_cast<size_t>(e.outcome)];
          outbox_.insert(outbox_.end(), d.ended.begin(), d.ended.end());
          reap_cv_.notify_all();
        }
        mine = !d.batch.requests.empty();
        if (mine) batch = std::move(d.batch);
      }
      if (!mine) {
        work_cv_.notify_one();
        wake_reaper_if_sooner(r.deadline - core_.plan_latency(r.cost));
      }
    }
  }
  ++stats_.submitted;
  if (out != Outcome::pending) ++stats_.ended[static_cast<size_t>(out)];
  stats_.submit_ns += std::chrono::duration<double, std::nano>(SteadyClock::now() - t0).count();
  return out;
}

void Scheduler::wake_reaper_if_sooner(double t) {
  if (t < reaper_until_) reap_cv_.notify_all();
}

Decision Scheduler::timed_dispatch(double t) {
  const size_t n = core_.queued();
  const auto t0 = SteadyClock::now();
  Decision d = core_.dispatch(t);
  const double ns = std::chrono::duration<double, std::nano>(SteadyClock::now() - t0).count();
  const size_t b = queue_bucket(n);
  if (stats_.decisions.size() <= b) stats_.decisions.resize(b + 1);
  auto& s = stats_.decisions[b];
  ++s.count;
  s.total_ns += ns;
  s.max_ns = std::max(s.max_ns, ns);
  return d;
}

bool Scheduler::acquire(double timeout, Batch& batch) {
  batch.requests.clear();
  std::unique_lock lk(mu_);
  const double until = now() + timeout;
  while (true) {
    if (closing_ && (!drain_ || core_.queued() == 0)) return false;
    const double t = now();
    double wake = kInf;
    if (core_.queued() > 0) {
      Decision d = timed_dispatch(t);
      if (!d.ended.empty()) {
        for (const Ended& e : d.ended) ++stats_.ended[static_cast<size_t>(e.outcome)];
        outbox_.insert(outbox_.end(), d.ended.begin(), d.ended.end());
        reap_cv_.notify_all();
      }
      if (!d.batch.requests.empty()) {
        batch = std::move(d.batch);
        return true;
      }
      wake = d.wake_at;
    }
    if (t >= until) return true;
    wait_until(work_cv_, lk, std::min(wake, until));
  }
}

void Scheduler::release(uint64_t token, bool ok) {
  std::unique_lock lk(mu_);
  const size_t members = core_.complete(token, now(), std::nan(""), ok);
  stats_.ended[static_cast<size_t>(ok ? Outcome::completed : Outcome::failed)] += static_cast<int64_t>(members);
  // A finished batch matters to waiting workers only when requests are queued (the policy may
  // have held them for a free replica), and to the reaper only while closing (it ends when
  // nothing is in flight); waking them otherwise costs each a context switch per batch.
  if (core_.queued() > 0) work_cv_.notify_all();
  if (closing_) reap_cv_.notify_all();
}

bool Scheduler::reap(double timeout, std::vector<Ended>& ended) {
  ended.clear();
  std::unique_lock lk(mu_);
  const double until = now() + timeout;
  while (true) {
    std::vector<Ended> expired = core_.expire(now());
    for (const Ended& e : expired) ++stats_.ended[static_cast<size_t>(e.outcome)];
    outbox_.insert(outbox_.end(), expired.begin(), expired.end());
    if (!outbox_.empty()) {
      ended.swap(outbox_);
      return true;
    }
    if (closing_ && core_.queued() == 0 && core_.in_flight() == 0) return false;
    const double t = now();
    if (t >= until) return true;
    reaper_until_ = std::min(core_.next_expiry(), until);
    wait_until(reap_cv_, lk, reaper_until_);
    reaper_until_ = kInf;
  }
}

bool Scheduler::cancel(uint64_t id) {
  std::unique_lock lk(mu_);
  if (!core_.cancel(id)) return false;
  ++stats_.ended[static_cast<size_t>(Outcome::cancelled)];
  return true;
}

void Scheduler::close(bool drain) {
  std::unique_lock lk(mu_);
  if (!closing_ || !drain) {
    closing_ = true;
    drain_ = drain_ && drain;
    if (!drain) {
      std::vector<Ended> ended = core_.close();
      for (const Ended& e : ended) ++stats_.ended[static_cast<size_t>(e.outcome)];
      outbox_.insert(outbox_.end(), ended.begin(), ended.end());
    }
  }
  work_cv_.notify_all();
  reap_cv_.notify_all();
}

void Scheduler::record_latency(double cost, double seconds) {
  std::unique_lock lk(mu_);
  core_.latency().record(cost, seconds);
}

std::vector<LatencyPoint> Scheduler::latency_table() const {
  std::unique_lock lk(mu_);
  return core_.latency().table();
}

SchedulerStats Scheduler::stats() const {
  std::unique_lock lk(mu_);
  SchedulerStats s = stats_;
  s.queued = static_cast<int64_t>(core_.queued());
  s.in_flight = core_.in_flight();
  return s;
}

}  // namespace phi::sched
