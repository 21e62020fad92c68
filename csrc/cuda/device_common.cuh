// Device-side helpers shared by the kernels: activations, warp and block reductions, the grid
// size of grid-stride loops and the 16-byte alignment test of the vectorised paths.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/kernels.h"

namespace phi::cuda::detail {

// Threads per block of every kernel here: 8 warps, enough to hide latency with several blocks
// per multiprocessor, small enough that a row-per-warp kernel keeps 8 rows in flight per block.
// The kernels carry no __launch_bounds__(kThreads): with it, ptxas 13.0 aimed several of them at
// 32 registers (full occupancy) and spilled to local memory (layer norm's block-per-row scalar
// variant 72 bytes, sqrt and reciprocal 16-24); without it they use 28-64 registers, unspilled,
// which still leaves 4-8 blocks of 256 threads per multiprocessor.
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFullMask = 0xffffffffu;

// Blocks for a grid-stride loop over `items` work items of one thread each: up to 16 blocks per
// multiprocessor (two waves of 8 resident 256-thread blocks), so every loop iteration keeps the
// memory system busy without paying for millions of tiny blocks.
inline unsigned grid_for(int64_t items) {
  int device = 0;
  int sms = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || sms <= 0) {
    sms = 132;  // the launch itself will report whatever went wrong
  }
  int64_t want = (items + kThreads - 1) / kThreads;
  int64_t cap = static_cast<int64_t>(sms) * 16;
  if (want > cap) want = cap;
  if (want < 1) want = 1;
  return static_cast<unsigned>(want);
}

// The status of the launch just made. Errors left by earlier, unrelated runtime calls are
// cleared by clear_stale_error() before launching, so this reports only our own launch.
inline void clear_stale_error() { (void)cudaGetLastError(); }
inline cudaError_t launch_status() { return cudaGetLastError(); }

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

__device__ __forceinline__ int64_t global_thread() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ int64_t grid_threads() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

// Activations with the libdevice functions (erff, tanhf, expf: a few ulp), not the fast
// intrinsics: the kernels are memory-bound, so accuracy costs no time. Comparisons are written so
// that NaN passes through, as numpy's maximum and clip do.
template <Act A>
__device__ __forceinline__ float activate(float v, float lo, float hi) {
  if constexpr (A == Act::relu) {
    return v < 0.0f ? 0.0f : v;
  } else if constexpr (A == Act::gelu) {
    return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
  } else if constexpr (A == Act::gelu_tanh) {
    return 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
  } else if constexpr (A == Act::tanh) {
    return tanhf(v);
  } else if constexpr (A == Act::sigmoid) {
    return 1.0f / (1.0f + expf(-v));
  } else if constexpr (A == Act::clip) {
    return v < lo ? lo : (v > hi ? hi : v);
  } else {
    return v;
  }
}

// Butterfly sum: every lane ends with the same, bitwise identical total (a + b == b + a).
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

// Sum over the block (kThreads threads, all of which must call it). `scratch` holds kWarps
// floats; the trailing barrier lets the caller reuse it at once.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  v = warp_sum(v);
  const int warp = threadIdx.x >> 5;
  if ((threadIdx.x & 31) == 0) scratch[warp] = v;
  __syncthreads();
  float total = 0.0f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) total += scratch[w];
  __syncthreads();
  return total;
}

// Butterfly max (fmaxf: a NaN loses to any number, so callers that must see NaN check the sum).
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, offset));
  return v;
}

// Max over the block, as block_sum.
__device__ __forceinline__ float block_max(float v, float* scratch) {
  v = warp_max(v);
  const int warp = threadIdx.x >> 5;
  if ((threadIdx.x & 31) == 0) scratch[warp] = v;
  __syncthreads();
  float total = scratch[0];
#pragma unroll
  for (int w = 1; w < kWarps; ++w) total = fmaxf(total, scratch[w]);
  __syncthreads();
  return total;
}

// A row reduction by one warp (WARP_ROWS) or by the whole block.
template <bool WARP_ROWS>
__device__ __forceinline__ float row_sum(float v, float* scratch) {
  if constexpr (WARP_ROWS) {
    return warp_sum(v);
  } else {
    return block_sum(v, scratch);
  }
}

template <bool WARP_ROWS>
__device__ __forceinline__ float row_max(float v, float* scratch) {
  if constexpr (WARP_ROWS) {
    return warp_max(v);
  } else {
    return block_max(v, scratch);
  }
}

// Rows short enough to live in registers: a warp row holds up to 32 floats per lane (1024
// columns), a block row up to 32 floats per thread (8192 columns). Such rows are read from
// device memory once, with all of a thread's loads in flight together, instead of re-read per
// sweep. A kernel is built for 8, 16 and 32 floats per thread, and a row takes the smallest that
// holds it: spare capacity costs registers (occupancy) and predicated work.
constexpr int64_t kWarpRowLimit = 1024;
constexpr int64_t kCachedBlockRowLimit = 32 * kThreads;

// Floats each thread must hold for a row of `cols`: 8, 16 or 32.
inline int cached_capacity(int64_t cols) {
  const int64_t per_thread = cols <= kWarpRowLimit ? (cols + 31) / 32 : (cols + kThreads - 1) / kThreads;
  return per_thread <= 8 ? 8 : (per_thread <= 16 ? 16 : 32);
}

}  // namespace phi::cuda::detail
