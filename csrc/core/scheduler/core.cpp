#include "core/scheduler/core.h"

#include <algorithm>
#include <cmath>

#include "core/common.h"
#include "core/scheduler/policies.h"

namespace phi::sched {

namespace {

const std::string kOp = "scheduler";
constexpr double kShareHorizon = 1.0;  // seconds over which served shares decay by 1/e
constexpr size_t kGuardWindow = 256;   // requests per guarded class the headroom looks at
constexpr double kGuardHorizon = 1.0;  // seconds after its last arrival a class stays guarded
constexpr double kLoadHorizon = 1.0;   // seconds over which the offered load decays by 1/e

const Config& validated(const Config& c) {
  PHI_CHECK(c.max_batch >= 1, kOp, "max_batch must be at least 1, got " + std::to_string(c.max_batch));
  PHI_CHECK(c.max_batch_cost >= 0 && std::isfinite(c.max_batch_cost), kOp, "max_batch_cost must be finite and >= 0");
  PHI_CHECK(c.workers >= 1, kOp, "workers must be at least 1, got " + std::to_string(c.workers));
  PHI_CHECK(c.max_queue >= 1, kOp, "max_queue must be at least 1, got " + std::to_string(c.max_queue));
  PHI_CHECK(!c.class_weights.empty(), kOp, "class_weights must name at least one class");
  for (double w : c.class_weights)
    PHI_CHECK(w > 0 && std::isfinite(w), kOp, "class weights must be positive and finite");
  for (double w : c.tenant_weights)
    PHI_CHECK(w > 0 && std::isfinite(w), kOp, "tenant weights must be positive and finite");
  for (double s : c.min_share) PHI_CHECK(s >= 0 && s <= 1, kOp, "a minimum share must be in [0, 1]");
  PHI_CHECK(std::isfinite(c.theta) && c.theta >= 0, kOp, "theta must be finite and >= 0");
  PHI_CHECK(c.aging > 0, kOp, "the aging constant G must be positive");
  PHI_CHECK(std::isfinite(c.gamma) && c.gamma >= 0, kOp, "gamma must be finite and >= 0");
  PHI_CHECK(c.margin >= 0 && c.margin < 10, kOp, "margin must be in [0, 10)");
  PHI_CHECK(c.headroom_weight > 0, kOp, "headroom_weight must be positive (inf: no headroom)");
  PHI_CHECK(c.max_queue_delay >= 0 && std::isfinite(c.max_queue_delay), kOp,
            "max_queue_delay must be finite and >= 0");
  for (int p : c.preferred_batch_sizes)
    PHI_CHECK(p >= 1 && p <= c.max_batch, kOp, "preferred batch sizes must be in [1, max_batch]");
  PHI_CHECK(c.aimd_step > 0 && c.aimd_backoff > 0 && c.aimd_backoff < 1, kOp,
            "AIMD needs a positive step and a backoff in (0, 1)");
  return c;
}

}  // namespace

Core::Core(Config config)
    : cfg_(validated(config)),
      max_cost_(cfg_.max_batch_cost > 0 ? cfg_.max_batch_cost : cfg_.max_batch),
      lat_(max_cost_),
      policy_(make_policy(cfg_)),
      served_(cfg_.class_weights.size(), 0.0),
      guard_(cfg_.class_weights.size()) {}

Core::~Core() = default;

Outcome Core::submit(Request r, double now) {
  PHI_CHECK(r.cls >= 0 && r.cls < num_classes(), kOp,
            "priority class " + std::to_string(r.cls) + " is not one of the " + std::to_string(num_classes()) +
                " classes configured");
  PHI_CHECK(r.cost > 0 && r.cost <= max_cost_, kOp,
            "a request's cost must be in (0, " + std::to_string(max_cost_) + "], the most one batch holds");
  PHI_CHECK(r.tenant >= 0, kOp, "tenant indices are non-negative");
  PHI_CHECK(!std::isnan(r.deadline), kOp, "the deadline is NaN");
  offered_ = offered_ * std::exp(-(now - offered_at_) / kLoadHorizon) + r.cost;
  offered_at_ = now;
  first_arrival_ = std::min(first_arrival_, now);
  if (static_cast<int64_t>(queue_.size()) >= cfg_.max_queue) return Outcome::queue_full;
  const double tw = r.tenant < static_cast<int>(cfg_.tenant_weights.size()) ? cfg_.tenant_weights[r.tenant] : 1.0;
  r.ln_static = std::log(cfg_.class_weights[r.cls]) + std::log(tw) - cfg_.gamma * std::log(r.cost);
  r.inv_slo = std::isfinite(r.deadline) && r.deadline > r.arrival ? 1.0 / (r.deadline - r.arrival) : 0.0;
  if (std::isfinite(r.deadline) && cfg_.class_weights[r.cls] >= cfg_.headroom_weight) observe_guarded(r, now);
  if (policy_->admits_by_deadline() && std::isfinite(r.deadline) && !admissible(r, now)) return Outcome::infeasible;
  queue_.push_back(r);
  push_columns(r);
  return Outcome::pending;
}

// DESIGN.md, admission: can it finish by its deadline given the queued work of its own and higher
// classes? Work of its own class counts only when due no later than it (that is what runs first).
// Judged by typical latencies (the median, with the margin): a request is refused only when it
// cannot make it even at the usual speed. The tail estimate would refuse, with heavy-tailed
// latencies, requests that nearly always finish in time; the shedding at dispatch, by the tail
// estimate, still keeps any that fall behind from running late.
bool Core::admissible(const Request& r, double now) const {
  if (lat_.empty()) return true;
  if (r.deadline < now + typical_latency(r.cost)) return false;
  // Branch-free so the scan costs about a nanosecond per queued request.
  double ahead = 0;
  for (const Request& q : queue_)
    ahead += (q.cls > r.cls) | ((q.cls == r.cls) & (q.deadline <= r.deadline)) ? q.cost : 0.0;
  double start = now;
  if (in_flight() >= cfg_.workers) {
    start = kInf;
    for (const Flight& f : flight_) start = std::min(start, std::max(now, f.expected_end));
  }
  const double total = ahead + r.cost;
  const double finish = total <= max_cost_
                            ? start + typical_latency(total)
                            : start + total / max_cost_ * typical_latency(max_cost_) / cfg_.workers;
  return finish <= r.deadline;
}

void Core::observe_guarded(const Request& r, double now) {
  Guard& g = guard_[r.cls];
  const auto slack = static_cast<float>(r.deadline - r.arrival - plan_latency(r.cost));
  if (g.slack.size() < kGuardWindow) {
    g.slack.push_back(slack);
  } else {
    g.slack[g.seen % kGuardWindow] = slack;
  }
  g.last_arrival = now;
  // The percentile is refreshed every 32 arrivals (and for each of the first 32), not per request.
  if (g.seen++ % 32 == 0 || g.seen <= 32) {
    std::vector<float> tmp(g.slack);
    const size_t k = tmp.size() / 100;  // nearest rank of the 1st percentile
    std::nth_element(tmp.begin(), tmp.begin() + static_cast<std::ptrdiff_t>(k), tmp.end());
    g.tight = tmp[k];
  }
}

double Core::headroom(double now) const {
  double h = kInf;
  for (const Guard& g : guard_)
    if (now - g.last_arrival <= kGuardHorizon) h = std::min(h, g.tight);
  return h;
}

// The decayed sum over a window of length `span` holds rate × horizon × (1 − e^(−span/horizon)):
// divided by that, the first second's estimate is not biased low.
double Core::offered_rate(double now) const {
  if (!std::isfinite(first_arrival_)) return 0;
  const double h = kLoadHorizon;
  const double filled = 1 - std::exp(-std::max(now - first_arrival_, 1e-3) / h);
  return offered_ * std::exp(-(now - offered_at_) / h) / (h * filled);
}

bool Core::overloaded(double now) const {
  if (lat_.empty()) return false;
  return offered_rate(now) > cfg_.workers * max_cost_ / lat_.median(max_cost_);
}

void Core::plan_all() {
  const size_t n = queue_.size();
  const double* cost = cols_.cost.data();
  double* planned = cols_.planned.data();
  double last_cost = -1, last = 0;  // costs repeat: L̂ is looked up once per run of equal costs
  for (size_t i = 0; i < n; ++i) {
    if (cost[i] != last_cost) {
      last_cost = cost[i];
      last = plan_latency(last_cost);
    }
    planned[i] = last;
  }
}

namespace {
// Marks the requests that can no longer finish by their deadline and counts them: branch-free, so
// it vectorizes (compiled per ISA).
PHI_HOT size_t mark_late(size_t n, const double* PHI_RESTRICT deadline, const double* PHI_RESTRICT planned,
                         double now, uint8_t* PHI_RESTRICT mark) {
  size_t late = 0;
  for (size_t i = 0; i < n; ++i) {
    const uint8_t m = deadline[i] < now + planned[i];
    mark[i] = m;
    late += m;
  }
  return late;
}
}  // namespace

// Needs plan_all() first.
void Core::shed_pass(double now, std::vector<Ended>& ended) {
  const size_t n = queue_.size();
  const size_t late = mark_late(n, cols_.deadline.data(), cols_.planned.data(), now, mark_.data());
  if (late == 0) return;
  // The marked indices, ascending, by a branch-free compress (a few are late among many).
  if (gone_.size() < n) gone_.resize(n);
  size_t k = 0;
  for (size_t i = 0; i < n; ++i) {
    gone_[k] = static_cast<int>(i);
    k += mark_[i];
  }
  ended.reserve(ended.size() + k);
  for (size_t j = 0; j < k; ++j) ended.push_back({queue_[gone_[j]].id, Outcome::shed});
  if (policy_->needs_arrival_order()) {
    remove_marked();
  } else {
    remove_swapped(gone_.data(), k);
  }
}

void Core::push_columns(const Request& r) {
  cols_.arrival.push_back(r.arrival);
  cols_.inv_slo.push_back(r.inv_slo);
  cols_.ln_static.push_back(r.ln_static);
  cols_.cost.push_back(r.cost);
  cols_.deadline.push_back(r.deadline);
  cols_.cls.push_back(r.cls);
  cols_.planned.push_back(0);
}

void Core::move_entry(size_t from, size_t to) {
  queue_[to] = queue_[from];
  cols_.arrival[to] = cols_.arrival[from];
  cols_.inv_slo[to] = cols_.inv_slo[from];
  cols_.ln_static[to] = cols_.ln_static[from];
  cols_.cost[to] = cols_.cost[from];
  cols_.deadline[to] = cols_.deadline[from];
  cols_.cls[to] = cols_.cls[from];
  cols_.planned[to] = cols_.planned[from];
}

void Core::resize_entries(size_t n) {
  queue_.resize(n);
  cols_.arrival.resize(n);
  cols_.inv_slo.resize(n);
  cols_.ln_static.resize(n);
  cols_.cost.resize(n);
  cols_.deadline.resize(n);
  cols_.cls.resize(n);
  cols_.planned.resize(n);
}

void Core::remove_marked() {
  const size_t n = queue_.size();
  size_t w = 0;
  for (size_t i = 0; i < n; ++i) {
    if (!mark_[i]) {
      if (w != i) move_entry(i, w);
      ++w;
    }
  }
  resize_entries(w);
  mark_.assign(w, 0);
}

// For policies that do not need arrival order: each leaving entry (indices ascending) takes the
// queue's last entry, from the highest index down, so only as many entries move as leave.
void Core::remove_swapped(const int* idx, size_t k) {
  size_t last = queue_.size();
  for (size_t j = k; j-- > 0;) {
    const auto i = static_cast<size_t>(idx[j]);
    --last;
    if (i != last) move_entry(last, i);
  }
  resize_entries(last);
  mark_.assign(last, 0);
}

Decision Core::dispatch(double now) {
  Decision d;
  mark_.assign(queue_.size(), 0);
  if (policy_->sheds()) {
    plan_all();
    if (!lat_.empty()) shed_pass(now, d.ended);
  }
  if (queue_.empty()) return d;
  picked_.clear();
  const double wake = policy_->decide(*this, now, picked_);
  if (picked_.empty()) {
    d.wake_at = wake;
    return d;
  }
  Batch& b = d.batch;
  b.token = next_token_++;
  b.start = now;
  b.requests.reserve(picked_.size());
  for (int i : picked_) {
    mark_[i] = 1;
    b.requests.push_back(queue_[i]);
    b.cost += queue_[i].cost;
    b.deadline = std::min(b.deadline, queue_[i].deadline);
    b.min_slo = std::min(b.min_slo, queue_[i].deadline - queue_[i].arrival);
  }
  if (policy_->needs_arrival_order()) {
    remove_marked();
  } else {
    std::sort(picked_.begin(), picked_.end());
    remove_swapped(picked_.data(), picked_.size());
  }
  account(b, now);
  Batch meta;
  meta.token = b.token;
  meta.cost = b.cost;
  meta.deadline = b.deadline;
  meta.start = b.start;
  meta.min_slo = b.min_slo;
  flight_.push_back({b.token, now + typical_latency(b.cost), std::move(meta), b.requests.size()});
  return d;
}

void Core::account(const Batch& b, double now) {
  const double decay = std::exp(-(now - served_at_) / kShareHorizon);
  served_at_ = now;
  for (double& s : served_) s *= decay;
  for (const Request& r : b.requests) served_[r.cls] += r.cost;
}

double Core::served_share(int cls) const {
  double total = 0;
  for (double s : served_) total += s;
  return total > 0 ? served_[cls] / total : 0.0;
}

size_t Core::complete(uint64_t token, double now, double seconds, bool measured) {
  auto it = std::find_if(flight_.begin(), flight_.end(), [&](const Flight& f) { return f.token == token; });
  PHI_CHECK(it != flight_.end(), kOp, "no batch in flight has token " + std::to_string(token));
  if (std::isnan(seconds)) seconds = now - it->batch.start;
  if (measured) lat_.record(it->batch.cost, seconds);
  policy_->on_complete(*this, it->batch, now, seconds);
  const size_t members = it->members;
  flight_.erase(it);
  return members;
}

std::vector<Ended> Core::expire(double now) {
  std::vector<Ended> ended;
  if (!policy_->sheds() || lat_.empty() || queue_.empty()) return ended;
  mark_.assign(queue_.size(), 0);
  plan_all();
  shed_pass(now, ended);
  return ended;
}

double Core::next_expiry() const {
  if (!policy_->sheds() || lat_.empty()) return kInf;
  double t = kInf;
  for (const Request& r : queue_) t = std::min(t, r.deadline - plan_latency(r.cost));
  return t;
}

bool Core::cancel(uint64_t id) {
  auto it = std::find_if(queue_.begin(), queue_.end(), [&](const Request& r) { return r.id == id; });
  if (it == queue_.end()) return false;
  const auto at = it - queue_.begin();
  queue_.erase(it);
  for (auto* col : {&cols_.arrival, &cols_.inv_slo, &cols_.ln_static, &cols_.cost, &cols_.deadline, &cols_.planned})
    col->erase(col->begin() + at);
  cols_.cls.erase(cols_.cls.begin() + at);
  return true;
}

std::vector<Ended> Core::close() {
  std::vector<Ended> ended;
  ended.reserve(queue_.size());
  for (const Request& r : queue_) ended.push_back({r.id, Outcome::closed});
  queue_.clear();
  cols_ = Columns{};
  return ended;
}

const char* outcome_name(Outcome o) {
  switch (o) {
    case Outcome::pending: return "pending";
    case Outcome::completed: return "completed";
    case Outcome::shed: return "shed";
    case Outcome::queue_full: return "queue_full";
    case Outcome::infeasible: return "deadline_infeasible";
    case Outcome::cancelled: return "cancelled";
    case Outcome::closed: return "closed";
    case Outcome::failed: return "failed";
  }
  return "unknown";
}

}  // namespace phi::sched
