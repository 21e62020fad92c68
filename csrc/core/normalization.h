// Row kernels of the normalisations that other kernels reuse.
#pragma once

#include <cstdint>

namespace phi {

// One row of n elements: t = scale * x + mask (mask read per element when given, else the
// constant `addend`), then softmax (or with `log`, log-softmax) of t into y, in three passes over
// the cached row; y must not overlap x or mask. A row whose maximum is not finite (all -inf, a +inf or a NaN) becomes
// NaN, as in numpy; masked -inf entries get probability 0.
void softmax_row(const float* x, const float* mask, float addend, float scale, float* y, int64_t n, bool log);

}  // namespace phi
