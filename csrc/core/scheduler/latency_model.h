// L̂(P): the measured tail latency of a batch of total cost P, learned online.
//
// DESIGN.md asks for the measured p99 per batch size rather than an affine fit: the tails of small
// batches are far from their medians. Costs fall into buckets (unit-wide up to 256 buckets, wider
// beyond); each bucket keeps its last `window` samples, their median and their quantile.
//
// A bucket's own quantile is its tail estimate once it holds 1/(1 − q) samples (100 for the p99).
// Below that the nearest-rank quantile is the bucket's slowest sample, and on a shared machine one
// stall (a descheduled vCPU, 20 ms on a 5 ms batch) would then stand for the bucket's p99, and, by
// the running maximum, for every larger batch's: the scheduler would plan all of them as if they
// always stalled. So a sparse bucket's tail is its median times the tail ratio measured over every
// bucket (the q-quantile of sample / median, pooled over the last 4·window samples): measured, and
// from enough samples to mean something. Medians are made non-decreasing in cost by a weighted
// isotonic fit (pool-adjacent-violators, weights the samples held), so a sparse bucket's outlier is
// averaged with its well-measured neighbours instead of raising everything above it.
//
// Buckets never measured take the linear interpolation of their measured neighbours, and past the
// last measured bucket the estimate grows in proportion to cost (conservative for latencies of the
// form a + b·P). A running maximum makes the estimate non-decreasing in cost, so "largest batch that
// fits" is a binary search.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

namespace phi::sched {

struct LatencyPoint {
  double cost;      // upper edge of the bucket
  double seconds;   // the estimate there
  int64_t samples;  // measurements ever recorded in the bucket (0: interpolated)
};

class LatencyModel {
 public:
  explicit LatencyModel(double max_cost, int window = 256, double quantile = 0.99);

  void record(double cost, double seconds);
  // Many measurements of one cost (a warm-up sweep): the same as recording each, refreshed once.
  void record_many(double cost, const std::vector<double>& seconds);
  // The tail latency of a batch of this total cost; 0 while nothing has been measured. Inline: the
  // scheduler asks it for every queued request at every decision.
  double estimate(double cost) const { return curve_at(est_, cost); }
  // The median latency of such a batch, by the same interpolation (0 while nothing is measured).
  double median(double cost) const { return curve_at(med_, cost); }
  // The largest bucket cost whose tail estimate is at most `seconds` (0 if none).
  double max_cost_within(double seconds) const { return max_cost_in(est_, seconds); }
  // The same by the median.
  double max_cost_within_median(double seconds) const { return max_cost_in(med_, seconds); }
  bool empty() const { return measured_ == 0; }
  std::vector<LatencyPoint> table() const;
  // The pooled tail ratio (quantile of sample / median) sparse buckets are planned with; 1 before
  // any ratio is known.
  double tail_ratio() const { return ratio_; }

 private:
  // ceil(cost / width) clamped to [1, buckets], without std::ceil: on the baseline x86-64 ISA that
  // is a libm call, and this runs for every queued request at every decision.
  int bucket_of(double cost) const {
    const double x = cost / width_ - 1e-9;
    if (!(x < buckets_)) return buckets_;
    if (!(x > 0)) return 1;
    const int b = static_cast<int>(x);
    return b + (b < x);
  }
  // A curve's value at `cost`: its bucket's, or past the last bucket in proportion to cost.
  double curve_at(const std::vector<double>& curve, double cost) const {
    if (measured_ == 0 || !(cost > 0)) return 0;
    const double top = width_ * buckets_;
    if (cost > top) return curve[buckets_] * cost / top;
    return curve[bucket_of(cost)];
  }
  void refresh_bucket(int b);
  void record_ratio(float r);
  void rebuild();
  void build_curve(const std::vector<double>& per_bucket, std::vector<double>& curve) const;
  double max_cost_in(const std::vector<double>& curve, double seconds) const;

  double width_;
  int buckets_;
  int window_;
  double quantile_;
  int measured_ = 0;                       // buckets with at least one sample
  std::vector<std::vector<float>> ring_;   // per bucket, the last `window_` samples
  std::vector<std::vector<float>> sorted_; // per bucket, the same samples in ascending order
  std::vector<int64_t> count_;             // per bucket, samples ever recorded
  std::vector<double> q_;                  // per bucket, the quantile of its ring (NaN: none)
  std::vector<double> m_;                  // per bucket, the median of its ring (NaN: none)
  std::vector<double> est_;                // index 0..buckets_: the tail estimate (est_[0] = 0)
  std::vector<double> med_;                // index 0..buckets_: the median estimate
  std::vector<float> ratio_ring_;          // the last samples over their bucket's median then
  std::vector<float> ratio_sorted_;        // the same, ascending
  int64_t ratios_ = 0;                     // ratios ever recorded
  double ratio_ = 1;                       // their quantile, at least 1
  std::vector<double> per_bucket_;         // scratch: per bucket, the fitted medians, then the tails
  std::vector<float> fresh_;               // scratch: the samples of one record_many
};

}  // namespace phi::sched
