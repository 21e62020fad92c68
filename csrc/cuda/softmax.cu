// Softmax over rows, with a scale and an optional mask.
//
// Rows of up to 8192 columns are held in registers (softmax_cached_kernel): one read, the row max,
// exp(z - max) kept in place, the sum, one write. Rows of up to 1024 columns get one warp each (8
// rows per block, shuffles only); longer rows a whole block.
//
// Longer rows still (softmax_kernel) take two sweeps: the first keeps a running (max, sum of exp)
// pair per thread (the "online softmax" of Milakov & Gimelshein, 2018) and merges the pairs across
// the row; the second re-reads the row, mostly from L2, and writes exp(z - max) / sum.
//
// Measured on an H100 with the two-sweep kernel for every row length: 262144x256 at 84 % of the
// copy floor, 32768x2048 at 64 %, 8192x8191 at 53 %, 16x16x512x512 with a causal mask at 49 %.
#include <cmath>

#include "cuda/device_common.cuh"

namespace phi::cuda {
namespace {

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

// A row held in registers, as in layer_norm_cached_kernel: thread `tid` of `nthreads` holds the
// items j = tid + i * nthreads, an item being 4 columns (VEC) or one; items past the row hold -inf,
// which adds nothing to the max or the sum. With MASK and VEC the mask is read as float4 too.
template <bool MASK, bool VEC, bool WARP_ROWS, int CAP>
__global__ void softmax_cached_kernel(const float* __restrict__ x, float* __restrict__ out, int64_t rows,
                                      int64_t cols, float scale, const SoftmaxMask mask) {
  constexpr int W = VEC ? 4 : 1;
  constexpr int ITEMS = CAP / W;
  __shared__ float scratch[detail::kWarps];
  const int warp = threadIdx.x >> 5;
  const int tid = WARP_ROWS ? (threadIdx.x & 31) : threadIdx.x;
  const int nthreads = WARP_ROWS ? 32 : detail::kThreads;
  const int64_t first = WARP_ROWS ? static_cast<int64_t>(blockIdx.x) * detail::kWarps + warp : blockIdx.x;
  const int64_t step = WARP_ROWS ? static_cast<int64_t>(gridDim.x) * detail::kWarps : gridDim.x;
  const int64_t items = cols / W;

  for (int64_t row = first; row < rows; row += step) {
    const float* xrow = x + row * cols;
    const int64_t moff = MASK ? mask_row_offset(mask, row) : 0;
    float v[CAP];
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const int64_t j = tid + static_cast<int64_t>(i) * nthreads;
      if (j < items) {
        if constexpr (VEC) {
          const float4 a = reinterpret_cast<const float4*>(xrow)[j];
          v[4 * i] = a.x * scale;
          v[4 * i + 1] = a.y * scale;
          v[4 * i + 2] = a.z * scale;
          v[4 * i + 3] = a.w * scale;
          if constexpr (MASK) {  // contiguous mask columns, 16-byte aligned (launch_softmax checks)
            const float4 b = reinterpret_cast<const float4*>(mask.data + moff)[j];
            v[4 * i] += b.x;
            v[4 * i + 1] += b.y;
            v[4 * i + 2] += b.z;
            v[4 * i + 3] += b.w;
          }
        } else {
          v[i] = logit<MASK>(xrow, j, scale, mask, moff);
        }
      } else {
#pragma unroll
        for (int c = 0; c < W; ++c) v[W * i + c] = -INFINITY;
      }
    }

    // fmaxf drops NaN, so a row holding NaN (not as its max) gets a NaN sum below and comes out
    // all NaN, as numpy's does; a row whose max is not finite is all NaN by prob's test.
    float m = -INFINITY;
#pragma unroll
    for (int k = 0; k < CAP; ++k) m = fmaxf(m, v[k]);
    m = detail::row_max<WARP_ROWS>(m, scratch);
    const bool finite = isfinite(m);

    float sum = 0.0f;
#pragma unroll
    for (int k = 0; k < CAP; ++k) {
      v[k] = expf(v[k] - m);  // exp(-inf) = 0 for the padding and masked-out columns
      sum += v[k];
    }
    sum = detail::row_sum<WARP_ROWS>(sum, scratch);
    const float inv_sum = finite ? 1.0f / sum : __int_as_float(0x7fffffff);

    float* orow = out + row * cols;
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const int64_t j = tid + static_cast<int64_t>(i) * nthreads;
      if (j < items) {
        if constexpr (VEC) {
          reinterpret_cast<float4*>(orow)[j] = make_float4(v[4 * i] * inv_sum, v[4 * i + 1] * inv_sum,
                                                           v[4 * i + 2] * inv_sum, v[4 * i + 3] * inv_sum);
        } else {
          orow[j] = v[i] * inv_sum;
        }
      }
    }
  }
}

template <bool MASK, bool VEC, int CAP>
void launch_cached(const float* x, float* out, int64_t rows, int64_t cols, float scale, const SoftmaxMask& mask,
                   cudaStream_t stream) {
  if (cols <= detail::kWarpRowLimit) {
    const int64_t blocks = (rows + detail::kWarps - 1) / detail::kWarps;
    softmax_cached_kernel<MASK, VEC, true, CAP>
        <<<detail::grid_for(blocks * detail::kThreads), detail::kThreads, 0, stream>>>(x, out, rows, cols, scale,
                                                                                       mask);
  } else {
    softmax_cached_kernel<MASK, VEC, false, CAP>
        <<<detail::grid_for(rows * detail::kThreads), detail::kThreads, 0, stream>>>(x, out, rows, cols, scale,
                                                                                     mask);
  }
}

template <bool MASK, bool VEC>
void launch_rows(const float* x, float* out, int64_t rows, int64_t cols, float scale, const SoftmaxMask& mask,
                 cudaStream_t stream) {
  if (cols <= detail::kCachedBlockRowLimit) {
    switch (detail::cached_capacity(cols)) {
      case 8:
        launch_cached<MASK, VEC, 8>(x, out, rows, cols, scale, mask, stream);
        break;
      case 16:
        launch_cached<MASK, VEC, 16>(x, out, rows, cols, scale, mask, stream);
        break;
      default:
        launch_cached<MASK, VEC, 32>(x, out, rows, cols, scale, mask, stream);
    }
  } else {
    // The two-sweep kernel reads a mask one column at a time.
    softmax_kernel<MASK, VEC && !MASK, false>
        <<<detail::grid_for(rows * detail::kThreads), detail::kThreads, 0, stream>>>(x, out, rows, cols, scale,
                                                                                     mask);
  }
}

}  // namespace

cudaError_t launch_softmax(const float* x, float* out, int64_t rows, int64_t cols, float scale,
                           const SoftmaxMask& mask, cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return cudaSuccess;
  detail::clear_stale_error();
  const bool vec = cols % 4 == 0 && detail::aligned16(x) && detail::aligned16(out);
  if (mask.data != nullptr) {
    // float4 mask loads need contiguous mask columns and every row's mask offset a multiple of 4.
    bool mask_vec = vec && mask.col_stride == 1 && detail::aligned16(mask.data);
    for (int d = 0; d < mask.outer_ndim; ++d) mask_vec = mask_vec && mask.outer_stride[d] % 4 == 0;
    if (mask_vec) {
      launch_rows<true, true>(x, out, rows, cols, scale, mask, stream);
    } else {
      launch_rows<true, false>(x, out, rows, cols, scale, mask, stream);
    }
  } else if (vec) {
    launch_rows<false, true>(x, out, rows, cols, scale, mask, stream);
  } else {
    launch_rows<false, false>(x, out, rows, cols, scale, mask, stream);
  }
  return detail::launch_status();
}

}  // namespace phi::cuda
