// Shared machinery of the elementwise, normalisation and reduction kernels: numpy broadcasting
// plans and multi-lane vectorised reductions.
//
// Numpy broadcasting for elementwise kernels. Operand shapes are right-aligned against the output,
// broadcast dimensions get stride 0, size-1 dimensions are dropped and adjacent dimensions that
// walk memory the same way for every operand are merged. What remains is usually one or two
// dimensions: a flat loop (same shape or a scalar), a row broadcast ([M, N] op [N]) or a column
// broadcast ([M, N] op [M, 1]); every operand's stride along the innermost dimension is 0 or 1,
// so the inner loop is a plain vectorisable loop in every case.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "core/common.h"

namespace phi {

constexpr int kMaxBroadcastOperands = 3;

struct BroadcastPlan {
  Shape out_shape;  // numpy's broadcast shape of all operands
  int64_t total = 0;
  int nops = 0;
  // Collapsed iteration space, outermost first (never empty: a scalar is {1}); strides are in
  // elements of each operand, 0 where it broadcasts.
  std::vector<int64_t> dims;
  std::array<std::vector<int64_t>, kMaxBroadcastOperands> strides;

  int64_t inner() const { return dims.back(); }
  // Whether operand k advances along the innermost dimension (stride 1) or repeats (stride 0).
  bool inner_dense(int k) const { return strides[k].back() != 0; }
};

// Plans the broadcast of up to three shapes; fails naming `op` when they do not broadcast.
BroadcastPlan plan_broadcast(const std::string& op, const std::vector<Shape>& shapes);

// Calls f(offsets, pos, len) for every run of output elements in [begin, end) that lies along
// the innermost dimension: output elements pos..pos+len read operand k from offsets[k] onwards,
// advancing by 1 per element when inner_dense(k) and staying put otherwise. The outer index is an
// odometer updated per run, so no division happens inside the loop.
template <class F>
void for_each_segment(const BroadcastPlan& p, int64_t begin, int64_t end, F&& f) {
  if (begin >= end) return;
  const int64_t inner = p.inner();
  const int outer_rank = static_cast<int>(p.dims.size()) - 1;
  std::array<int64_t, kMaxBroadcastOperands> base{};
  std::vector<int64_t> idx(static_cast<size_t>(outer_rank), 0);
  int64_t row = begin / inner, col = begin % inner;
  for (int d = outer_rank - 1; d >= 0; --d) {
    idx[d] = row % p.dims[d];
    row /= p.dims[d];
    for (int k = 0; k < p.nops; ++k) base[k] += idx[d] * p.strides[k][d];
  }
  std::array<int64_t, kMaxBroadcastOperands> offsets{};
  for (int64_t pos = begin; pos < end;) {
    int64_t len = std::min(inner - col, end - pos);
    for (int k = 0; k < p.nops; ++k) offsets[k] = base[k] + col * p.strides[k][outer_rank];
    f(offsets, pos, len);
    pos += len;
    col = 0;
    for (int d = outer_rank - 1; d >= 0; --d) {
      for (int k = 0; k < p.nops; ++k) base[k] += p.strides[k][d];
      if (++idx[d] < p.dims[d]) break;
      for (int k = 0; k < p.nops; ++k) base[k] -= p.strides[k][d] * p.dims[d];
      idx[d] = 0;
    }
  }
}

// Reduction of term(j) over j in [b, e) with kLanes independent accumulators. A `#pragma omp simd
// reduction` keeps one vector accumulator, so a cheap loop (a row sum) runs at the adder's latency
// (4 cycles per 8 floats); 32 lanes are four AVX2 vectors in flight, which reaches its throughput.
// Loops whose body is expensive anyway (an exp per element) gain nothing and should stay plain.
// term may store (a pass that writes its row while reducing it). `init` is the identity, returned
// for an empty range. Max and min return NaN when any term is NaN, as numpy does.
enum class LaneOp : uint8_t { sum, prod, max, min };

constexpr int kLanes = 32;

// Max and min join with a plain compare-select (one vmaxps / vminps, which drops NaN); NaN is
// tracked in a separate flag per lane, cheaper than a NaN-aware select on the accumulator chain.
template <LaneOp Op>
PHI_ALWAYS_INLINE float lane_join(float acc, float v) {
  if constexpr (Op == LaneOp::sum) return acc + v;
  if constexpr (Op == LaneOp::prod) return acc * v;
  if constexpr (Op == LaneOp::max) return v > acc ? v : acc;
  if constexpr (Op == LaneOp::min) return v < acc ? v : acc;
}

template <LaneOp Op, class F>
PHI_ALWAYS_INLINE float lane_reduce(int64_t b, int64_t e, float init, F term) {
  constexpr bool kTrackNaN = Op == LaneOp::max || Op == LaneOp::min;
  if (e - b < kLanes) {
    float r = init;
    bool nan = false;
    for (int64_t j = b; j < e; ++j) {
      const float v = term(j);
      r = lane_join<Op>(r, v);
      nan = nan || v != v;  // only read for max / min
    }
    return kTrackNaN && nan ? std::numeric_limits<float>::quiet_NaN() : r;
  }
  // The first block seeds the lanes (no identity fill, which compilers turn into a slow memset).
  float acc[kLanes];
  int32_t nan[kLanes];
#pragma omp simd
  for (int l = 0; l < kLanes; ++l) {
    acc[l] = term(b + l);
    if constexpr (kTrackNaN) nan[l] = acc[l] != acc[l];
  }
  int64_t j = b + kLanes;
  for (; j + kLanes <= e; j += kLanes) {
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) {
      const float v = term(j + l);
      acc[l] = lane_join<Op>(acc[l], v);
      if constexpr (kTrackNaN) nan[l] |= v != v;
    }
  }
  for (int l = 0; j + l < e; ++l) {
    const float v = term(j + l);
    acc[l] = lane_join<Op>(acc[l], v);
    if constexpr (kTrackNaN) nan[l] |= v != v;
  }
  // Halving tree over the lanes: vector operations down to the last few, and a fixed order, so
  // the result never depends on how a caller split its work.
  for (int w = kLanes / 2; w >= 1; w /= 2) {
#pragma omp simd
    for (int l = 0; l < w; ++l) {
      acc[l] = lane_join<Op>(acc[l], acc[l + w]);
      if constexpr (kTrackNaN) nan[l] |= nan[l + w];
    }
  }
  return kTrackNaN && nan[0] ? std::numeric_limits<float>::quiet_NaN() : acc[0];
}

}  // namespace phi
