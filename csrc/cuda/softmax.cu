// Softmax over rows, with a scale and an optional mask, in two sweeps of a row: the first keeps a
// running (max, sum of exp) pair per thread (the "online softmax" of Milakov & Gimelshein, 2018)
// and merges the pairs across the row; the second writes exp(z - max) / sum. The second sweep
// re-reads the row while it is still in L2, so device memory sees about one read and one write.
//
// Rows of up to 1024 columns get one warp each (8 rows per block, shuffles only); longer rows get
// a whole block and a shared-memory merge.
#include <cmath>

#include "cuda/device_common.cuh"

namespace phi::cuda {
namespace {

constexpr int64_t kWarpRowLimit = 1024;

// Running max and sum of exp(z - max) of the elements seen so far; an empty pair is (-inf, 0).
struct MaxSum {
  float max;
  float sum;
};

__device__ __forceinline__ MaxSum merge(MaxSum a, MaxSum b) {
  const float m = fmaxf(a.max, b.max);
  if (m == -INFINITY) return {m, 0.0f};
  // Symmetric in a and b, so both lanes of a butterfly step compute the same bits; the _rn
  // intrinsics keep the compiler from contracting one side into an FMA, which would break that.
  return {m, __fadd_rn(__fmul_rn(a.sum, expf(a.max - m)), __fmul_rn(b.sum, expf(b.max - m)))};
}

// One exp per element: rescale the sum only when the max moves. -inf contributes nothing; NaN
// makes the sum NaN, so a row holding NaN comes out NaN, as in numpy.
__device__ __forceinline__ void accumulate(MaxSum& acc, float z) {
  if (z == -INFINITY) return;
  if (z > acc.max) {
    acc.sum = acc.sum * expf(acc.max - z) + 1.0f;
    acc.max = z;
  } else {
    acc.sum += expf(z - acc.max);
  }
}

__device__ __forceinline__ MaxSum warp_merge(MaxSum acc) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const MaxSum other{__shfl_xor_sync(detail::kFullMask, acc.max, offset),
                       __shfl_xor_sync(detail::kFullMask, acc.sum, offset)};
    acc = merge(acc, other);
  }
  return acc;
}

// The offset of row `row`'s mask values: unravel the row index over the outer dimensions.
__device__ __forceinline__ int64_t mask_row_offset(const SoftmaxMask& mask, int64_t row) {
  int64_t offset = 0;
#pragma unroll
  for (int d = kMaxDims - 1; d >= 0; --d) {
    if (d < mask.outer_ndim) {
      offset += (row % mask.outer_shape[d]) * mask.outer_stride[d];
      row /= mask.outer_shape[d];
    }
  }
  return offset;
}

// The logit of column j: x * scale, plus the mask value when there is a mask.
template <bool MASK>
__device__ __forceinline__ float logit(const float* __restrict__ xrow, int64_t j, float scale,
                                       const SoftmaxMask& mask, int64_t mask_offset) {
  const float z = xrow[j] * scale;
  if constexpr (MASK) {
    return z + mask.data[mask_offset + j * mask.col_stride];
  } else {
    return z;
  }
}

// numpy gives a row of NaN when its max is not finite (all -inf, a +inf, or a NaN), and so does
// the CPU kernel; a NaN that is not the max reaches every output through the NaN sum.
__device__ __forceinline__ float prob(float z, MaxSum row, float inv_sum) {
  return isfinite(row.max) ? expf(z - row.max) * inv_sum : __int_as_float(0x7fffffff);
}

// WARP_ROWS: one warp per row, else one block per row. VEC: no mask, cols % 4 == 0 and x, out
// 16-byte aligned, so rows are read and written as float4.
template <bool MASK, bool VEC, bool WARP_ROWS>
__global__ void softmax_kernel(const float* __restrict__ x, float* __restrict__ out, int64_t rows, int64_t cols,
                               float scale, const SoftmaxMask mask) {
  __shared__ MaxSum partial[detail::kWarps];
  const int warp = threadIdx.x >> 5;
  const int tid = WARP_ROWS ? (threadIdx.x & 31) : threadIdx.x;
  const int nthreads = WARP_ROWS ? 32 : detail::kThreads;
  const int64_t first = WARP_ROWS ? static_cast<int64_t>(blockIdx.x) * detail::kWarps + warp : blockIdx.x;
  const int64_t step = WARP_ROWS ? static_cast<int64_t>(gridDim.x) * detail::kWarps : gridDim.x;

  // The row loop is uniform across a block in block-per-row mode (it depends on blockIdx only),
  // so the barriers inside are reached by every thread.
  for (int64_t row = first; row < rows; row += step) {
    const float* xrow = x + row * cols;
    float* orow = out + row * cols;
    const int64_t moff = MASK ? mask_row_offset(mask, row) : 0;

    MaxSum acc{-INFINITY, 0.0f};
    if constexpr (VEC) {
      const float4* x4 = reinterpret_cast<const float4*>(xrow);
      for (int64_t j = tid; j < cols / 4; j += nthreads) {
        const float4 v = x4[j];
        accumulate(acc, v.x * scale);
        accumulate(acc, v.y * scale);
        accumulate(acc, v.z * scale);
        accumulate(acc, v.w * scale);
      }
    } else {
      for (int64_t j = tid; j < cols; j += nthreads) accumulate(acc, logit<MASK>(xrow, j, scale, mask, moff));
    }

    acc = warp_merge(acc);
    if constexpr (!WARP_ROWS) {
      if ((threadIdx.x & 31) == 0) partial[warp] = acc;
      __syncthreads();
      acc = partial[0];
#pragma unroll
      for (int w = 1; w < detail::kWarps; ++w) acc = merge(acc, partial[w]);
      __syncthreads();  // partial is rewritten by the next row
    }
    const float inv_sum = 1.0f / acc.sum;

    if constexpr (VEC) {
      const float4* x4 = reinterpret_cast<const float4*>(xrow);
      float4* o4 = reinterpret_cast<float4*>(orow);
      for (int64_t j = tid; j < cols / 4; j += nthreads) {
        const float4 v = x4[j];
        o4[j] = make_float4(prob(v.x * scale, acc, inv_sum), prob(v.y * scale, acc, inv_sum),
                            prob(v.z * scale, acc, inv_sum), prob(v.w * scale, acc, inv_sum));
      }
    } else {
      for (int64_t j = tid; j < cols; j += nthreads) {
        orow[j] = prob(logit<MASK>(xrow, j, scale, mask, moff), acc, inv_sum);
      }
    }
  }
}

template <bool MASK, bool VEC>
void launch_rows(const float* x, float* out, int64_t rows, int64_t cols, float scale, const SoftmaxMask& mask,
                 cudaStream_t stream) {
  if (cols <= kWarpRowLimit) {
    const int64_t blocks = (rows + detail::kWarps - 1) / detail::kWarps;
    softmax_kernel<MASK, VEC, true>
        <<<detail::grid_for(blocks * detail::kThreads), detail::kThreads, 0, stream>>>(x, out, rows, cols, scale,
                                                                                       mask);
  } else {
    softmax_kernel<MASK, VEC, false>
        <<<detail::grid_for(rows * detail::kThreads), detail::kThreads, 0, stream>>>(x, out, rows, cols, scale,
                                                                                     mask);
  }
}

}  // namespace

cudaError_t launch_softmax(const float* x, float* out, int64_t rows, int64_t cols, float scale,
                           const SoftmaxMask& mask, cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return cudaSuccess;
  detail::clear_stale_error();
  if (mask.data != nullptr) {
    launch_rows<true, false>(x, out, rows, cols, scale, mask, stream);
  } else if (cols % 4 == 0 && detail::aligned16(x) && detail::aligned16(out)) {
    launch_rows<false, true>(x, out, rows, cols, scale, mask, stream);
  } else {
    launch_rows<false, false>(x, out, rows, cols, scale, mask, stream);
  }
  return detail::launch_status();
}

}  // namespace phi::cuda
