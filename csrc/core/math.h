// Branch-free float32 math that the compiler vectorises inside `#pragma omp simd` loops and
// PHI_HOT functions (libm calls would block vectorisation). NaN propagates as in libm. Accuracy is stated per function and
// checked against numpy in tests/native.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

namespace phi::math {

inline float bits_to_float(int32_t i) {
  float f;
  std::memcpy(&f, &i, sizeof f);
  return f;
}

// e^x, relative error < 2e-7 for x in [-86, 88]; saturates outside: about 4e-38 below (never a
// subnormal, whose arithmetic costs ~100 cycles) and about 1.6e38 above, which no softmax, sigmoid
// or tanh needs. Cephes expf polynomial after range reduction by ln 2.
inline float exp(float x) {
  x = x > 88.0f ? 88.0f : x;  // comparisons written so that NaN falls through unchanged
  x = x < -86.0f ? -86.0f : x;
  // Round x / ln2 to nearest with the 1.5*2^23 trick (no rint call, so it vectorises on SSE2).
  float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500E-4f;
  p = p * r + 1.3981999507E-3f;
  p = p * r + 8.3334519073E-3f;
  p = p * r + 4.1665795894E-2f;
  p = p * r + 1.6666665459E-1f;
  p = p * r + 5.0000001201E-1f;
  float y = p * r * r + r + 1.0f;
  // NaN stays in y; the exponent is built from 0 instead (casting NaN to int is undefined).
  float n_safe = n == n ? n : 0.0f;
  return y * bits_to_float((static_cast<int32_t>(n_safe) + 127) << 23);
}

// Inputs clamped to +-80 so neither the result nor any intermediate is subnormal.
inline float sigmoid(float x) {
  x = x > 80.0f ? 80.0f : x;
  x = x < -80.0f ? -80.0f : x;
  return 1.0f / (1.0f + exp(-x));
}

// tanh with absolute error < 3e-7: Cephes odd polynomial near 0, 1 - 2/(e^{2|x|}+1) elsewhere.
inline float tanh(float x) {
  float ax = x < 0 ? -x : x;
  float z = x * x;
  float small = ((((-5.70498872745E-3f * z + 2.06390887954E-2f) * z - 5.37397155531E-2f) * z + 1.33314422036E-1f) * z -
                 3.33332819422E-1f) * z * x + x;
  float big = 1.0f - 2.0f / (exp(2.0f * ax) + 1.0f);
  big = x < 0 ? -big : big;
  return ax < 0.625f ? small : big;
}

// erf with absolute error < 1.5e-7 (Abramowitz & Stegun 7.1.26). |x| is capped at 4, where erf is
// 1 in float32, so exp(-x^2) never goes subnormal.
inline float erf(float x) {
  float ax = x < 0 ? -x : x;
  ax = ax > 4.0f ? 4.0f : ax;
  float t = 1.0f / (1.0f + 0.3275911f * ax);
  float p = ((((1.061405429f * t - 1.453152027f) * t + 1.421413741f) * t - 0.284496736f) * t + 0.254829592f) * t;
  float y = 1.0f - p * exp(-ax * ax);
  return x < 0 ? -y : y;
}

inline float gelu(float x) { return 0.5f * x * (1.0f + erf(x * 0.70710678118654752f)); }

inline float gelu_tanh(float x) {
  return 0.5f * x * (1.0f + tanh(0.7978845608028654f * (x + 0.044715f * x * x * x)));
}

inline float relu(float x) { return x < 0.0f ? 0.0f : x; }  // NaN stays NaN, as in numpy

// Activations a GEMM, conv or elementwise epilogue may fuse.
enum class Act : uint8_t { none, relu, gelu, gelu_tanh, tanh, sigmoid, clip };

// Parses "none" | "relu" | "gelu" | "gelu_tanh" | "tanh" | "sigmoid" | "clip"; fails naming the op.
Act parse_act(const std::string& op, const std::string& name);
const char* act_name(Act act);

}  // namespace phi::math
