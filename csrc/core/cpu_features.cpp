#include "core/cpu_features.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <vector>

#include "core/blas.h"
#include "core/threadpool.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace phi {

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = [] {
    CpuFeatures f;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    f.arch = "x86_64";
    __builtin_cpu_init();
    f.avx2 = __builtin_cpu_supports("avx2");
    f.fma = __builtin_cpu_supports("fma");
    f.avx512f = __builtin_cpu_supports("avx512f");
    f.f16c = __builtin_cpu_supports("f16c");
    f.amd = __builtin_cpu_is("amd");
#elif defined(__aarch64__)
    f.arch = "aarch64";
    f.neon = true;
#else
    f.arch = "unknown";
#endif
    return f;
  }();
  return features;
}

std::string blas_info() { return blas_config(); }

namespace {
constexpr int kChains = 12;  // more independent chains than FMA latency x ports, so none stalls

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target("avx2,fma"))) double fma_loop_avx2(int64_t iters) {
  __m256 acc[kChains];
  for (int c = 0; c < kChains; ++c) acc[c] = _mm256_set1_ps(0.001f * c);
  const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
  for (int64_t i = 0; i < iters; ++i)
    for (int c = 0; c < kChains; ++c) acc[c] = _mm256_fmadd_ps(acc[c], a, b);
  __m256 s = acc[0];
  for (int c = 1; c < kChains; ++c) s = _mm256_add_ps(s, acc[c]);
  float out[8];
  _mm256_storeu_ps(out, s);
  return out[0];  // consumed so the loop is not removed
}

__attribute__((target("avx512f"))) double fma_loop_avx512(int64_t iters) {
  __m512 acc[kChains];
  for (int c = 0; c < kChains; ++c) acc[c] = _mm512_set1_ps(0.001f * c);
  const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
  for (int64_t i = 0; i < iters; ++i)
    for (int c = 0; c < kChains; ++c) acc[c] = _mm512_fmadd_ps(acc[c], a, b);
  __m512 s = acc[0];
  for (int c = 1; c < kChains; ++c) s = _mm512_add_ps(s, acc[c]);
  return _mm512_reduce_add_ps(s);
}
#endif

double fma_loop_scalar(int64_t iters) {
  float acc[kChains * 4];
  for (int c = 0; c < kChains * 4; ++c) acc[c] = 0.001f * c;
  for (int64_t i = 0; i < iters; ++i)
#pragma omp simd
    for (int c = 0; c < kChains * 4; ++c) acc[c] = acc[c] * 0.999999f + 1e-7f;
  return acc[0];
}

// Runs `iters` iterations and returns the flops of one iteration.
double run_loop(int64_t iters, double* sink) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  if (cpu_features().avx512f) {
    *sink += fma_loop_avx512(iters);
    return 2.0 * 16 * kChains;
  }
  if (cpu_features().avx2 && cpu_features().fma) {
    *sink += fma_loop_avx2(iters);
    return 2.0 * 8 * kChains;
  }
#endif
  *sink += fma_loop_scalar(iters);
  return 2.0 * 4 * kChains;
}
}  // namespace

double measure_fma_peak(int threads, double seconds) {
  // More threads than the pool has would only queue: each extra task runs another `seconds`.
  threads = std::clamp(threads, 1, ThreadPool::global().capacity());
  std::vector<double> rates(threads, 0.0);
  std::vector<double> sinks(threads, 0.0);
  ThreadPool::global().parallel_for(threads, threads, [&](int64_t t) {
    using clock = std::chrono::steady_clock;
    int64_t iters = 1 << 16;
    double best = 0;
    auto start = clock::now();
    while (std::chrono::duration<double>(clock::now() - start).count() < seconds) {
      auto t0 = clock::now();
      double flops = run_loop(iters, &sinks[t]) * static_cast<double>(iters);
      double dt = std::chrono::duration<double>(clock::now() - t0).count();
      best = std::max(best, flops / dt);
      if (dt < 0.01) iters *= 2;
    }
    rates[t] = best;
  });
  double total = 0;
  for (double r : rates) total += r;
  return total / 1e9;
}

}  // namespace phi
