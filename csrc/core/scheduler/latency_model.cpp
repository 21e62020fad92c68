#include "core/scheduler/latency_model.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/common.h"

namespace phi::sched {

namespace {
constexpr int kMaxBuckets = 256;
constexpr int kRatioWindows = 4;     // the pooled tail ratio keeps this many buckets' windows of samples
constexpr size_t kOwnMedian = 8;     // samples from which a bucket's ratios are taken to its own median

// Inserts x into an ascending vector, replacing `old` when the ring it mirrors is full.
void sorted_replace(std::vector<float>& sorted, bool full, float old, float x) {
  if (full) sorted.erase(std::lower_bound(sorted.begin(), sorted.end(), old));
  sorted.insert(std::upper_bound(sorted.begin(), sorted.end(), x), x);
}

// Nearest-rank quantile of an ascending, non-empty vector.
float nearest_rank(const std::vector<float>& sorted, double q) {
  const size_t n = sorted.size();
  const auto k = static_cast<size_t>(std::ceil(q * static_cast<double>(n)));
  return sorted[std::clamp<size_t>(k, 1, n) - 1];
}
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
  const double ratio_before = ratio_;
  const bool growing = sorted.size() < static_cast<size_t>(window_);  // its weight in the fit changes
  const size_t added_from = fresh_.size();
  for (double s : seconds) {
    if (!std::isfinite(s) || s < 0) continue;
    const auto x = static_cast<float>(s);
    fresh_.push_back(x);
    const bool full = static_cast<int>(ring.size()) >= window_;
    float old = 0;
    if (!full) {
      ring.push_back(x);
    } else {
      float& slot = ring[count_[b] % window_];
      old = slot;
      slot = x;
    }
    // The window kept sorted beside the ring: a quantile is then one lookup, and a sample costs
    // two binary searches and a short move instead of a copy and two selections per batch.
    sorted_replace(sorted, full, old, x);
    if (count_[b]++ == 0) ++measured_;
    any = true;
  }
  if (!any) return;
  const double q = q_[b], m = m_[b];
  refresh_bucket(b);
  // Each new sample's ratio to its bucket's median: the bucket's own once it holds kOwnMedian
  // samples (a warm-up sweep's), else the curve's from before (it pools the neighbours).
  const double ref = sorted.size() >= kOwnMedian ? m_[b] : med_[b];
  if (ref > 0)
    for (size_t i = added_from; i < fresh_.size(); ++i) record_ratio(static_cast<float>(fresh_[i] / ref));
  fresh_.resize(added_from);
  // NaN != NaN: a bucket's first sample always rebuilds.
  if (growing || !(q_[b] == q && m_[b] == m && ratio_ == ratio_before)) rebuild();
}

void LatencyModel::record_ratio(float r) {
  const size_t cap = static_cast<size_t>(kRatioWindows) * static_cast<size_t>(window_);
  const bool full = ratio_ring_.size() >= cap;
  float old = 0;
  if (!full) {
    ratio_ring_.push_back(r);
  } else {
    float& slot = ratio_ring_[static_cast<size_t>(ratios_ % static_cast<int64_t>(cap))];
    old = slot;
    slot = r;
  }
  sorted_replace(ratio_sorted_, full, old, r);
  ++ratios_;
  ratio_ = std::max(1.0, static_cast<double>(nearest_rank(ratio_sorted_, quantile_)));
}

void LatencyModel::refresh_bucket(int b) {
  // Nearest-rank quantiles: with fewer than 1/(1-q) samples the tail one is the maximum.
  q_[b] = nearest_rank(sorted_[b], quantile_);
  m_[b] = nearest_rank(sorted_[b], 0.5);
}

void LatencyModel::rebuild() {
  // Medians: the weighted isotonic fit over the measured buckets in cost order, by least absolute
  // deviations (pool-adjacent-violators: merge a block into its predecessor while the
  // predecessor's value is higher; a block's value is the weighted median of its buckets' medians,
  // weights the samples each holds). A least-squares fit would let one slow sample in a sparse
  // bucket pull its well-measured neighbours up; the weighted median does not move for it.
  struct Block {
    int first, last;
    double value;
  };
  std::vector<Block> blocks;
  std::vector<std::pair<double, double>> members;  // (median, weight) of one block's buckets
  auto block_value = [&](int first, int last) {
    members.clear();
    double total = 0;
    for (int b = first; b <= last; ++b) {
      if (count_[b] == 0) continue;
      const auto w = static_cast<double>(sorted_[b].size());
      members.emplace_back(m_[b], w);
      total += w;
    }
    std::sort(members.begin(), members.end());
    double seen = 0;
    for (const auto& [value, weight] : members) {
      seen += weight;
      if (2 * seen >= total) return value;
    }
    return members.back().first;
  };
  for (int b = 1; b <= buckets_; ++b) {
    if (count_[b] == 0) continue;
    blocks.push_back({b, b, m_[b]});
    while (blocks.size() > 1 && blocks[blocks.size() - 2].value > blocks.back().value) {
      const int last = blocks.back().last;
      blocks.pop_back();
      blocks.back().last = last;
      blocks.back().value = block_value(blocks.back().first, last);
    }
  }
  per_bucket_.assign(buckets_ + 1, std::numeric_limits<double>::quiet_NaN());
  for (const Block& k : blocks)
    for (int b = k.first; b <= k.last; ++b)
      if (count_[b] > 0) per_bucket_[b] = k.value;
  build_curve(per_bucket_, med_);
  // Tails: a bucket's own quantile once it has the samples for one, else its median times the
  // pooled ratio; never below the median.
  const auto own = static_cast<size_t>(std::min<double>(window_, std::ceil(1 / (1 - quantile_) - 1e-9)));
  std::vector<double>& tail = per_bucket_;  // reused: the fitted medians are in med_ now
  for (int b = 1; b <= buckets_; ++b) {
    if (count_[b] == 0) continue;
    tail[b] = sorted_[b].size() >= own ? std::max(q_[b], med_[b]) : med_[b] * ratio_;
  }
  build_curve(tail, est_);
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
