#include "core/scheduler/latency_model.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/common.h"

namespace phi::sched {

namespace {
constexpr int kMaxBuckets = 256;
const std::string kOp = "scheduler";
}  // namespace

LatencyModel::LatencyModel(double max_cost, int window, double quantile)
    : window_(window), quantile_(quantile) {
  PHI_CHECK(std::isfinite(max_cost) && max_cost >= 1, kOp, "the largest batch cost must be at least 1");
  PHI_CHECK(window >= 1, kOp, "the latency window must hold at least one sample");
  PHI_CHECK(quantile > 0 && quantile <= 1, kOp, "the latency quantile must be in (0, 1]");
  buckets_ = static_cast<int>(std::min<double>(kMaxBuckets, std::ceil(max_cost)));
  width_ = max_cost / buckets_;
  ring_.resize(buckets_ + 1);
  sorted_.resize(buckets_ + 1);
  count_.assign(buckets_ + 1, 0);
  q_.assign(buckets_ + 1, std::numeric_limits<double>::quiet_NaN());
  m_ = q_;
  est_.assign(buckets_ + 1, 0.0);
  med_ = est_;
}

void LatencyModel::record(double cost, double seconds) { record_many(cost, {seconds}); }

void LatencyModel::record_many(double cost, const std::vector<double>& seconds) {
  if (!(cost > 0)) return;
  const int b = bucket_of(cost);
  auto& ring = ring_[b];
  auto& sorted = sorted_[b];
  bool any = false;
  for (double s : seconds) {
    if (!std::isfinite(s) || s < 0) continue;
    const auto x = static_cast<float>(s);
    if (static_cast<int>(ring.size()) < window_) {
      ring.push_back(x);
    } else {
      float& slot = ring[count_[b] % window_];
      sorted.erase(std::lower_bound(sorted.begin(), sorted.end(), slot));
      slot = x;
    }
    // The window kept sorted beside the ring: a quantile is then one lookup, and a sample costs
    // two binary searches and a short move instead of a copy and two selections per batch.
    sorted.insert(std::upper_bound(sorted.begin(), sorted.end(), x), x);
    if (count_[b]++ == 0) ++measured_;
    any = true;
  }
  if (!any) return;
  const double q = q_[b], m = m_[b];
  refresh_bucket(b);
  // NaN != NaN: a bucket's first sample always rebuilds.
  if (!(q_[b] == q && m_[b] == m)) rebuild();
}

void LatencyModel::refresh_bucket(int b) {
  const auto& sorted = sorted_[b];
  const size_t n = sorted.size();
  // Nearest-rank quantiles: with fewer than 1/(1-q) samples the tail one is the maximum.
  auto rank = [n](double q) {
    const auto k = static_cast<size_t>(std::ceil(q * static_cast<double>(n)));
    return std::clamp<size_t>(k, 1, n) - 1;
  };
  q_[b] = sorted[rank(quantile_)];
  m_[b] = sorted[rank(0.5)];
}

void LatencyModel::rebuild() {
  build_curve(q_, est_);
  build_curve(m_, med_);
}

// Measured buckets keep their value; between two, linear interpolation; below the first, its
// value; past the last, in proportion to cost; then a running maximum (never decreasing).
void LatencyModel::build_curve(const std::vector<double>& per_bucket, std::vector<double>& curve) const {
  int prev = 0;  // last measured bucket seen (0: none yet)
  for (int b = 1; b <= buckets_; ++b) {
    if (count_[b] == 0) continue;
    if (prev == 0) {
      for (int i = 1; i < b; ++i) curve[i] = per_bucket[b];
    } else {
      for (int i = prev + 1; i < b; ++i)
        curve[i] = per_bucket[prev] + (per_bucket[b] - per_bucket[prev]) * (i - prev) / static_cast<double>(b - prev);
    }
    curve[b] = per_bucket[b];
    prev = b;
  }
  if (prev == 0) return;
  for (int i = prev + 1; i <= buckets_; ++i) curve[i] = per_bucket[prev] * i / static_cast<double>(prev);
  for (int i = 2; i <= buckets_; ++i) curve[i] = std::max(curve[i], curve[i - 1]);
}

double LatencyModel::max_cost_in(const std::vector<double>& curve, double seconds) const {
  if (measured_ == 0) return width_ * buckets_;
  // The curve is non-decreasing: the last bucket whose value fits.
  auto it = std::upper_bound(curve.begin() + 1, curve.end(), seconds);
  return static_cast<double>(it - curve.begin() - 1) * width_;
}

std::vector<LatencyPoint> LatencyModel::table() const {
  std::vector<LatencyPoint> out;
  if (measured_ == 0) return out;
  out.reserve(buckets_);
  for (int b = 1; b <= buckets_; ++b) out.push_back({b * width_, est_[b], count_[b]});
  return out;
}

}  // namespace phi::sched
