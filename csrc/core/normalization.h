// Row kernels of the normalisations that other kernels reuse.
#pragma once

#include <cstdint>

namespace phi {

// One row of n elements: t = scale * x + mask (mask read per element when given, else the
// constant `addend`), then softmax (or with `log`, log-softmax) of t into y, in three passes over
// the cached row; y must not overlap x or mask. A row whose maximum is not finite (all -inf, a +inf or a NaN) becomes
// NaN, as in numpy; masked -inf entries get probability 0.
void softmax_row(const float* x, const float* mask, float addend, float scale, float* y, int64_t n, bool log);

// The softmax of `rows` rows of n elements, but for its normalisation, for a kernel that applies
// it later (attention scales each output row, a few floats, instead of each probability): row r
// is t = scale * x[r * ldx + j] + (masks ? masks[r][j] : addends[r]), y[r * ldy + j] gets
// e^(t - max t), and inv[r] the factor 1 / sum e that makes it the softmax (NaN for a row whose
// maximum is not finite, a NaN included: the row's answer is NaN, as softmax_row gives). y may
// be x (ldy == ldx). Where it is not worth a kernel of its own, y gets the softmax and inv 1.
void softmax_numerators(int rows, const float* x, int64_t ldx, const float* const* masks, const float* addends,
                        float scale, float* y, int64_t ldy, int64_t n, float* inv);

}  // namespace phi
