// Branch-free float32 math that the compiler vectorises inside `#pragma omp simd` loops and
// PHI_HOT functions (libm calls would block vectorisation). NaN propagates as in libm. Accuracy is stated per function and
// checked against numpy in tests/native.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

// Always inlined: the vector forms are instantiated inside functions compiled for wider ISAs than
// the baseline, where an out-of-line call would run the baseline's code.
#if defined(__GNUC__) || defined(__clang__)
#define PHI_MATH_INLINE inline __attribute__((always_inline))
#else
#define PHI_MATH_INLINE inline
#endif

namespace phi::math {

inline float bits_to_float(int32_t i) {
  float f;
  std::memcpy(&f, &i, sizeof f);
  return f;
}

// e^x's pieces, shared by exp and the AVX-512 softmax (normalization.cpp): x = n ln2 + r with n
// = round(x log2e) and ln2 split in two for an exact product, then e^r by the Cephes expf
// polynomial (|r| <= ln2 / 2), written once for float and vector types.
inline constexpr float kExpLog2e = 1.44269504088896341f;
inline constexpr float kExpLn2Hi = 0.693359375f, kExpLn2Lo = -2.12194440e-4f;
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
template <class T>
PHI_MATH_INLINE T exp_reduced_of(T r) {
  T p = 1.9875691500E-4f * r + 1.3981999507E-3f;
  p = p * r + 8.3334519073E-3f;
  p = p * r + 4.1665795894E-2f;
  p = p * r + 1.6666665459E-1f;
  p = p * r + 5.0000001201E-1f;
  return p * r * r + r + 1.0f;
}
#pragma GCC diagnostic pop

// e^x, relative error < 2e-7 for x in [-86, 88]; saturates outside: about 4e-38 below (never a
// subnormal, whose arithmetic costs ~100 cycles) and about 1.6e38 above, which no softmax, sigmoid
// or tanh needs.
inline float exp(float x) {
  x = x > 88.0f ? 88.0f : x;  // comparisons written so that NaN falls through unchanged
  x = x < -86.0f ? -86.0f : x;
  // Round x / ln2 to nearest with the 1.5*2^23 trick (no rint call, so it vectorises on SSE2).
  float n = (x * kExpLog2e + 12582912.0f) - 12582912.0f;
  float r = x - n * kExpLn2Hi;
  r = r - n * kExpLn2Lo;
  float y = exp_reduced_of(r);
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

// erf as x * P(x^2) / Q(x^2), degrees 6 and 4: a rational fit of erf(x)/x on [0, 4] made for this
// file (weighted least squares iterated toward the minimax error, in float64); 1e-8 in float64,
// absolute error < 4.1e-7 evaluated in float32. Half the operations of Abramowitz & Stegun 7.1.26
// with an exp (1.5e-7), which GELU epilogues felt: with it GELU cost 7.1-7.9 % of a 4096 x 384 x
// 1536 product with bias, with this 4.0-6.1 % (bench_runtime.py, Zen 4). Beyond |x| = 3.9 erf
// is +-1 in float32 and is returned exactly (so gelu(-inf) = -inf * 0 is NaN, as in numpy); NaN
// stays NaN.
// Written once for float and for GCC/Clang vector types (T{} + c broadcasts a constant to either),
// so the GEMM's register epilogue (packed_gemm.cpp) computes exactly what the other kernels do.
// (vector returns never cross a call: these are always inlined, so GCC's ABI note does not apply)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
template <class T>
PHI_MATH_INLINE T erf_of(T x) {
  // No clamp of x: past |x| = 3.9 the answer is replaced below, so whatever the fit gives there
  // (inf / inf = NaN for a huge x) is never returned.
  const T y = x * x;
  T p = 1.9214978053128107e-08f * y - 1.990380724237184e-06f;
  p = p * y + 0.0001555728813400492f;
  p = p * y + 0.004294694401323795f;
  p = p * y + 0.05243881419301033f;
  p = p * y + 0.213983952999115f;
  p = p * y + 1.1283786296844482f;
  T q = 0.0010984237305819988f * y + 0.015554488636553288f;
  q = q * y + 0.12081596255302429f;
  q = q * y + 0.5229660272598267f;
  q = q * y + 1.0f;
  T r = x * p / q;
  r = x > 3.9f ? T{} + 1.0f : r;
  return x < -3.9f ? T{} - 1.0f : r;
}

template <class T>
PHI_MATH_INLINE T gelu_of(T x) {
  return 0.5f * x * (1.0f + erf_of(x * 0.70710678118654752f));
}

// e^x as exp() computes it (same clamps, reduction and polynomial), for float and vector types.
template <class T>
PHI_MATH_INLINE T exp_of(T x) {
  if constexpr (std::is_same_v<T, float>) {
    return exp(x);
  } else {
    x = x > 88.0f ? T{} + 88.0f : x;
    x = x < -86.0f ? T{} - 86.0f : x;
    const T n = (x * kExpLog2e + 12582912.0f) - 12582912.0f;
    T r = x - n * kExpLn2Hi;
    r = r - n * kExpLn2Lo;
    typedef int32_t I __attribute__((vector_size(sizeof(T))));
    // (a NaN lane's integer is garbage, but its polynomial is NaN, and so is the product)
    const I bits = (__builtin_convertvector(n, I) + 127) << 23;
    return exp_reduced_of(r) * __builtin_bit_cast(T, bits);
  }
}

// GELU, tanh form: 0.5 x (1 + tanh(u)) with u = sqrt(2/pi) (x + 0.044715 x^3), computed as the
// equal x / (1 + e^(-2u)): one exp and one division, no branch, so the GEMM applies it in
// registers (the tanh route took a pass over the tile: 42 against 18 us of erf-GELU on a 32 x 1536
// product). Relative error about 3e-7. Where -2u > 88 the answer is x * 0 (-0 for finite x, NaN for
// -inf, as 0.5 x (1 + tanh(u)) gives).
template <class T>
PHI_MATH_INLINE T gelu_tanh_of(T x) {
  const T a = -1.5957691216057308f * (x + 0.044715f * x * x * x);
  const T q = x / (1.0f + exp_of(a));
  return a > 88.0f ? x * 0.0f : q;
}
#pragma GCC diagnostic pop

inline float erf(float x) { return erf_of(x); }

inline float gelu(float x) { return gelu_of(x); }

inline float gelu_tanh(float x) { return gelu_tanh_of(x); }

inline float relu(float x) { return x < 0.0f ? 0.0f : x; }  // NaN stays NaN, as in numpy

// Activations a GEMM, conv or elementwise epilogue may fuse.
enum class Act : uint8_t { none, relu, gelu, gelu_tanh, tanh, sigmoid, clip };

// Parses "none" | "relu" | "gelu" | "gelu_tanh" | "tanh" | "sigmoid" | "clip"; fails naming the op.
Act parse_act(const std::string& op, const std::string& name);
const char* act_name(Act act);

}  // namespace phi::math
