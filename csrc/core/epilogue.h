// The fused epilogue of GEMM and convolution: y = act(x + bias + residual), applied to a tile while
// it is still in cache, so a linear layer is one pass over memory instead of three.
#pragma once

#include <cstdint>

#include "core/common.h"
#include "core/math.h"

namespace phi {

struct Epilogue {
  const float* bias = nullptr;      // one value per column (or per row when bias_per_row)
  bool bias_per_row = false;        // conv in NCHW: one bias per output channel = per row
  const float* residual = nullptr;  // full matrix, row stride ldr
  int64_t ldr = 0;
  math::Act act = math::Act::none;
  float clip_min = 0.0f, clip_max = 6.0f;

  bool empty() const { return bias == nullptr && residual == nullptr && act == math::Act::none; }
};

// Applies the epilogue to the tile c[0:rows, 0:cols] (row stride ldc) whose top-left element is
// element (row0, col0) of the full output; bias and residual are indexed in full-output terms.
void apply_epilogue(float* c, int64_t rows, int64_t cols, int64_t ldc, const Epilogue& ep, int64_t row0,
                    int64_t col0);

// Applies an activation in place to n contiguous floats.
void apply_activation(float* x, int64_t n, math::Act act, float clip_min, float clip_max);

// Reads "activation" (and "clip_min"/"clip_max" for clip) from attrs.
void parse_activation(const std::string& op, const Attrs& attrs, Epilogue& ep);

}  // namespace phi
