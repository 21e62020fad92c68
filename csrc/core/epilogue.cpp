#include "core/epilogue.h"

namespace phi {

namespace math {
Act parse_act(const std::string& op, const std::string& name) {
  if (name.empty() || name == "none" || name == "identity") return Act::none;
  if (name == "relu") return Act::relu;
  if (name == "gelu") return Act::gelu;
  if (name == "gelu_tanh") return Act::gelu_tanh;
  if (name == "tanh") return Act::tanh;
  if (name == "sigmoid") return Act::sigmoid;
  if (name == "clip") return Act::clip;
  fail(op, "unknown activation '" + name + "' (expected none, relu, gelu, gelu_tanh, tanh, sigmoid or clip)");
}

const char* act_name(Act act) {
  switch (act) {
    case Act::none: return "none";
    case Act::relu: return "relu";
    case Act::gelu: return "gelu";
    case Act::gelu_tanh: return "gelu_tanh";
    case Act::tanh: return "tanh";
    case Act::sigmoid: return "sigmoid";
    case Act::clip: return "clip";
  }
  return "none";
}
}  // namespace math

namespace {

// One row: x += bias_row; x += residual_row (each optional); x = act(x). Separate passes over a
// row that is hot in L1, because a condition inside the loop would stop it from vectorising.
template <math::Act A>
inline void row_kernel(float* PHI_RESTRICT x, int64_t n, const float* PHI_RESTRICT bias, float row_bias,
                       const float* PHI_RESTRICT res, float lo, float hi) {
  if (bias) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) x[j] += bias[j];
  }
  if (row_bias != 0.0f) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) x[j] += row_bias;
  }
  if (res) {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) x[j] += res[j];
  }
  if constexpr (A == math::Act::none) return;
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    float v = x[j];
    if constexpr (A == math::Act::relu) v = math::relu(v);
    if constexpr (A == math::Act::gelu) v = math::gelu(v);
    if constexpr (A == math::Act::gelu_tanh) v = math::gelu_tanh(v);
    if constexpr (A == math::Act::tanh) v = math::tanh(v);
    if constexpr (A == math::Act::sigmoid) v = math::sigmoid(v);
    if constexpr (A == math::Act::clip) v = v < lo ? lo : (v > hi ? hi : v);
    x[j] = v;
  }
}

template <math::Act A>
inline void tile_kernel(float* c, int64_t rows, int64_t cols, int64_t ldc, const Epilogue& ep, int64_t row0,
                        int64_t col0) {
  for (int64_t i = 0; i < rows; ++i) {
    const float* bias = (ep.bias && !ep.bias_per_row) ? ep.bias + col0 : nullptr;
    float row_bias = (ep.bias && ep.bias_per_row) ? ep.bias[row0 + i] : 0.0f;
    const float* res = ep.residual ? ep.residual + (row0 + i) * ep.ldr + col0 : nullptr;
    row_kernel<A>(c + i * ldc, cols, bias, row_bias, res, ep.clip_min, ep.clip_max);
  }
}

PHI_HOT void apply_epilogue_impl(float* c, int64_t rows, int64_t cols, int64_t ldc, const Epilogue& ep,
                                 int64_t row0, int64_t col0) {
  switch (ep.act) {
    case math::Act::none: return tile_kernel<math::Act::none>(c, rows, cols, ldc, ep, row0, col0);
    case math::Act::relu: return tile_kernel<math::Act::relu>(c, rows, cols, ldc, ep, row0, col0);
    case math::Act::gelu: return tile_kernel<math::Act::gelu>(c, rows, cols, ldc, ep, row0, col0);
    case math::Act::gelu_tanh: return tile_kernel<math::Act::gelu_tanh>(c, rows, cols, ldc, ep, row0, col0);
    case math::Act::tanh: return tile_kernel<math::Act::tanh>(c, rows, cols, ldc, ep, row0, col0);
    case math::Act::sigmoid: return tile_kernel<math::Act::sigmoid>(c, rows, cols, ldc, ep, row0, col0);
    case math::Act::clip: return tile_kernel<math::Act::clip>(c, rows, cols, ldc, ep, row0, col0);
  }
}

}  // namespace

void apply_epilogue(float* c, int64_t rows, int64_t cols, int64_t ldc, const Epilogue& ep, int64_t row0,
                    int64_t col0) {
  if (ep.empty()) return;
  apply_epilogue_impl(c, rows, cols, ldc, ep, row0, col0);
}

void apply_activation(float* x, int64_t n, math::Act act, float clip_min, float clip_max) {
  Epilogue ep;
  ep.act = act;
  ep.clip_min = clip_min;
  ep.clip_max = clip_max;
  apply_epilogue(x, 1, n, n, ep, 0, 0);
}

void parse_activation(const std::string& op, const Attrs& attrs, Epilogue& ep) {
  ep.act = math::parse_act(op, attrs.get_string(op, "activation", "none"));
  if (ep.act == math::Act::clip) {
    ep.clip_min = attrs.has("clip_min") ? attrs.get_f32(op, "clip_min", 0.0f) : -INFINITY;
    ep.clip_max = attrs.has("clip_max") ? attrs.get_f32(op, "clip_max", 0.0f) : INFINITY;
    check(ep.clip_min <= ep.clip_max, op, "clip_min must not exceed clip_max");
  }
}

}  // namespace phi
