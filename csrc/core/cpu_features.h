// What the CPU can do, detected once at run time, and a measurement of its FMA peak.
#pragma once

#include <string>

namespace phi {

struct CpuFeatures {
  std::string arch;
  bool avx2 = false, fma = false, f16c = false, avx512f = false, neon = false;
  bool amd = false;  // an AMD x86-64 CPU (tuning: see packed_gemm.cpp's B prefetch)
};

const CpuFeatures& cpu_features();

// The BLAS the GEMM driver calls (name, version, core type it picked).
std::string blas_info();

// GFLOP/s of float32 FMAs on `threads` threads (at most the pool's capacity) over about
// `seconds`, from independent FMA chains (the widest vectors the CPU has: AVX-512, AVX2 or
// portable): the ceiling GEMM efficiency is quoted against, since BLAS uses the widest vectors too.
double measure_fma_peak(int threads, double seconds);

}  // namespace phi
