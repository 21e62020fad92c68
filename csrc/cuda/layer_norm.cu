// Layer normalisation over rows, with an optional residual added first (the pre-norm
// transformer block's x + f(x)). The mean first, then the variance as the mean of squared
// deviations (no E[x^2] - E[x]^2 cancellation), then the output.
//
// Rows of up to 8192 columns are held in registers (layer_norm_cached_kernel): one read of x
// (and residual) and one write of out, every load of a thread issued before the first reduction.
// Rows of up to 1024 columns get one warp each (8 rows per block), longer rows a whole block.
// Longer rows still (layer_norm_kernel) are swept three times; sweeps two and three re-read the
// row, mostly from L2.
//
// Measured on an H100 before the cached kernel: 65536x1024 with a residual ran at 50 % of the copy
// floor (three sweeps, warp rows), 16384x4096 at 91 %.
#include "cuda/device_common.cuh"

namespace phi::cuda {
namespace {

using detail::row_sum;

__device__ __forceinline__ float4 load4(const float* p, int64_t j) {
  return reinterpret_cast<const float4*>(p)[j];
}

// A row held in registers: thread `tid` of `nthreads` holds the items j = tid + i * nthreads,
// i < CAP / W, where an item is W = 4 columns (VEC) or one. Items past the row are zero and
// excluded from the variance.
template <bool VEC, bool WARP_ROWS, int CAP>
__global__ void layer_norm_cached_kernel(const float* __restrict__ x, const float* __restrict__ residual,
                                         const float* __restrict__ gamma, const float* __restrict__ beta,
                                         float* __restrict__ out, int64_t rows, int64_t cols, float epsilon) {
  constexpr int W = VEC ? 4 : 1;
  constexpr int ITEMS = CAP / W;
  __shared__ float scratch[detail::kWarps];
  const int warp = threadIdx.x >> 5;
  const int tid = WARP_ROWS ? (threadIdx.x & 31) : threadIdx.x;
  const int nthreads = WARP_ROWS ? 32 : detail::kThreads;
  const int64_t first = WARP_ROWS ? static_cast<int64_t>(blockIdx.x) * detail::kWarps + warp : blockIdx.x;
  const int64_t step = WARP_ROWS ? static_cast<int64_t>(gridDim.x) * detail::kWarps : gridDim.x;
  const int64_t items = cols / W;
  const float inv_cols = 1.0f / static_cast<float>(cols);

  for (int64_t row = first; row < rows; row += step) {
    const float* xrow = x + row * cols;
    const float* rrow = residual == nullptr ? nullptr : residual + row * cols;
    float v[CAP];
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const int64_t j = tid + static_cast<int64_t>(i) * nthreads;
      if (j < items) {
        if constexpr (VEC) {
          float4 a = load4(xrow, j);
          if (rrow != nullptr) {
            const float4 r = load4(rrow, j);
            a.x += r.x;
            a.y += r.y;
            a.z += r.z;
            a.w += r.w;
          }
          v[4 * i] = a.x;
          v[4 * i + 1] = a.y;
          v[4 * i + 2] = a.z;
          v[4 * i + 3] = a.w;
        } else {
          v[i] = xrow[j] + (rrow != nullptr ? rrow[j] : 0.0f);
        }
      } else {
#pragma unroll
        for (int c = 0; c < W; ++c) v[W * i + c] = 0.0f;
      }
    }

    float sum = 0.0f;
#pragma unroll
    for (int k = 0; k < CAP; ++k) sum += v[k];
    const float mean = row_sum<WARP_ROWS>(sum, scratch) * inv_cols;

    float sq = 0.0f;
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      if (tid + static_cast<int64_t>(i) * nthreads < items) {
#pragma unroll
        for (int c = 0; c < W; ++c) {
          const float d = v[W * i + c] - mean;
          sq += d * d;
        }
      }
    }
    const float rstd = 1.0f / sqrtf(row_sum<WARP_ROWS>(sq, scratch) * inv_cols + epsilon);

    float* orow = out + row * cols;
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const int64_t j = tid + static_cast<int64_t>(i) * nthreads;
      if (j < items) {
        if constexpr (VEC) {
          const float4 g = load4(gamma, j);
          const float4 b = beta == nullptr ? make_float4(0.0f, 0.0f, 0.0f, 0.0f) : load4(beta, j);
          reinterpret_cast<float4*>(orow)[j] = make_float4(
              (v[4 * i] - mean) * rstd * g.x + b.x, (v[4 * i + 1] - mean) * rstd * g.y + b.y,
              (v[4 * i + 2] - mean) * rstd * g.z + b.z, (v[4 * i + 3] - mean) * rstd * g.w + b.w);
        } else {
          orow[j] = (v[i] - mean) * rstd * gamma[j] + (beta == nullptr ? 0.0f : beta[j]);
        }
      }
    }
  }
}

// v = x + residual for the 4 columns 4j..4j+3 (VEC) or the one column j.
template <bool VEC>
struct Row {
  const float* x;
  const float* residual;

  __device__ __forceinline__ float4 get(int64_t j) const {
    if constexpr (VEC) {
      float4 v = load4(x, j);
      if (residual != nullptr) {
        const float4 r = load4(residual, j);
        v.x += r.x;
        v.y += r.y;
        v.z += r.z;
        v.w += r.w;
      }
      return v;
    } else {
      float v = x[j];
      if (residual != nullptr) v += residual[j];
      return make_float4(v, 0.0f, 0.0f, 0.0f);
    }
  }
};

// VEC: cols % 4 == 0 and every pointer 16-byte aligned; one loop index then covers 4 columns.
template <bool VEC, bool WARP_ROWS>
__global__ void layer_norm_kernel(const float* __restrict__ x, const float* __restrict__ residual,
                                  const float* __restrict__ gamma, const float* __restrict__ beta,
                                  float* __restrict__ out, int64_t rows, int64_t cols, float epsilon) {
  __shared__ float scratch[detail::kWarps];
  const int warp = threadIdx.x >> 5;
  const int tid = WARP_ROWS ? (threadIdx.x & 31) : threadIdx.x;
  const int nthreads = WARP_ROWS ? 32 : detail::kThreads;
  const int64_t first = WARP_ROWS ? static_cast<int64_t>(blockIdx.x) * detail::kWarps + warp : blockIdx.x;
  const int64_t step = WARP_ROWS ? static_cast<int64_t>(gridDim.x) * detail::kWarps : gridDim.x;
  const int64_t items = VEC ? cols / 4 : cols;
  const float inv_cols = 1.0f / static_cast<float>(cols);

  // Uniform across the block in block-per-row mode, so block_sum's barriers are safe.
  for (int64_t row = first; row < rows; row += step) {
    const Row<VEC> v{x + row * cols, residual == nullptr ? nullptr : residual + row * cols};
    float* orow = out + row * cols;

    float sum = 0.0f;
    for (int64_t j = tid; j < items; j += nthreads) {
      const float4 a = v.get(j);
      sum += VEC ? (a.x + a.y) + (a.z + a.w) : a.x;
    }
    const float mean = row_sum<WARP_ROWS>(sum, scratch) * inv_cols;

    float sq = 0.0f;
    for (int64_t j = tid; j < items; j += nthreads) {
      const float4 a = v.get(j);
      if constexpr (VEC) {
        const float dx = a.x - mean, dy = a.y - mean, dz = a.z - mean, dw = a.w - mean;
        sq += (dx * dx + dy * dy) + (dz * dz + dw * dw);
      } else {
        const float d = a.x - mean;
        sq += d * d;
      }
    }
    const float var = row_sum<WARP_ROWS>(sq, scratch) * inv_cols;
    const float rstd = 1.0f / sqrtf(var + epsilon);

    for (int64_t j = tid; j < items; j += nthreads) {
      const float4 a = v.get(j);
      if constexpr (VEC) {
        const float4 g = load4(gamma, j);
        const float4 b = beta == nullptr ? make_float4(0.0f, 0.0f, 0.0f, 0.0f) : load4(beta, j);
        reinterpret_cast<float4*>(orow)[j] =
            make_float4((a.x - mean) * rstd * g.x + b.x, (a.y - mean) * rstd * g.y + b.y,
                        (a.z - mean) * rstd * g.z + b.z, (a.w - mean) * rstd * g.w + b.w);
      } else {
        const float b = beta == nullptr ? 0.0f : beta[j];
        orow[j] = (a.x - mean) * rstd * gamma[j] + b;
      }
    }
  }
}

template <bool VEC, int CAP>
void launch_cached(const float* x, const float* residual, const float* gamma, const float* beta, float* out,
                   int64_t rows, int64_t cols, float epsilon, cudaStream_t stream) {
  if (cols <= detail::kWarpRowLimit) {
    const int64_t blocks = (rows + detail::kWarps - 1) / detail::kWarps;
    layer_norm_cached_kernel<VEC, true, CAP><<<detail::grid_for(blocks * detail::kThreads), detail::kThreads, 0,
                                               stream>>>(x, residual, gamma, beta, out, rows, cols, epsilon);
  } else {
    layer_norm_cached_kernel<VEC, false, CAP><<<detail::grid_for(rows * detail::kThreads), detail::kThreads, 0,
                                                stream>>>(x, residual, gamma, beta, out, rows, cols, epsilon);
  }
}

template <bool VEC>
void launch_rows(const float* x, const float* residual, const float* gamma, const float* beta, float* out,
                 int64_t rows, int64_t cols, float epsilon, cudaStream_t stream) {
  if (cols <= detail::kCachedBlockRowLimit) {
    switch (detail::cached_capacity(cols)) {
      case 8:
        launch_cached<VEC, 8>(x, residual, gamma, beta, out, rows, cols, epsilon, stream);
        break;
      case 16:
        launch_cached<VEC, 16>(x, residual, gamma, beta, out, rows, cols, epsilon, stream);
        break;
      default:
        launch_cached<VEC, 32>(x, residual, gamma, beta, out, rows, cols, epsilon, stream);
    }
  } else {
    layer_norm_kernel<VEC, false><<<detail::grid_for(rows * detail::kThreads), detail::kThreads, 0, stream>>>(
        x, residual, gamma, beta, out, rows, cols, epsilon);
  }
}

}  // namespace

cudaError_t launch_layer_norm(const float* x, const float* residual, const float* gamma, const float* beta,
                              float* out, int64_t rows, int64_t cols, float epsilon, cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return cudaSuccess;
  detail::clear_stale_error();
  const bool vec = cols % 4 == 0 && detail::aligned16(x) && detail::aligned16(residual) &&
                   detail::aligned16(gamma) && detail::aligned16(beta) && detail::aligned16(out);
  if (vec) {
    launch_rows<true>(x, residual, gamma, beta, out, rows, cols, epsilon, stream);
  } else {
    launch_rows<false>(x, residual, gamma, beta, out, rows, cols, epsilon, stream);
  }
  return detail::launch_status();
}

}  // namespace phi::cuda
